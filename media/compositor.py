"""Grid compositor: many live video tracks in, one canvas track out.

Each input has a reader task that keeps only the newest frame (a slow output consumer never
makes inputs queue up), and the output track composes on demand at its own pace. Scaling and
pasting run in a worker thread; the loop only snapshots which frame goes where.
"""

from __future__ import annotations

import asyncio
import fractions
import logging
import time
from dataclasses import dataclass

import av
import cv2
import numpy as np
import numpy.typing as npt
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError
from av.video.reformatter import VideoReformatter

from . import _yuv
from ._pacing import Pacer
from ._tasks import OwnedTasks
from .errors import ClosedError
from .layout import Rect, fit, grid

__all__ = ["GridCompositor", "InputStats"]

logger = logging.getLogger(__name__)

_VIDEO_CLOCK_RATE = 90000
_VIDEO_TIME_BASE = fractions.Fraction(1, _VIDEO_CLOCK_RATE)
_LABEL_MIN_TILE_H = 60  # below this a label would cover too much of the picture


@dataclass(frozen=True, slots=True)
class InputStats:
    """Per-input counters. ``fps`` is the arrival rate between the first and last frame."""

    label: str
    frames: int
    fps: float
    dropped: int = 0
    """Frames replaced by a newer one before any output frame used them."""


class _Input:
    """State of one input. Reader fields are touched on the loop, the cache in the worker."""

    __slots__ = (
        "cache",
        "dropped",
        "first_at",
        "frames",
        "label",
        "last_at",
        "latest",
        "reformatter",
        "shown",
        "size",
        "sprite",
        "task",
        "track",
    )

    def __init__(self, track: MediaStreamTrack, label: str) -> None:
        self.track = track
        self.label = label
        self.task: asyncio.Task[None] | None = None
        self.latest: av.VideoFrame | None = None
        self.shown = True  # whether ``latest`` has been handed to a composition
        self.size: tuple[int, int] | None = None
        self.frames = 0
        self.dropped = 0
        self.first_at = 0.0
        self.last_at = 0.0
        # Worker-thread state: a scaler kept across frames (building one costs ~1 ms), the
        # scaled planes of the last composed frame, the label sprite.
        self.reformatter = VideoReformatter()
        self.cache: tuple[av.VideoFrame, Rect, tuple[_yuv.Plane, _yuv.Plane, _yuv.Plane]] | None
        self.cache = None
        self.sprite: tuple[int, npt.NDArray[np.bool_]] | None = None

    def stats(self) -> InputStats:
        span = self.last_at - self.first_at
        fps = (self.frames - 1) / span if self.frames >= 2 and span > 0 else 0.0
        return InputStats(self.label, self.frames, fps, self.dropped)


class _CompositeTrack(MediaStreamTrack):
    kind = "video"

    def __init__(self, owner: GridCompositor) -> None:
        super().__init__()
        self._owner = owner

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        return await self._owner._next_frame()


