"""callbot's WebRTC participant: join a room, publish and receive tracks, make and take calls."""

from .backoff import Backoff, ConnectionState, LinkState
from .calls import Call
from .config import DEFAULT_SERVER_URL, LOOPBACK_ONLY, IceServer, Mode, ParticipantConfig
from .errors import (
    CallbotError,
    CallEndedError,
    ConfigError,
    ConnectError,
    JoinRefused,
    NegotiationError,
    ServerError,
    SignalingError,
    WaitTimeout,
)
from .participant import Participant
from .tracks import DataMessage, RemoteTrack

__all__ = [
    "DEFAULT_SERVER_URL",
    "LOOPBACK_ONLY",
    "Backoff",
    "Call",
    "CallEndedError",
    "CallbotError",
    "ConfigError",
    "ConnectError",
    "ConnectionState",
    "DataMessage",
    "IceServer",
    "JoinRefused",
    "LinkState",
    "Mode",
    "NegotiationError",
    "Participant",
    "ParticipantConfig",
    "RemoteTrack",
    "ServerError",
    "SignalingError",
    "WaitTimeout",
]
