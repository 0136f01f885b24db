"""Resume tokens: signed claims "peer P, named N, is in room R" that a relay verifies statelessly.

A token is ``r1.<payload>.<mac>``: the payload is base64url JSON ``{"r": room, "p": peer_id,
"n": name, "t": issued_at}`` and the mac is HMAC-SHA256 over ``r1.<payload>``. Because checking one
needs only the secret, a relay restarted with the same secret (``ServerSettings.secret``, or the
one kept in the SQLite file at ``db_path``) still honours the tokens it handed out before, and can
give a returning peer its id back. Without either, the secret is random per process and tokens
die with it (the client is then welcomed as a new peer).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import sqlite3
import time
from dataclasses import dataclass

TOKEN_VERSION = "r1"
#: A token longer than this is not one of ours (the real ones are well under 2 KiB).
MAX_TOKEN_LENGTH = 4096
#: Bytes of a generated secret (256 bits).
SECRET_BYTES = 32
_KEY_LABEL = b"callbot relay resume token v1"


@dataclass(frozen=True, slots=True, kw_only=True)
class ResumeClaim:
    """What a valid token says about its holder."""

    room: str
    peer_id: str
    name: str
    issued_at: float


class ResumeTokens:
    """Issues and verifies resume tokens with one secret."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("a resume token secret needs at least 16 bytes")
        # A derived key: the same secret could one day sign other things without mixing them.
        self._key = hmac.new(secret, _KEY_LABEL, hashlib.sha256).digest()

    def issue(self, *, room: str, peer_id: str, name: str, now: float | None = None) -> str:
        claim = {"r": room, "p": peer_id, "n": name, "t": time.time() if now is None else now}
        body = json.dumps(claim, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        signed = f"{TOKEN_VERSION}.{_b64(body)}"
        return f"{signed}.{_b64(self._mac(signed))}"

    def verify(self, token: str) -> ResumeClaim | None:
        """The claim of a token this secret signed; ``None`` for anything else (never raises)."""
        if len(token) > MAX_TOKEN_LENGTH or not token.isascii():
            return None
        signed, _, mac = token.rpartition(".")
        version, _, payload = signed.partition(".")
        if version != TOKEN_VERSION or not payload:
            return None
        try:
            if not hmac.compare_digest(_unb64(mac), self._mac(signed)):
                return None
            claim = json.loads(_unb64(payload).decode("utf-8"))
        except (ValueError, binascii.Error, UnicodeDecodeError):
            return None
        if not isinstance(claim, dict):
            return None
        room, peer_id, name, issued = (claim.get(k) for k in ("r", "p", "n", "t"))
        if not (isinstance(room, str) and isinstance(peer_id, str) and isinstance(name, str)):
            return None
        if isinstance(issued, bool) or not isinstance(issued, int | float):
            return None
        return ResumeClaim(room=room, peer_id=peer_id, name=name, issued_at=float(issued))

    def _mac(self, signed: str) -> bytes:
        return hmac.new(self._key, signed.encode("ascii"), hashlib.sha256).digest()


def random_secret() -> bytes:
    """A per-process secret: tokens it signs do not outlive the process."""
    return secrets.token_bytes(SECRET_BYTES)


def load_or_create_secret(db_path: str) -> bytes:
    """The relay's secret kept in the SQLite file, created on first use (blocking: use a thread).

    ``INSERT OR IGNORE`` then ``SELECT``: two relays starting on one file agree on the secret.
    """
    db = sqlite3.connect(db_path, isolation_level=None)
    try:
        db.execute("PRAGMA busy_timeout=5000")
        db.execute(
            "CREATE TABLE IF NOT EXISTS relay_secret ("
            "id INTEGER PRIMARY KEY CHECK (id = 1), secret BLOB NOT NULL)"
        )
        db.execute(
            "INSERT OR IGNORE INTO relay_secret (id, secret) VALUES (1, ?)", (random_secret(),)
        )
        (secret,) = db.execute("SELECT secret FROM relay_secret WHERE id = 1").fetchone()
    finally:
        db.close()
    if not isinstance(secret, bytes) or len(secret) < 16:
        raise RuntimeError(f"{db_path}: the stored relay secret is unusable")
    return secret


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
