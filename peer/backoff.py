"""Reconnect pacing: exponential backoff with full jitter, and the connection state users see.

Full jitter (each delay uniform in [0, min(cap, first * factor ** (attempt - 1))]) spreads a
crowd of bots that lost the same relay, so they do not all knock at once when it comes back.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from enum import StrEnum

from .errors import ConfigError

__all__ = ["Backoff", "ConnectionState", "LinkState"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Backoff:
    """The reconnect schedule: ``first_s`` x ``factor`` per attempt, capped, fully jittered.

    ``attempts=None`` retries for ever (the default for bots); otherwise the participant gives
    up (state ``closed``) after that many failed attempts in a row.
    """

    first_s: float = 0.1
    factor: float = 2.0
    cap_s: float = 10.0
    attempts: int | None = None
    jitter: bool = True

    def __post_init__(self) -> None:
        if not (math.isfinite(self.first_s) and self.first_s > 0):
            raise ConfigError(f"backoff first_s must be positive, got {self.first_s}")
        if not (math.isfinite(self.factor) and self.factor >= 1):
            raise ConfigError(f"backoff factor must be at least 1, got {self.factor}")
        if not (math.isfinite(self.cap_s) and self.cap_s >= self.first_s):
            raise ConfigError(f"backoff cap_s must be at least first_s, got {self.cap_s}")
        if self.attempts is not None and self.attempts < 1:
            raise ConfigError(f"backoff attempts must be at least 1 (or None), got {self.attempts}")

    def ceiling(self, attempt: int) -> float:
        """The largest delay before attempt ``attempt`` (1-based)."""
        if attempt < 1:
            raise ValueError(f"attempts count from 1, got {attempt}")
        exponent = min(attempt - 1, 64)  # past the cap long before; no float overflow
        return min(self.cap_s, self.first_s * self.factor**exponent)

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """How long to wait before attempt ``attempt``: uniform in [0, ceiling] with jitter."""
        ceiling = self.ceiling(attempt)
        if not self.jitter:
            return ceiling
        return (rng or random).uniform(0.0, ceiling)

    def gives_up_after(self, attempt: int) -> bool:
        return self.attempts is not None and attempt >= self.attempts


class LinkState(StrEnum):
    """Whether a participant is in touch with the relay."""

    CONNECTING = "connecting"  # the first join, not yet answered
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"  # lost; a reconnect is about to start (or none will)
    RECONNECTING = "reconnecting"
    CLOSED = "closed"  # closed by aclose(), or gave up


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionState:
    """A snapshot of the relay connection: what, since when, why, which attempt."""

    state: LinkState
    since: float = field(default_factory=time.monotonic)
    """``time.monotonic()`` when this state began."""
    reason: str | None = None
    """Why the connection was lost or closed (None while connected)."""
    attempt: int = 0
    """The reconnect attempt under way (``reconnecting``), or that last failed."""

    @property
    def connected(self) -> bool:
        return self.state is LinkState.CONNECTED
