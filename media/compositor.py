"""Compositor: participants' live video in, one canvas track out, in a chosen layout.

Each video input has a reader task that keeps only the newest frame (a slow output consumer
never makes inputs queue up), and the output track composes on demand at its own pace. The
loop only decides what goes where (layout, speaker, stalls); scaling and painting run in a
worker thread through :class:`~media.canvas.Canvas`.

Participants are keyed by a label. One added with :meth:`Compositor.add_participant` stays
until removed and shows a placeholder (name on a colour) while it has no video; one that only
came in through :meth:`Compositor.add_track` leaves when its track ends.
"""

from __future__ import annotations

import asyncio
import fractions
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

import av
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from . import _yuv
from ._pacing import Pacer
from ._tasks import OwnedTasks
from .canvas import Canvas, Tile
from .clock import MediaClock
from .errors import ClosedError
from .layout import (
    Placement,
    Rect,
    Scene,
    fit,
    grid_layout,
    pip_layout,
    scene_layout,
    speaker_layout,
)
from .speaker import SpeakerSelector

__all__ = ["LAYOUTS", "Compositor", "InputStats", "LayoutName"]

logger = logging.getLogger(__name__)

_VIDEO_CLOCK_RATE = 90000
_VIDEO_TIME_BASE = fractions.Fraction(1, _VIDEO_CLOCK_RATE)

LayoutName = Literal["grid", "speaker", "pip"]
LAYOUTS: tuple[LayoutName, ...] = ("grid", "speaker", "pip")


@dataclass(frozen=True, slots=True)
class InputStats:
    """Per-participant video counters. ``fps`` is the arrival rate between first and last frame."""

    label: str
    frames: int
    fps: float
    dropped: int = 0
    """Frames replaced by a newer one before any output frame used them."""
    stalled: bool = False
    """No new frame for longer than the compositor's ``stall_s`` (the tile shows a marker)."""


class _Participant:
    """One tile's state. Reader fields are touched on the loop only."""

    __slots__ = (
        "dropped",
        "first_at",
        "frames",
        "implicit",
        "label",
        "last_at",
        "latest",
        "shown",
        "task",
        "track",
    )

    def __init__(self, label: str, *, implicit: bool) -> None:
        self.label = label
        self.implicit = implicit  # came in with a track: leaves when the track ends
        self.track: MediaStreamTrack | None = None
        self.task: asyncio.Task[None] | None = None
        self.latest: av.VideoFrame | None = None
        self.shown = True  # whether ``latest`` has been handed to a composition
        self.frames = 0
        self.dropped = 0
        self.first_at = 0.0
        self.last_at = 0.0

    def stalled(self, now: float, stall_s: float) -> bool:
        return self.latest is not None and now - self.last_at > stall_s

    def stats(self, now: float, stall_s: float) -> InputStats:
        span = self.last_at - self.first_at
        fps = (self.frames - 1) / span if self.frames >= 2 and span > 0 else 0.0
        return InputStats(self.label, self.frames, fps, self.dropped, self.stalled(now, stall_s))


class _CompositeTrack(MediaStreamTrack):
    kind = "video"

    def __init__(self, owner: Compositor) -> None:
        super().__init__()
        self._owner = owner

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        return await self._owner._next_frame()


