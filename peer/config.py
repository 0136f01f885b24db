"""Participant configuration: frozen, validated once, mapped from CLI flags and ``CALLBOT_*``."""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass, field
from enum import StrEnum
from urllib.parse import urlparse

from signaling_server.protocol import MAX_NAME_LENGTH, MAX_ROOM_LENGTH, IceServerInfo

from .backoff import Backoff
from .errors import ConfigError

DEFAULT_SERVER_URL = "ws://127.0.0.1:8080/ws"
#: Host candidates offered by local runs, the demo and tests: loopback only (DESIGN §4).
LOOPBACK_ONLY: tuple[str, ...] = ("127.0.0.1",)


@dataclass(frozen=True, slots=True, kw_only=True)
class IceServer:
    """One STUN/TURN server. Nothing is configured by default: aiortc's public STUN never is."""

    urls: tuple[str, ...]
    username: str | None = None
    credential: str | None = None

    def __post_init__(self) -> None:
        if not self.urls:
            raise ConfigError("an ICE server needs at least one URL")
        for url in self.urls:
            scheme = url.split(":", 1)[0]
            if scheme not in ("stun", "stuns", "turn", "turns") or ":" not in url:
                raise ConfigError(f"ICE server URL {url!r} must start with stun:, turn: or turns:")

    @classmethod
    def from_info(cls, info: IceServerInfo) -> IceServer:
        return cls(urls=tuple(info.urls), username=info.username, credential=info.credential)


class Mode(StrEnum):
    """Which peers a participant opens media connections to."""

    #: Everyone in the room, as they come and go.
    ROOM = "room"
    #: Only the other active participants of a call we are active in.
    CALL = "call"


@dataclass(frozen=True, slots=True, kw_only=True)
class ParticipantConfig:
    """How a participant reaches the relay and which network paths its media may use.

    ``mode`` chooses room mode (media with everyone present) or call mode (media only between
    active participants of a call). ``ice_addresses`` is the host-candidate policy: the local IP
    addresses ICE may offer.
    ``None`` lets aioice use every interface (never for tests or local runs). ``receive=False``
    makes a publish-only bot: it negotiates send-only media and decodes nothing.
    """

    room: str
    server_url: str = DEFAULT_SERVER_URL
    name: str | None = None
    mode: Mode = Mode.ROOM
    ice_servers: tuple[IceServer, ...] = ()
    use_server_ice_servers: bool = True
    ice_addresses: tuple[str, ...] | None = LOOPBACK_ONLY
    receive: bool = True
    connect_timeout_s: float = 10.0
    negotiation_timeout_s: float = 30.0
    video_buffer_frames: int = 4
    audio_buffer_frames: int = 25
    reconnect: Backoff | None = field(default_factory=Backoff)
    """How to reconnect after losing the relay (None: never; media links stay up anyway)."""
    peer_linger_s: float = 20.0
    """How long a media link survives its peer missing from a roster after a reconnect
    (the relay's resume grace, so a relay restart does not cut media)."""
    peer_list_interval_s: float | None = 15.0
    """How often to pull the roster from the relay, to heal missed joins/leaves (None: never)."""
    video_codecs: tuple[str, ...] = ()
    """Video codecs to use, most wanted first, e.g. ``("H264",)`` (empty: aiortc's order, VP8
    first). Offers list only these; answers keep only these of what the peer offers (or all of
    it when it offers none of them). The browser client only puts its choice first."""
    data_channel: bool = True
    """Open the data channel (``send_data``/``data_messages``) on every link."""

    def __post_init__(self) -> None:
        _check_text("room", self.room, MAX_ROOM_LENGTH)
        if self.name is not None:
            _check_text("name", self.name, MAX_NAME_LENGTH)
        try:
            url = urlparse(self.server_url)
            url.port  # noqa: B018 - raises ValueError for a malformed port
        except ValueError as exc:
            raise ConfigError(f"server URL {self.server_url!r} is malformed: {exc}") from None
        if url.scheme not in ("ws", "wss") or not url.hostname:
            raise ConfigError(
                f"server URL {self.server_url!r} must look like ws://HOST:PORT/ws or wss://..."
            )
        if self.ice_addresses is not None:
            if not self.ice_addresses:
                raise ConfigError("ice_addresses must name at least one address (or be None)")
            for address in self.ice_addresses:
                _check_ice_address(address)
        timeouts = (self.connect_timeout_s, self.negotiation_timeout_s)
        if not all(math.isfinite(t) and t > 0 for t in timeouts):
            raise ConfigError("timeouts must be positive")
        if self.video_buffer_frames < 1 or self.audio_buffer_frames < 1:
            raise ConfigError("buffers must hold at least one frame")
        if not (math.isfinite(self.peer_linger_s) and self.peer_linger_s >= 0):
            raise ConfigError("peer_linger_s must be a finite number >= 0")
        supported = _video_codec_names()
        for codec in self.video_codecs:
            if codec.lower() not in (name.lower() for name in supported):
                raise ConfigError(
                    f"video codec {codec!r} is not supported (choose from {', '.join(supported)})"
                )
        interval = self.peer_list_interval_s
        if interval is not None and not (math.isfinite(interval) and interval > 0):
            raise ConfigError("peer_list_interval_s must be positive (or None)")


def _video_codec_names() -> tuple[str, ...]:
    from aiortc import RTCRtpSender

    names = (c.mimeType.split("/", 1)[1] for c in RTCRtpSender.getCapabilities("video").codecs)
    return tuple(dict.fromkeys(n for n in names if n.lower() != "rtx"))


def check_room(room: str) -> None:
    """Refuse a room name the relay would refuse (``ConfigError``), without asking it."""
    _check_text("room", room, MAX_ROOM_LENGTH)


def _check_text(field: str, value: str, limit: int) -> None:
    """The relay's own rules for room and name, checked before connecting."""
    if not value.strip():
        raise ConfigError(f"{field} must not be empty or blank")
    if len(value) > limit:
        raise ConfigError(f"{field} must be at most {limit} characters")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise ConfigError(f"{field} must not contain control characters")


def _check_ice_address(address: str) -> None:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        raise ConfigError(f"ice address {address!r} is not an IP address") from None
    if ip.is_unspecified or ip.is_multicast:
        # 0.0.0.0 would bind every interface: the opposite of a policy.
        raise ConfigError(f"ice address {address!r} must be one local unicast address")


__all__ = [
    "DEFAULT_SERVER_URL",
    "LOOPBACK_ONLY",
    "IceServer",
    "Mode",
    "ParticipantConfig",
    "check_room",
]
