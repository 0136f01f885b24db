"""Bounded track plumbing: rings that drop the oldest frame, a fan-out for local tracks, and the
remote-track wrapper handed to users.

aiortc's receiver pushes every decoded frame into an unbounded queue, and its ``MediaRelay`` starts
tasks that nobody owns; a bot that does not read would grow without limit. Here every remote track
is drained by a task owned by its peer link into a ring of a few frames, and each local track is
read once and offered to every peer connection through its own ring.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

logger = logging.getLogger(__name__)


class RingTrack(MediaStreamTrack):
    """A track fed by :meth:`push`; holds at most ``capacity`` frames and drops the oldest."""

    def __init__(self, kind: str, *, capacity: int) -> None:
        super().__init__()
        self.kind = kind
        self._frames: deque[Any] = deque(maxlen=capacity)
        self._ready = asyncio.Event()
        self._ended = False
        self.frames_in = 0
        self.frames_dropped = 0
        self.first_frame_at: float | None = None
        self.last_frame_at: float | None = None

    def push(self, frame: Any) -> None:
        if self._ended:
            return
        if len(self._frames) == self._frames.maxlen:
            self.frames_dropped += 1
        self._frames.append(frame)
        self.frames_in += 1
        now = time.monotonic()
        if self.first_frame_at is None:
            self.first_frame_at = now
        self.last_frame_at = now
        self._ready.set()

    def end(self) -> None:
        """No more frames: readers get what is buffered, then ``MediaStreamError``."""
        self._ended = True
        self._ready.set()

    @property
    def ended(self) -> bool:
        return self._ended

    @property
    def fps(self) -> float:
        """Mean frame rate between the first and the last frame received."""
        if self.first_frame_at is None or self.last_frame_at is None or self.frames_in < 2:
            return 0.0
        span = self.last_frame_at - self.first_frame_at
        return (self.frames_in - 1) / span if span > 0 else 0.0

    async def recv(self) -> Any:
        while not self._frames:
            if self._ended or self.readyState != "live":
                raise MediaStreamError
            self._ready.clear()
            await self._ready.wait()
        return self._frames.popleft()

    def stop(self) -> None:
        super().stop()
        self.end()


class TrackPump:
    """Reads one source track in a task it owns and pushes every frame into its rings."""

    def __init__(self, source: MediaStreamTrack, *, capacity: int, name: str = "") -> None:
        self.source = source
        self.kind: str = source.kind
        self._capacity = capacity
        self._name = name
        self._rings: set[RingTrack] = set()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def subscribe(self) -> RingTrack:
        """A new ring that receives every frame from now on; starts reading on first use."""
        if self._closed:
            raise RuntimeError("track pump is closed")
        ring = RingTrack(self.kind, capacity=self._capacity)
        self._rings.add(ring)
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"callbot-pump-{self._name}")
        return ring

    def unsubscribe(self, ring: RingTrack) -> None:
        self._rings.discard(ring)
        ring.end()

    async def _run(self) -> None:
        try:
            while True:
                try:
                    frame = await self.source.recv()
                except MediaStreamError:
                    break
                for ring in tuple(self._rings):
                    ring.push(frame)
        finally:
            for ring in tuple(self._rings):
                ring.end()

    async def aclose(self) -> None:
        """Stop reading; every ring ends. Idempotent. The source track is not stopped."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for ring in tuple(self._rings):
            ring.end()
        self._rings.clear()


class RemoteTrack(RingTrack):
    """A track received from one remote peer. Read it with ``recv()`` (it is a
    ``MediaStreamTrack``); if nobody reads, it keeps only the newest few frames."""

    def __init__(self, kind: str, *, peer_id: str, peer_name: str, capacity: int) -> None:
        super().__init__(kind, capacity=capacity)
        self.peer_id = peer_id
        self.peer_name = peer_name

    def __repr__(self) -> str:
        return f"RemoteTrack({self.kind} from {self.peer_name!r} [{self.peer_id}])"


@dataclass(frozen=True, slots=True)
class DataMessage:
    """One message that arrived on a peer's data channel."""

    peer_id: str
    peer_name: str
    data: str | bytes


__all__ = ["DataMessage", "RemoteTrack", "RingTrack", "TrackPump"]
