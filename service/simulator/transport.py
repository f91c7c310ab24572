"""The simulator's HTTP/1.1 transport: one connection's requests and responses, over asyncio streams with h11.

Not an ASGI server: a "drop" fault has to abort the TCP connection itself, which ASGI servers do not allow.
"""

from __future__ import annotations

import asyncio
import http
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import h11

READ_CHUNK = 64 * 1024


@dataclass
class Response:
    status: int
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)
    delay: float = 0.0  # seconds to wait before answering (or dropping)
    drop: bool = False


# The answer to a request and its body; and the 400 answer to bytes that are not HTTP/1.1, given h11's complaint.
Respond = Callable[[h11.Request, bytes], Awaitable[Response]]
Refuse = Callable[[str], Response]


async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, respond: Respond, refuse: Refuse) -> None:
    """Answer the connection's requests one after another until it closes, a response drops it, or it breaks
    the protocol; then close it."""
    conn = h11.Connection(h11.SERVER)
    try:
        while True:
            incoming = await receive(conn, reader)
            if incoming is None:
                break
            response = await respond(*incoming)
            if response.drop:
                writer.transport.abort()
                break
            if writer.is_closing():
                break
            send(conn, writer, response)
            await writer.drain()
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                break
            conn.start_next_cycle()
    except h11.RemoteProtocolError as exc:
        if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            send(conn, writer, refuse(str(exc)))
    except (ConnectionError, TimeoutError):
        pass
    finally:
        writer.close()


async def receive(conn: h11.Connection, reader: asyncio.StreamReader) -> tuple[h11.Request, bytes] | None:
    request: h11.Request | None = None
    body: list[bytes] = []
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await reader.read(READ_CHUNK))
        elif isinstance(event, h11.Request):
            request = event
        elif isinstance(event, h11.Data):
            body.append(event.data)
        elif isinstance(event, h11.EndOfMessage):
            assert request is not None
            return request, b"".join(body)
        else:  # ConnectionClosed
            return None


def send(conn: h11.Connection, writer: asyncio.StreamWriter, response: Response) -> None:
    try:
        reason = http.HTTPStatus(response.status).phrase
    except ValueError:
        reason = "Overloaded" if response.status == 529 else ""
    headers = [*response.headers, ("content-length", str(len(response.body)))]
    writer.write(conn.send(h11.Response(status_code=response.status, headers=headers, reason=reason)))
    writer.write(conn.send(h11.Data(data=response.body)))
    writer.write(conn.send(h11.EndOfMessage()))
