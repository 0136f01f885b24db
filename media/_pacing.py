"""Real-time pacing shared by every track this package produces."""

from __future__ import annotations

import asyncio
import time


class Pacer:
    """Hands out slot numbers at ``rate`` per second of monotonic time.

    A consumer late by more than one slot gets the slot matching the current time, so a stall
    becomes a gap in timestamps instead of a burst of stale frames that never catches up.
    """

    def __init__(self, rate: float) -> None:
        if rate <= 0:
            raise ValueError(f"rate must be positive, got {rate}")
        self._rate = rate
        self._start: float | None = None
        self._slot = -1

    async def next_slot(self) -> int:
        now = time.monotonic()
        if self._start is None:
            self._start = now
            self._slot = 0
            return 0
        slot = self._slot + 1
        target = self._start + slot / self._rate
        if now - target > 1 / self._rate:
            slot = max(slot, int((now - self._start) * self._rate))
        elif target > now:
            await asyncio.sleep(target - now)
        self._slot = slot
        return slot
