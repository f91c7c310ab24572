"""A PostgreSQL wire proxy that loses a reply: the fault "the statement committed, the acknowledgement never came".

It sits on loopback between a Database and the real server and reads the protocol's message frames (it answers
an SSLRequest with 'N' itself, so the stream stays readable). When armed with a marker, the first extended-query
execution of a statement whose SQL contains the marker runs on the server as usual, but the proxy withholds
everything the server says from then on and, once the server's ReadyForQuery shows the statement is over (in
autocommit: committed), closes both sockets. The client sees its connection die mid-statement.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator

from sqlalchemy.engine import make_url

_SSL_REQUEST = 80877103
_GSS_REQUEST = 80877104


class LossyProxy:
    def __init__(self, target_url: str) -> None:
        url = make_url(target_url)
        socket_dir = url.query.get("host")  # the embedded server listens on a Unix socket only
        self._socket = f"{socket_dir}/.s.PGSQL.{url.port or 5432}" if isinstance(socket_dir, str) else None
        self._target = (url.host or "127.0.0.1", url.port or 5432)
        self._target_url = url.difference_update_query(["host"])
        self._server: asyncio.Server | None = None
        self._marker: bytes | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.dropped = 0  # replies withheld so far

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return self._target_url.set(host="127.0.0.1", port=port).render_as_string(hide_password=False)

    def drop_reply_to(self, marker: str | None) -> None:
        """Lose the reply of the next statement whose SQL contains `marker` (None: pass everything)."""
        self._marker = marker.encode() if marker is not None else None

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[LossyProxy]:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        try:
            yield self
        finally:
            self._server.close()
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._server.wait_closed()

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            if self._socket is not None:
                server_r, server_w = await asyncio.open_unix_connection(self._socket)
            else:
                server_r, server_w = await asyncio.open_connection(*self._target)
            try:
                await self._session(client_r, client_w, server_r, server_w)
            finally:
                server_w.close()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self._tasks.discard(task)
            client_w.close()

    async def _session(
        self,
        client_r: asyncio.StreamReader,
        client_w: asyncio.StreamWriter,
        server_r: asyncio.StreamReader,
        server_w: asyncio.StreamWriter,
    ) -> None:
        # Startup: untyped frames; refuse encryption so that the rest can be read.
        while True:
            head = await client_r.readexactly(8)
            length, code = struct.unpack("!ii", head)
            body = await client_r.readexactly(length - 8)
            if code in (_SSL_REQUEST, _GSS_REQUEST):
                client_w.write(b"N")
                await client_w.drain()
                continue
            server_w.write(head + body)
            await server_w.drain()
            break
        losing = asyncio.Event()
        directions = [
            asyncio.create_task(self._frontend(client_r, server_w, losing)),
            asyncio.create_task(self._backend(server_r, client_w, losing)),
        ]
        try:
            # Either side hanging up ends the session: a client gone without Terminate must not leave a server
            # session (and whatever locks it holds) behind.
            await asyncio.wait(directions, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for direction in directions:
                direction.cancel()
            await asyncio.gather(*directions, return_exceptions=True)

    async def _frontend(
        self, client_r: asyncio.StreamReader, server_w: asyncio.StreamWriter, losing: asyncio.Event
    ) -> None:
        statements: dict[bytes, bytes] = {}  # prepared statement name -> SQL
        while True:
            kind = await client_r.readexactly(1)
            (length,) = struct.unpack("!i", await client_r.readexactly(4))
            body = await client_r.readexactly(length - 4)
            if kind == b"P":  # Parse: name\0 query\0 ...
                name, rest = body.split(b"\0", 1)
                statements[name] = rest.split(b"\0", 1)[0]
            elif kind == b"B" and self._marker is not None:  # Bind: portal\0 statement\0 ...
                statement = body.split(b"\0", 2)[1]
                if self._marker in statements.get(statement, b""):
                    self._marker = None
                    losing.set()
            server_w.write(kind + struct.pack("!i", length) + body)
            await server_w.drain()

    async def _backend(
        self, server_r: asyncio.StreamReader, client_w: asyncio.StreamWriter, losing: asyncio.Event
    ) -> None:
        while True:
            kind = await server_r.readexactly(1)
            (length,) = struct.unpack("!i", await server_r.readexactly(4))
            body = await server_r.readexactly(length - 4)
            if losing.is_set():
                if kind == b"Z":  # ReadyForQuery: the statement is over on the server, and its reply is lost
                    self.dropped += 1
                    client_w.transport.abort()
                    return
                continue
            client_w.write(kind + struct.pack("!i", length) + body)
            await client_w.drain()
