"""Configuration of the signaling relay: one frozen, validated dataclass the CLI fills in."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .protocol import (
    MAX_ID_LENGTH,
    MAX_MESSAGE_BYTES,
    MAX_NAME_LENGTH,
    MAX_ROOM_LENGTH,
    IceServerInfo,
    PeerInfo,
    Welcome,
    dump_message,
)
from .resume import ResumeTokens
from .rooms import new_peer_id, new_session_token

#: The grace a dropped peer gets to resume before the room hears ``peer_left`` (``callbot serve``).
DEFAULT_RESUME_GRACE_S = 20.0
#: A configured secret shorter than this is refused (it signs resume tokens).
MIN_SECRET_LENGTH = 16

#: Below this a ``welcome`` for a lone peer would hardly fit; nobody needs a smaller cap.
MIN_MESSAGE_BYTES = 4096


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerSettings:
    """Where the relay listens and the limits it enforces.

    ``port=0`` picks a free port (see ``RunningServer.port``). ``ice_servers`` are handed to every
    peer in ``welcome``; none unless configured (no public STUN by default, DESIGN §4).
    """

    host: str = "127.0.0.1"
    port: int = 8080
    ice_servers: tuple[IceServerInfo, ...] = ()
    #: Frames over this many UTF-8 bytes get ``error`` ``too_large``.
    max_message_bytes: int = MAX_MESSAGE_BYTES
    #: Interval of WebSocket pings; a peer that misses a pong for half of it is dropped.
    heartbeat_s: float = 20.0
    #: A ``join`` into a room holding this many peers is refused (``rate_limited``).
    max_peers_per_room: int = 64
    #: Bytes queued for a peer that is not reading before it is dropped (its socket aborted).
    max_send_queue_bytes: int = 16 * MAX_MESSAGE_BYTES
    #: SQLite file keeping call history across restarts; ``None`` keeps it in memory only.
    db_path: str | None = None
    #: A call nobody answers within this many seconds ends ``no_answer``.
    ring_timeout_s: float = 90.0
    #: A peer whose socket drops without ``leave`` stays in its room, "away", this long: it may
    #: resume (same peer id, no churn) before the room hears ``peer_left`` (``timeout``) and its
    #: calls go on without it. 0 = no grace (``peer_left`` ``disconnected`` at once). Also how
    #: long the members of calls restored after a restart have to come back (resume).
    resume_grace_s: float = DEFAULT_RESUME_GRACE_S
    #: Signs resume tokens. ``None``: a secret kept in the database at ``db_path`` (so tokens
    #: survive restarts), or a random one per process without a database (they do not).
    secret: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.host, str) or not self.host.strip():
            raise ValueError("host must be a non-empty string")
        if isinstance(self.port, bool) or not isinstance(self.port, int):
            raise ValueError(f"port must be an integer, got {self.port!r}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in 0..65535 (0 = any free port), got {self.port}")
        if not isinstance(self.ice_servers, tuple):
            raise ValueError("ice_servers must be a tuple of IceServerInfo")
        for server in self.ice_servers:
            _check_ice_server(server)
        if isinstance(self.max_message_bytes, bool) or not isinstance(self.max_message_bytes, int):
            raise ValueError(
                f"max_message_bytes must be an integer, got {self.max_message_bytes!r}"
            )
        if self.max_message_bytes < MIN_MESSAGE_BYTES:
            raise ValueError(
                f"max_message_bytes must be at least {MIN_MESSAGE_BYTES}, "
                f"got {self.max_message_bytes}"
            )
        if (
            isinstance(self.heartbeat_s, bool)
            or not isinstance(self.heartbeat_s, int | float)
            or not math.isfinite(self.heartbeat_s)
            or self.heartbeat_s <= 0
        ):
            raise ValueError(f"heartbeat_s must be a positive number, got {self.heartbeat_s!r}")
        if (
            isinstance(self.max_peers_per_room, bool)
            or not isinstance(self.max_peers_per_room, int)
            or self.max_peers_per_room < 1
        ):
            raise ValueError(
                f"max_peers_per_room must be a positive integer, got {self.max_peers_per_room!r}"
            )
        if (
            isinstance(self.max_send_queue_bytes, bool)
            or not isinstance(self.max_send_queue_bytes, int)
            or self.max_send_queue_bytes < self.max_message_bytes
        ):
            raise ValueError(
                "max_send_queue_bytes must be an integer of at least max_message_bytes "
                f"({self.max_message_bytes}), got {self.max_send_queue_bytes!r}"
            )
        if self.db_path is not None and (
            not isinstance(self.db_path, str) or not self.db_path.strip()
        ):
            raise ValueError(f"db_path must be a non-empty path or None, got {self.db_path!r}")
        if (
            isinstance(self.ring_timeout_s, bool)
            or not isinstance(self.ring_timeout_s, int | float)
            or not math.isfinite(self.ring_timeout_s)
            or self.ring_timeout_s <= 0
        ):
            raise ValueError(
                f"ring_timeout_s must be a positive number, got {self.ring_timeout_s!r}"
            )
        if (
            isinstance(self.resume_grace_s, bool)
            or not isinstance(self.resume_grace_s, int | float)
            or not math.isfinite(self.resume_grace_s)
            or self.resume_grace_s < 0
        ):
            raise ValueError(
                "resume_grace_s must be a finite number of seconds >= 0 (0 = no grace), "
                f"got {self.resume_grace_s!r}"
            )
        if self.secret is not None and (
            not isinstance(self.secret, str) or len(self.secret) < MIN_SECRET_LENGTH
        ):
            raise ValueError(
                f"secret must be a string of at least {MIN_SECRET_LENGTH} characters, or None"
            )
        worst = worst_case_welcome_bytes(self.ice_servers, self.max_peers_per_room)
        if worst > self.max_message_bytes:
            raise ValueError(
                f"a welcome for a full room of {self.max_peers_per_room} peers can be {worst} "
                f"bytes, over max_message_bytes={self.max_message_bytes}; raise the cap or lower "
                "max_peers_per_room"
            )


def worst_case_welcome_bytes(ice_servers: tuple[IceServerInfo, ...], max_peers: int) -> int:
    """Size of the largest ``welcome`` (or ``peer_list``) the relay could ever send.

    Every frame the relay sends must fit under the cap that clients enforce too, so settings
    that could make a full room's ``welcome`` too large are refused up front rather than failing
    for the 40th peer. Names and rooms are at their length caps in characters that JSON escapes
    to 12 bytes each; the echoed ``ref`` at its cap likewise.
    """
    wide = "\U0001f600"  # outside the BMP: dumped as a 12-byte surrogate-pair escape
    peer_id = new_peer_id()
    room, name = wide * MAX_ROOM_LENGTH, wide * MAX_NAME_LENGTH
    token = ResumeTokens(b"\0" * 32).issue(room=room, peer_id=peer_id, name=name, now=1e12 / 3)
    welcome = Welcome(
        peer_id=peer_id,
        room=room,
        peers=[PeerInfo(peer_id=peer_id, name=name)] * (max_peers - 1),
        ice_servers=list(ice_servers),
        resume_token=token,
        session_token=new_session_token(),
        resumed=True,
        ref=wide * MAX_ID_LENGTH,
    )
    return len(dump_message(welcome).encode("utf-8"))


def _check_ice_server(server: object) -> None:
    if not isinstance(server, IceServerInfo):
        raise ValueError(f"ice_servers entries must be IceServerInfo, got {server!r}")
    if (
        not isinstance(server.urls, list)
        or not server.urls
        or not all(isinstance(u, str) and u for u in server.urls)
    ):
        raise ValueError(
            f"an ICE server needs a non-empty list of URL strings, got {server.urls!r}"
        )
    if not all(url.split(":", 1)[0] in ("stun", "stuns", "turn", "turns") for url in server.urls):
        raise ValueError(
            f"ICE server URLs must start with stun:, stuns:, turn: or turns: ({server.urls})"
        )
