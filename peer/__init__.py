"""callbot's WebRTC participant: join a room on the relay, publish tracks, receive tracks."""

from .config import DEFAULT_SERVER_URL, LOOPBACK_ONLY, IceServer, ParticipantConfig
from .errors import (
    CallbotError,
    ConfigError,
    ConnectError,
    JoinRefused,
    NegotiationError,
    ServerError,
    SignalingError,
)
from .participant import Participant
from .tracks import RemoteTrack

__all__ = [
    "DEFAULT_SERVER_URL",
    "LOOPBACK_ONLY",
    "CallbotError",
    "ConfigError",
    "ConnectError",
    "IceServer",
    "JoinRefused",
    "NegotiationError",
    "Participant",
    "ParticipantConfig",
    "RemoteTrack",
    "ServerError",
    "SignalingError",
]