class GridCompositor:
    """Lays out live video tracks on a grid canvas and serves it as a video track.

    Inputs are borrowed: the compositor reads them but never stops them. Tiles keep the
    input's aspect ratio (letterboxed on black) and follow insertion order.
    """

    def __init__(self, *, width: int = 1280, height: int = 720, fps: float = 30.0) -> None:
        _yuv.check_size(width, height)
        if not 0 < fps <= 120:
            raise ValueError(f"fps must be in (0, 120], got {fps}")
        self._width = width
        self._height = height
        self._fps = float(fps)
        self._inputs: dict[MediaStreamTrack, _Input] = {}
        self._readers = OwnedTasks("compositor input reader")
        self._closed = False
        self._pacer = Pacer(self._fps)
        self._compose_lock = asyncio.Lock()
        self._blank = _yuv.alloc(width, height)
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
    def frames_out(self) -> int:
        return self._frames_out

    def add_track(self, track: MediaStreamTrack, *, label: str) -> None:
        """Start reading ``track`` into a new tile at the end of the grid."""
        if self._closed:
            raise ClosedError("compositor is closed")
        if track.kind != "video":
            raise ValueError(f"only video tracks can be composited, got kind {track.kind!r}")
        if track in self._inputs:
            raise ValueError(f"track {track.id} is already an input")
        if any(inp.label == label for inp in self._inputs.values()):
            raise ValueError(f"label {label!r} is already used by another input")
        inp = _Input(track, label)
        inp.task = self._readers.start(self._read(inp), name=f"compositor-input-{label}")
        self._inputs[track] = inp

    def remove_track(self, track: MediaStreamTrack) -> None:
        """Drop ``track``'s tile; its reader is cancelled (and awaited by ``aclose``)."""
        inp = self._inputs.pop(track, None)
        if inp is not None and inp.task is not None:
            inp.task.cancel()

    def layout(self) -> list[tuple[str, Rect]]:
        """(label, content rect) per input, in tile order, from each input's last frame size.

        An input without a frame yet reports its whole cell.
        """
        inputs = list(self._inputs.values())
        cells = grid(len(inputs), self._width, self._height)
        return [
            (inp.label, fit(*inp.size, cell) if inp.size else cell)
            for inp, cell in zip(inputs, cells, strict=True)
        ]

    def stats(self) -> dict[str, InputStats]:
        return {inp.label: inp.stats() for inp in self._inputs.values()}

    async def __aenter__(self) -> GridCompositor:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop the output and cancel and await every reader; safe to call more than once."""
        self._closed = True
        self._output.stop()
        self._inputs.clear()
        await self._readers.aclose()

    # -- readers -----------------------------------------------------------------------------

    async def _read(self, inp: _Input) -> None:
        try:
            while True:
                frame = await inp.track.recv()
                if not isinstance(frame, av.VideoFrame):
                    raise TypeError(f"input {inp.label!r} yielded {type(frame).__name__}")
                now = time.monotonic()
                if not inp.shown:
                    inp.dropped += 1
                inp.latest = frame
                inp.shown = False
                inp.size = (frame.width, frame.height)
                if inp.frames == 0:
                    inp.first_at = now
                inp.last_at = now
                inp.frames += 1
        except MediaStreamError:
            logger.debug("compositor input %r ended", inp.label)
        finally:
            if self._inputs.get(inp.track) is inp:
                del self._inputs[inp.track]
            inp.latest = None

    # -- output ------------------------------------------------------------------------------

    async def snapshot(self) -> av.VideoFrame:
        """Compose the current inputs right away, unpaced and without pts.

        For previews, thumbnails and benchmarks; it does not count as output for ``dropped``.
        """
        if self._closed:
            raise ClosedError("compositor is closed")
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
        """Snapshot on the loop (which frame goes where), compose in a worker thread."""
        inputs = list(self._inputs.values())
        cells = grid(len(inputs), self._width, self._height)
        jobs: list[tuple[_Input, av.VideoFrame, Rect]] = []
        for inp, cell in zip(inputs, cells, strict=True):
            if inp.latest is not None:
                jobs.append((inp, inp.latest, cell))
                if mark_shown:
                    inp.shown = True
        return await asyncio.to_thread(self._compose, jobs)

    def _compose(self, jobs: list[tuple[_Input, av.VideoFrame, Rect]]) -> av.VideoFrame:
        """Worker thread: scale each input into its tile and paste the planes."""
        buf = self._blank.copy()
        y, u, v = _yuv.views(buf, self._width, self._height)
        for inp, frame, cell in jobs:
            rect = fit(frame.width, frame.height, cell)
            if rect.w < 2 or rect.h < 2:
                continue
            ty, tu, tv = _scaled(inp, frame, rect)
            y[rect.y : rect.bottom, rect.x : rect.right] = ty
            cy, cx, ch, cw = rect.y // 2, rect.x // 2, rect.h // 2, rect.w // 2
            u[cy : cy + ch, cx : cx + cw] = tu
            v[cy : cy + ch, cx : cx + cw] = tv
            if inp.label and rect.h >= _LABEL_MIN_TILE_H:
                _draw_label(inp, rect, y, u, v)
        return _yuv.to_frame(buf, self._width, self._height)


def _scaled(
    inp: _Input, frame: av.VideoFrame, rect: Rect
) -> tuple[_yuv.Plane, _yuv.Plane, _yuv.Plane]:
    """The frame scaled to the tile, reusing the last result when neither has changed."""
    cached = inp.cache
    if cached is not None and cached[0] is frame and cached[1] == rect:
        return cached[2]
    scaled = inp.reformatter.reformat(
        frame, width=rect.w, height=rect.h, format="yuv420p", interpolation="AREA"
    )
    planes = _yuv.planes_of(scaled)
    inp.cache = (frame, rect, planes)
    return planes


def _draw_label(inp: _Input, rect: Rect, y: _yuv.Plane, u: _yuv.Plane, v: _yuv.Plane) -> None:
    """Small white-on-dark caption at the bottom-left of the tile, clear of the stamp band."""
    height = max(10, rect.h // 14) & ~1
    if inp.sprite is None or inp.sprite[0] != height:
        inp.sprite = (height, _render_label(inp.label, height))
    mask = inp.sprite[1]
    mh, mw = mask.shape
    mw = min(mw, rect.w) & ~1
    x0 = rect.x
    y0 = rect.bottom - mh
    region = y[y0 : y0 + mh, x0 : x0 + mw]
    region //= 3
    region[mask[:, :mw]] = 235
    u[y0 // 2 : (y0 + mh) // 2, x0 // 2 : (x0 + mw) // 2] = _yuv.NEUTRAL_C
    v[y0 // 2 : (y0 + mh) // 2, x0 // 2 : (x0 + mw) // 2] = _yuv.NEUTRAL_C


def _render_label(text: str, height: int) -> npt.NDArray[np.bool_]:
    font = cv2.FONT_HERSHEY_SIMPLEX
    pad = max(2, height // 5)
    (_, th), _ = cv2.getTextSize(text, font, 1.0, 1)
    scale = (height - 2 * pad) / max(th, 1)
    (tw, th), _ = cv2.getTextSize(text, font, scale, 1)
    width = (tw + 2 * pad + 1) & ~1
    canvas = np.zeros((height, width), dtype=np.uint8)
    cv2.putText(canvas, text, (pad, height - pad), font, scale, 255, 1, cv2.LINE_AA)
    mask: npt.NDArray[np.bool_] = canvas > 100
    return mask
