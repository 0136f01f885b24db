"""A shared media clock: tracks paced by the same clock stamp comparable timestamps.

Each source, the compositor and the mixer otherwise count pts from their own first frame, so
two tracks' timestamps say nothing about each other. Given one ``MediaClock``, every pts is
"seconds since the clock's epoch" in the track's time base, which is what lets a recorder
line audio up with video from timestamps alone instead of from arrival times.
"""

from __future__ import annotations

import time

__all__ = ["MediaClock"]


class MediaClock:
    """An epoch on ``time.monotonic()``; pts of tracks sharing it are on one timeline."""

    __slots__ = ("_epoch",)

    def __init__(self, epoch: float | None = None) -> None:
        self._epoch = time.monotonic() if epoch is None else float(epoch)

    @property
    def epoch(self) -> float:
        """The ``time.monotonic()`` value that is media time zero."""
        return self._epoch

    def now(self) -> float:
        """Seconds of media time elapsed since the epoch."""
        return time.monotonic() - self._epoch

    def __repr__(self) -> str:
        return f"MediaClock(epoch={self._epoch:.6f})"
