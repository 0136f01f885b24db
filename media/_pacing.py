"""Real-time pacing shared by every track this package produces."""

from __future__ import annotations

import asyncio
import math
import time

from .clock import MediaClock


class Pacer:
    """Hands out slot numbers at ``rate`` per second of monotonic time.

    A consumer late by more than one slot gets the slot matching the current time, so a stall
    becomes a gap in timestamps instead of a burst of stale frames that never catches up.

    Without a clock, slots count from the first call (slot 0). With a :class:`MediaClock`,
    slot ``n`` is due at ``clock.epoch + (n + phase) / rate``: the first slot handed out is the
    next one due, so several pacers sharing a clock produce timestamps on one timeline. A
    consumer that samples other tracks paced on the same clock uses ``phase=0.5`` to wake
    half a slot after them, so it never races the frame it should pick up.
    """

    def __init__(self, rate: float, clock: MediaClock | None = None, *, phase: float = 0.0) -> None:
        if rate <= 0:
            raise ValueError(f"rate must be positive, got {rate}")
        if not 0.0 <= phase < 1.0:
            raise ValueError(f"phase must be in [0, 1), got {phase}")
        self._rate = rate
        self._clock = clock
        self._start: float | None = None if clock is None else clock.epoch + phase / rate
        self._slot = -1

    @property
    def rate(self) -> float:
        return self._rate

    async def next_slot(self) -> int:
        now = time.monotonic()
        if self._start is None:
            self._start = now
            self._slot = 0
            return 0
        slot = self._slot + 1
        if self._slot < 0:  # first slot on a shared clock: the next one due from now on
            slot = max(0, math.ceil((now - self._start) * self._rate - 1e-9))
        target = self._start + slot / self._rate
        if now - target > 1 / self._rate:
            slot = max(slot, int((now - self._start) * self._rate))
        elif target > now:
            await asyncio.sleep(target - now)
        self._slot = slot
        return slot
