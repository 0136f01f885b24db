"""The compositor's drawing core: tiles in, one yuv420p canvas frame out, synchronously.

It never converts to RGB: each input plane is resized straight into the view of the canvas
plane its tile covers (:func:`media._scale.paint_picture`: bars and the Y, U and V resizes in
one call into the C resampler), so a tile costs one antialiased resize per plane and nothing
else. The async :class:`~media.compositor.Compositor` calls
:meth:`Canvas.compose` from a worker thread; ``callbot composite`` and the benchmark call it
directly. One canvas must not be used from two threads at once.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import av
import cv2
import numpy as np
import numpy.typing as npt
from av.video.reformatter import VideoReformatter

from . import _yuv
from ._scale import paint_picture
from .layout import Rect, fit

__all__ = ["STALL_MARK_YUV", "Canvas", "Tile", "placeholder_yuv"]

STALL_MARK_YUV = (81, 90, 240)
"""BT.601 red: the border drawn round a tile whose video has stalled."""
_LABEL_MIN_TILE_H = 60  # below this a label would cover too much of the picture
_JPEG_RANGE = 2  # AVCOL_RANGE_JPEG: full-range samples, converted to the canvas's video range


@dataclass(frozen=True, slots=True)
class Tile:
    """One participant's tile for one composition.

    ``rect`` is the cell; the frame is aspect-fit inside it (letterbox/pillarbox bars are
    black). ``frame=None`` draws the participant's placeholder (``label`` on a colour chosen
    from ``key``). ``stalled`` frames the picture with a red border. Tiles paint in list
    order, so later tiles cover earlier ones.
    """

    key: str
    rect: Rect
    frame: av.VideoFrame | None = None
    label: str = ""
    stalled: bool = False


def placeholder_yuv(key: str) -> tuple[int, int, int]:
    """A stable, mid-dark colour per participant key, so placeholders are told apart."""
    h = zlib.crc32(key.encode())
    angle = (h % 360) * np.pi / 180
    return 70, int(128 + 50 * np.cos(angle)), int(128 + 50 * np.sin(angle))


class _KeyState:
    """Per-participant worker-side caches (scaler for odd formats, label and placeholder)."""

    __slots__ = ("label_sprite", "placeholder", "reformatter")

    def __init__(self) -> None:
        self.reformatter = VideoReformatter()
        self.label_sprite: tuple[str, int, npt.NDArray[np.bool_]] | None = None
        self.placeholder: tuple[str, Rect, npt.NDArray[np.uint8]] | None = None


_Signature = tuple[tuple[str, Rect, int, str, bool], ...]


class Canvas:
    """A ``width`` x ``height`` yuv420p canvas that composes tiles into fresh frames.

    When the layout is unchanged and a tile shows the same frame object as last time, its
    cell is copied from the previous output instead of being scaled again (a 15 fps input on
    a 30 fps canvas costs half). With ``threads`` > 1 (default: 2 on a multi-core machine)
    tiles whose cells do not overlap are painted on two threads; :meth:`close` stops the
    extra thread.
    """

    def __init__(self, *, width: int, height: int, threads: int | None = None) -> None:
        _yuv.check_size(width, height)
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self._threads = threads if threads is not None else min(2, os.cpu_count() or 1)
        self._pool: ThreadPoolExecutor | None = None
        self._disjoint_for: tuple[Rect, ...] | None = None
        self._disjoint = False
        self._width = width
        self._height = height
        self._keys: dict[str, _KeyState] = {}
        self._prev: npt.NDArray[np.uint8] | None = None
        self._prev_sig: _Signature | None = None
        self._prev_tiles: list[Tile] = []
        self._covered_for: tuple[Rect, ...] | None = None
        self._covered = False
        self._fits: dict[tuple[int, int, Rect], _Fit] = {}

    @property
    def width(self) -> int:
        return self._width

    @property
    def height(self) -> int:
        return self._height

    def forget(self, key: str) -> None:
        """Drop the caches of a participant that left."""
        self._keys.pop(key, None)

    def compose(self, tiles: Sequence[Tile]) -> av.VideoFrame:
        """Paint ``tiles`` in order on a black canvas; returns a new frame (no pts)."""
        w, h = self._width, self._height
        buf = np.empty(w * h * 3 // 2, dtype=np.uint8)
        planes = _yuv.views(buf, w, h)
        rects = tuple(t.rect for t in tiles)
        if not self._fully_covered(rects):
            planes[0][...] = _yuv.BLACK_Y
            planes[1][...] = _yuv.NEUTRAL_C
            planes[2][...] = _yuv.NEUTRAL_C
        sig: _Signature = tuple(
            (t.key, t.rect, 0 if t.frame is None else id(t.frame), t.label, t.stalled)
            for t in tiles
        )
        prev, prev_sig = self._prev, self._prev_sig
        same_layout = prev_sig is not None and [s[:2] for s in sig] == [s[:2] for s in prev_sig]
        prev_planes = _yuv.views(prev, w, h) if same_layout and prev is not None else None
        jobs = [
            (tile, prev_planes is not None and prev_sig is not None and prev_sig[i] == sig[i])
            for i, tile in enumerate(tiles)
        ]
        pool = self._pool_for(rects)
        if pool is None:
            self._paint_all(jobs, planes, prev_planes)
        else:
            # Cells do not overlap, so tiles can paint in any order: half on a pool thread,
            # half here. OpenCV releases the GIL while it resizes.
            other = pool.submit(self._paint_all, jobs[1::2], planes, prev_planes)
            self._paint_all(jobs[0::2], planes, prev_planes)
            other.result()
        self._prev = buf
        self._prev_sig = sig
        self._prev_tiles = list(tiles)  # keeps the frames alive, so their ids stay unique
        return _yuv.to_frame(buf, w, h)

    def close(self) -> None:
        """Stop the tile thread (blocking: it joins it); the canvas still works, on one thread."""
        pool, self._pool = self._pool, None
        self._threads = 1
        if pool is not None:
            pool.shutdown(wait=True)

    def __enter__(self) -> Canvas:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- painting ------------------------------------------------------------------------

    def _pool_for(self, rects: tuple[Rect, ...]) -> ThreadPoolExecutor | None:
        """The tile pool, if worth using for these cells (several, none overlapping)."""
        if self._threads < 2 or len(rects) < 2:
            return None
        if rects != self._disjoint_for:
            self._disjoint_for = rects
            self._disjoint = not any(
                a.x < b.right and b.x < a.right and a.y < b.bottom and b.y < a.bottom
                for i, a in enumerate(rects)
                for b in rects[i + 1 :]
            )
        if not self._disjoint:
            return None
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="canvas-tiles")
        return self._pool

    def _paint_all(
        self,
        jobs: Sequence[tuple[Tile, bool]],
        planes: tuple[_yuv.Plane, _yuv.Plane, _yuv.Plane],
        prev_planes: tuple[_yuv.Plane, _yuv.Plane, _yuv.Plane] | None,
    ) -> None:
        for tile, reuse in jobs:
            if reuse and prev_planes is not None:
                _copy_cell(prev_planes, planes, tile.rect)
                continue
            state = self._keys.get(tile.key)
            if state is None:
                state = self._keys[tile.key] = _KeyState()
            if tile.frame is None:
                self._paint_placeholder(state, tile, planes)
            else:
                self._paint_frame(state, tile, tile.frame, planes)

    def _fully_covered(self, rects: tuple[Rect, ...]) -> bool:
        """Whether the cells tile the whole canvas (then no background fill is needed)."""
        if rects != self._covered_for:
            self._covered_for = rects
            mask = np.zeros((self._height, self._width), dtype=np.bool_)
            for r in rects:
                mask[r.y : r.bottom, r.x : r.right] = True
            self._covered = bool(mask.all())
        return self._covered

    def _paint_frame(
        self,
        state: _KeyState,
        tile: Tile,
        frame: av.VideoFrame,
        planes: tuple[_yuv.Plane, _yuv.Plane, _yuv.Plane],
    ) -> None:
        cell = tile.rect
        placed = self._fits.get((frame.width, frame.height, cell))
        if placed is None:
            placed = _Fit(frame.width, frame.height, cell)
            if len(self._fits) >= _MAX_FITS:
                self._fits.clear()
            self._fits[frame.width, frame.height, cell] = placed
        content = placed.content
        if content.w < 2 or content.h < 2:
            _fill_bars(planes, cell, content)
            return
        if frame.format.name != "yuv420p":
            frame = state.reformatter.reformat(frame, format="yuv420p")  # yuvj420p too: range
        elif frame.color_range == _JPEG_RANGE:
            frame = state.reformatter.reformat(
                frame, format="yuv420p", src_color_range="JPEG", dst_color_range="MPEG"
            )
        y, u, v = planes
        luma, chroma = placed.luma_cell, placed.chroma_cell
        paint_picture(_yuv.planes_of(frame), (y[luma], u[chroma], v[chroma]), *placed.box)
        if tile.stalled:
            _draw_border(planes, content, STALL_MARK_YUV)
        if tile.label and content.h >= _LABEL_MIN_TILE_H:
            _draw_label(state, tile.label, content, planes)

    def _paint_placeholder(
        self, state: _KeyState, tile: Tile, planes: tuple[_yuv.Plane, _yuv.Plane, _yuv.Plane]
    ) -> None:
        cell = tile.rect
        cached = state.placeholder
        if cached is None or cached[0] != tile.label or cached[1] != cell:
            state.placeholder = cached = (tile.label, cell, _render_placeholder(tile, cell))
        src = _yuv.views(cached[2], cell.w, cell.h)
        _copy_planes(src, planes, cell)


_MAX_FITS = 256  # cached placements per canvas (frame size x cell); cleared when full


class _Fit:
    """Where a frame of one size goes in one cell: the aspect-fit picture, the cell's slices
    of the luma and chroma planes, and the picture's box as :func:`paint_picture` takes it.

    Cached per (frame size, cell) because at 16 tiles computing these for every tile of every
    composite cost ~5% of the composite, under the GIL the two tile threads share.
    """

    __slots__ = ("box", "chroma_cell", "content", "luma_cell")

    def __init__(self, width: int, height: int, cell: Rect) -> None:
        self.content = content = fit(width, height, cell)
        cb, cr = cell.bottom, cell.right
        ccy, ccx = cell.y // 2, cell.x // 2
        self.luma_cell = (slice(cell.y, cb), slice(cell.x, cr))
        self.chroma_cell = (slice(ccy, cb // 2), slice(ccx, cr // 2))
        self.box = (
            content.x - cell.x,
            content.y - cell.y,
            content.w,
            content.h,
            content.x // 2 - ccx,
            content.y // 2 - ccy,
        )


def _copy_cell(
    src: tuple[_yuv.Plane, _yuv.Plane, _yuv.Plane],
    dst: tuple[_yuv.Plane, _yuv.Plane, _yuv.Plane],
    r: Rect,
) -> None:
    dst[0][r.y : r.bottom, r.x : r.right] = src[0][r.y : r.bottom, r.x : r.right]
    cy, cx, cb, cr = r.y // 2, r.x // 2, r.bottom // 2, r.right // 2
    dst[1][cy:cb, cx:cr] = src[1][cy:cb, cx:cr]
    dst[2][cy:cb, cx:cr] = src[2][cy:cb, cx:cr]


def _copy_planes(
    src: tuple[_yuv.Plane, _yuv.Plane, _yuv.Plane],
    dst: tuple[_yuv.Plane, _yuv.Plane, _yuv.Plane],
    r: Rect,
) -> None:
    """Paste cell-sized planes ``src`` at ``r``."""
    dst[0][r.y : r.bottom, r.x : r.right] = src[0]
    cy, cx, cb, cr = r.y // 2, r.x // 2, r.bottom // 2, r.right // 2
    dst[1][cy:cb, cx:cr] = src[1]
    dst[2][cy:cb, cx:cr] = src[2]


def _fill(
    planes: tuple[_yuv.Plane, _yuv.Plane, _yuv.Plane],
    x0: int,
    y0: int,
    x1: int,
    y1: int,
    yuv: tuple[int, int, int],
) -> None:
    if x1 <= x0 or y1 <= y0:
        return
    planes[0][y0:y1, x0:x1] = yuv[0]
    planes[1][y0 // 2 : y1 // 2, x0 // 2 : x1 // 2] = yuv[1]
    planes[2][y0 // 2 : y1 // 2, x0 // 2 : x1 // 2] = yuv[2]


_BLACK = (_yuv.BLACK_Y, _yuv.NEUTRAL_C, _yuv.NEUTRAL_C)


def _fill_bars(
    planes: tuple[_yuv.Plane, _yuv.Plane, _yuv.Plane], cell: Rect, content: Rect
) -> None:
    """Black out the part of ``cell`` that ``content`` leaves (top, bottom, left, right)."""
    _fill(planes, cell.x, cell.y, cell.right, content.y, _BLACK)
    _fill(planes, cell.x, content.bottom, cell.right, cell.bottom, _BLACK)
    _fill(planes, cell.x, content.y, content.x, content.bottom, _BLACK)
    _fill(planes, content.right, content.y, cell.right, content.bottom, _BLACK)


def _draw_border(
    planes: tuple[_yuv.Plane, _yuv.Plane, _yuv.Plane], r: Rect, yuv: tuple[int, int, int]
) -> None:
    t = max(2, (min(r.w, r.h) // 40) & ~1)
    t = min(t, r.w // 2 & ~1, r.h // 2 & ~1)
    if t < 2:
        return
    _fill(planes, r.x, r.y, r.right, r.y + t, yuv)
    _fill(planes, r.x, r.bottom - t, r.right, r.bottom, yuv)
    _fill(planes, r.x, r.y, r.x + t, r.bottom, yuv)
    _fill(planes, r.right - t, r.y, r.right, r.bottom, yuv)


def _draw_label(
    state: _KeyState, text: str, rect: Rect, planes: tuple[_yuv.Plane, _yuv.Plane, _yuv.Plane]
) -> None:
    """Small white-on-dark caption at the bottom-left of the picture."""
    y, u, v = planes
    height = max(10, rect.h // 14) & ~1
    sprite = state.label_sprite
    if sprite is None or sprite[0] != text or sprite[1] != height:
        sprite = state.label_sprite = (text, height, _render_text_mask(text, height))
    mask = sprite[2]
    mh, mw = mask.shape
    mw = min(mw, rect.w) & ~1
    x0 = rect.x
    y0 = rect.bottom - mh
    region = y[y0 : y0 + mh, x0 : x0 + mw]
    region //= 3
    region[mask[:, :mw]] = 235
    u[y0 // 2 : (y0 + mh) // 2, x0 // 2 : (x0 + mw) // 2] = _yuv.NEUTRAL_C
    v[y0 // 2 : (y0 + mh) // 2, x0 // 2 : (x0 + mw) // 2] = _yuv.NEUTRAL_C


def _render_text_mask(text: str, height: int) -> npt.NDArray[np.bool_]:
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


def _render_placeholder(tile: Tile, cell: Rect) -> npt.NDArray[np.uint8]:
    """A cell-sized I420 buffer: the participant's colour with its name centred in white."""
    buf = np.empty(cell.w * cell.h * 3 // 2, dtype=np.uint8)
    y, u, v = _yuv.views(buf, cell.w, cell.h)
    cy, cu, cv_ = placeholder_yuv(tile.key)
    y[...] = cy
    u[...] = cu
    v[...] = cv_
    text = tile.label or tile.key
    if text and cell.w >= 16 and cell.h >= 16:
        font = cv2.FONT_HERSHEY_SIMPLEX
        (tw, th), _ = cv2.getTextSize(text, font, 1.0, 2)
        scale = max(0.3, min(0.8 * cell.w / max(tw, 1), 0.25 * cell.h / max(th, 1)))
        thick = max(1, round(scale * 2))
        (tw, th), _ = cv2.getTextSize(text, font, scale, thick)
        mask = np.zeros((cell.h, cell.w), dtype=np.uint8)
        org = ((cell.w - tw) // 2, (cell.h + th) // 2)
        cv2.putText(mask, text, org, font, scale, 255, thick, cv2.LINE_AA)
        y[mask > 100] = 235
        chroma = cv2.resize(mask, (cell.w // 2, cell.h // 2), interpolation=cv2.INTER_AREA) > 64
        u[chroma] = _yuv.NEUTRAL_C
        v[chroma] = _yuv.NEUTRAL_C
    return buf