class Compositor:
    """Lays participants out on a canvas and serves it as a fixed-rate video track.

    Layouts: ``"grid"`` (everyone, rows and columns chosen for the count), ``"speaker"`` (the
    active speaker large over a filmstrip), ``"pip"`` (the active speaker full-canvas, the
    others as insets) and an explicit :class:`~media.layout.Scene`. The active speaker comes
    from ``levels`` (per-label dBFS, e.g. ``AudioMixer.levels``) through a
    :class:`~media.speaker.SpeakerSelector`, or is pinned with :meth:`set_speaker`.

    Inputs are borrowed: the compositor reads tracks but never stops them. Tiles keep the
    input's aspect ratio (black bars), follow resolution changes frame by frame, and a tile
    whose video has not changed for ``stall_s`` keeps its last frame inside a red border.
    With a shared ``clock`` output pts are media time since its epoch (see
    :class:`~media.clock.MediaClock`), so a recorder can line them up with mixed audio.
    """

    def __init__(
        self,
        *,
        width: int = 1280,
        height: int = 720,
        fps: float = 30.0,
        layout: LayoutName | Scene = "grid",
        levels: Callable[[], Mapping[str, float]] | None = None,
        clock: MediaClock | None = None,
        stall_s: float = 1.0,
        labels: bool = True,
        speaker: SpeakerSelector | None = None,
    ) -> None:
        _yuv.check_size(width, height)
        if not 0 < fps <= 120:
            raise ValueError(f"fps must be in (0, 120], got {fps}")
        if stall_s <= 0:
            raise ValueError(f"stall_s must be positive, got {stall_s}")
        self._width = width
        self._height = height
        self._fps = float(fps)
        self._layout = _check_layout(layout)
        self._levels = levels
        self._stall_s = stall_s
        self._labels = labels
        self._selector = speaker or SpeakerSelector()
        self._pinned: str | None = None
        self._participants: dict[str, _Participant] = {}
        self._readers = OwnedTasks("compositor input reader")
        self._closed = False
        # Compose half a frame after each slot and stamp the slot: the newest input frame is
        # on average half an (input) frame old, so pts match the content's capture time, and
        # sources paced on the same clock are never raced (see test_media_av_sync).
        self._pacer = Pacer(self._fps, clock, phase=0.5 if clock is not None else 0.0)
        self._compose_lock = asyncio.Lock()
        self._canvas = Canvas(width=width, height=height)
        self._output = _CompositeTrack(self)
        self._frames_out = 0

    # -- public API ------------------------------------------------------------------------

    @property
    def output(self) -> MediaStreamTrack:
        """The composite video track (yuv420p, pts in 1/90000), one consumer at a time."""
        return self._output

    @property
    def width(self) -> int:
        return self._width

    @property
    def height(self) -> int:
        return self._height

    @property
    def fps(self) -> float:
        return self._fps

    @property
    def frames_out(self) -> int:
        return self._frames_out

    @property
    def speaker(self) -> str | None:
        """The participant shown large in speaker and pip layouts (pinned or detected)."""
        if self._pinned is not None and self._pinned in self._participants:
            return self._pinned
        return self._selector.current

    @property
    def current_layout(self) -> LayoutName | Scene:
        return self._layout

    def set_layout(self, layout: LayoutName | Scene) -> None:
        self._layout = _check_layout(layout)

    def set_levels(self, levels: Callable[[], Mapping[str, float]] | None) -> None:
        """Where audio levels come from (per-label dBFS), for the active-speaker choice."""
        self._levels = levels

    def set_speaker(self, label: str | None) -> None:
        """Pin a participant as the speaker (None: back to detection from levels)."""
        self._pinned = label

    def add_participant(self, label: str) -> None:
        """Add a tile that stays until :meth:`remove_participant`; a placeholder until video."""
        self._check_open()
        part = self._participants.get(label)
        if part is None:
            self._participants[label] = _Participant(label, implicit=False)
        else:
            part.implicit = False

    def remove_participant(self, label: str) -> None:
        """Drop a participant's tile and stop reading its track (if any)."""
        part = self._participants.pop(label, None)
        if part is not None and part.task is not None:
            part.task.cancel()
        if part is not None:
            self._canvas.forget(label)  # a dict pop: safe beside a composing worker

    def add_track(self, track: MediaStreamTrack, *, label: str) -> None:
        """Read ``track`` as participant ``label``'s video (adding the participant if new)."""
        self._check_open()
        if track.kind != "video":
            raise ValueError(f"only video tracks can be composited, got kind {track.kind!r}")
        if any(p.track is track for p in self._participants.values()):
            raise ValueError(f"track {track.id} is already an input")
        part = self._participants.get(label)
        if part is not None and part.track is not None:
            raise ValueError(f"label {label!r} is already used by another input")
        if part is None:
            part = self._participants[label] = _Participant(label, implicit=True)
        part.track = track
        part.task = self._readers.start(self._read(part, track), name=f"compositor-{label}")

    def remove_track(self, track: MediaStreamTrack) -> None:
        """Stop reading ``track``; a participant that came with it goes, others keep a tile."""
        for part in list(self._participants.values()):
            if part.track is track:
                if part.task is not None:
                    part.task.cancel()
                self._detach(part, track)

    def layout(self) -> list[tuple[str, Rect]]:
        """(label, picture rect) per visible participant in paint order.

        The rect is where the picture lands (aspect-fit in its cell) for a participant with a
        frame, the whole cell otherwise.
        """
        out = []
        for placement in self._placements():
            part = self._participants[placement.key]
            rect = placement.rect
            if part.latest is not None:
                rect = fit(part.latest.width, part.latest.height, rect)
            out.append((placement.key, rect))
        return out

    def stats(self) -> dict[str, InputStats]:
        now = time.monotonic()
        return {p.label: p.stats(now, self._stall_s) for p in self._participants.values()}

    async def __aenter__(self) -> Compositor:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop the output and cancel and await every reader; safe to call more than once."""
        self._closed = True
        self._output.stop()
        self._participants.clear()
        await self._readers.aclose()
        async with self._compose_lock:  # a composition in flight finishes first
            await asyncio.to_thread(self._canvas.close)

    # -- readers -----------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("compositor is closed")

    def _detach(self, part: _Participant, track: MediaStreamTrack) -> None:
        if part.track is not track:
            return
        part.track = None
        part.task = None
        part.latest = None
        if part.implicit and self._participants.get(part.label) is part:
            del self._participants[part.label]
            self._canvas.forget(part.label)

    async def _read(self, part: _Participant, track: MediaStreamTrack) -> None:
        try:
            while True:
                frame = await track.recv()
                if not isinstance(frame, av.VideoFrame):
                    raise TypeError(f"input {part.label!r} yielded {type(frame).__name__}")
                now = time.monotonic()
                if not part.shown:
                    part.dropped += 1
                part.latest = frame
                part.shown = False
                if part.frames == 0:
                    part.first_at = now
                part.last_at = now
                part.frames += 1
        except MediaStreamError:
            logger.debug("compositor input %r ended", part.label)
        finally:
            self._detach(part, track)

    # -- output ------------------------------------------------------------------------------

    def _placements(self) -> list[Placement]:
        keys = list(self._participants)
        layout = self._layout
        if isinstance(layout, Scene):
            return scene_layout(keys, layout, self._width, self._height)
        if layout == "grid":
            return grid_layout(keys, self._width, self._height)
        if self._levels is not None and (
            self._pinned is None or self._pinned not in self._participants
        ):
            self._selector.update(
                {k: v for k, v in self._levels().items() if k in self._participants},
                time.monotonic(),
            )
        if layout == "speaker":
            return speaker_layout(keys, self.speaker, self._width, self._height)
        return pip_layout(keys, self.speaker, self._width, self._height)

    async def snapshot(self) -> av.VideoFrame:
        """Compose the current inputs right away, unpaced and without pts.

        For previews, thumbnails and benchmarks; it does not count as output for ``dropped``.
        """
        self._check_open()
        async with self._compose_lock:
            return await self._compose_current(mark_shown=False)

    async def _next_frame(self) -> av.VideoFrame:
        async with self._compose_lock:
            if self._closed:
                raise MediaStreamError
            slot = await self._pacer.next_slot()
            if self._closed:
                raise MediaStreamError
            frame = await self._compose_current(mark_shown=True)
        frame.pts = round(slot * _VIDEO_CLOCK_RATE / self._fps)
        frame.time_base = _VIDEO_TIME_BASE
        self._frames_out += 1
        return frame

    async def _compose_current(self, *, mark_shown: bool) -> av.VideoFrame:
        """Decide on the loop what goes where; paint in a worker thread."""
        now = time.monotonic()
        tiles = []
        for placement in self._placements():
            part = self._participants[placement.key]
            tiles.append(
                Tile(
                    key=part.label,
                    rect=placement.rect,
                    frame=part.latest,
                    label=part.label if self._labels else "",
                    stalled=part.stalled(now, self._stall_s),
                )
            )
            if mark_shown:
                part.shown = True
        return await asyncio.to_thread(self._canvas.compose, tiles)


def _check_layout(layout: LayoutName | Scene) -> LayoutName | Scene:
    if isinstance(layout, Scene) or layout in LAYOUTS:
        return layout
    raise ValueError(f"unknown layout {layout!r}; use one of {', '.join(LAYOUTS)} or a Scene")
