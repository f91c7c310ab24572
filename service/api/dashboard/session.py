"""Signed dashboard sessions: the cookie names a key (by id) or the admin, never carries a secret.

Every page re-checks the key, so revoking it ends its sessions at once; a changed admin key ends the
admin's sessions because the cookie holds a fingerprint of the key it was opened with.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import secrets
import time
import uuid
from dataclasses import dataclass

from service.core.settings import Settings

logger = logging.getLogger(__name__)

COOKIE = "cascade_session"


@dataclass(frozen=True)
class Session:
    key_id: uuid.UUID | None  # a team key's id, or None for the admin
    admin_fingerprint: str | None = None


class SessionSigner:
    def __init__(self, secret: bytes, ttl_s: int) -> None:
        self._secret = secret
        self.ttl_s = ttl_s

    @classmethod
    def from_settings(cls, settings: Settings) -> SessionSigner:
        if settings.session_secret is None:
            logger.warning(
                "CASCADE_SESSION_SECRET is not set: dashboard sessions end at a restart and do not carry "
                "across replicas"
            )
            return cls(secrets.token_bytes(32), settings.session_ttl_s)
        return cls(settings.session_secret.get_secret_value().encode(), settings.session_ttl_s)

    def _mac(self, payload: bytes) -> str:
        return hmac.new(self._secret, payload, hashlib.sha256).hexdigest()

    def fingerprint(self, admin_key: str) -> str:
        """Names the admin key a session was opened with; keyed, so a cookie says nothing about the key."""
        return self._mac(b"cascade-admin:" + admin_key.encode())[:32]

    def issue(self, session: Session) -> str:
        body = {
            "k": str(session.key_id) if session.key_id else None,
            "a": session.admin_fingerprint,
            "exp": int(time.time()) + self.ttl_s,
        }
        # Unpadded, so the cookie value needs no quoting.
        payload = base64.urlsafe_b64encode(json.dumps(body, separators=(",", ":")).encode()).rstrip(b"=")
        return f"{payload.decode()}.{self._mac(payload)}"

    def read(self, value: str | None) -> Session | None:
        """The session a cookie carries, or None if it is missing, forged or expired."""
        if not value or "." not in value:
            return None
        payload, _, mac = value.rpartition(".")
        try:
            if not hmac.compare_digest(mac.encode(), self._mac(payload.encode()).encode()):
                return None
            body = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
            if int(body["exp"]) < time.time():
                return None
            return Session(uuid.UUID(body["k"]) if body["k"] else None, body["a"])
        except (ValueError, KeyError, TypeError):  # UnicodeError is a ValueError
            return None
