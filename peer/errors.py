"""Errors raised by the participant side.

::

    CallbotError                 root of everything callbot's peer package raises
    ├── ConfigError              a config that cannot work (also a ValueError)
    ├── WaitTimeout              a wait_* helper ran out of time (also a TimeoutError)
    ├── CallEndedError           waited for a call state the call can no longer reach (it ended)
    ├── SignalingError           talking to the relay failed
    │   ├── ConnectError         the relay could not be reached or the WebSocket dropped
    │   └── ServerError          the relay answered ``error`` (carries its ErrorCode)
    │       └── JoinRefused      ... in reply to ``join``
    └── NegotiationError         SDP offer/answer or ICE with one remote peer failed
"""

from __future__ import annotations

from signaling_server.protocol import CallInfo, ErrorCode


class CallbotError(Exception):
    """Root of the peer package's errors, so callers can catch one type."""


class ConfigError(CallbotError, ValueError):
    pass


class WaitTimeout(CallbotError, TimeoutError):
    """Says what was being waited for, unlike a bare ``TimeoutError``."""


class CallEndedError(CallbotError):
    """A ``Call.wait_for`` target the call can no longer reach: it ended (``info`` says how)."""

    def __init__(self, info: CallInfo) -> None:
        super().__init__(f"call {info.call_id} ended ({info.reason})")
        self.info = info


class SignalingError(CallbotError):
    pass


class ConnectError(SignalingError):
    pass


class ServerError(SignalingError):
    """The relay refused a request; ``code`` is the protocol's machine-readable reason."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class JoinRefused(ServerError):
    pass


class NegotiationError(CallbotError):
    def __init__(self, peer_id: str, message: str) -> None:
        super().__init__(f"with {peer_id}: {message}")
        self.peer_id = peer_id


__all__ = [
    "CallEndedError",
    "CallbotError",
    "ConfigError",
    "ConnectError",
    "JoinRefused",
    "NegotiationError",
    "ServerError",
    "SignalingError",
    "WaitTimeout",
]
