"""Antialiased resizing of one 8-bit plane straight into a (possibly strided) destination view.

The compositor pastes by resizing each input plane directly into the view of the canvas plane
that its tile covers, so no intermediate frame is allocated or copied.

A shrink runs the small C extension ``media._resample``: a separable fixed-point resampler
that applies exactly the filter FFmpeg's swscale applies by default (bicubic, B=0, C=0.6,
stretched by the shrink factor so nothing aliases, centre-aligned, clamped at the edges).
This module designs that filter by mirroring swscale's ``initFilter`` integer arithmetic,
quantises it to fixed-point weights that sum to exactly 1 so flat colours stay exact (6-bit
for filters up to 48 taps, i.e. shrinks up to ~12x; 14-bit beyond), and caches it per (input
size, output size); the C side only applies it, with the GIL released, so the
canvas's tile threads run in parallel. The canvas paints a whole tile (black bars, Y, U, V)
with one call, :func:`paint_picture`: per-plane calls and numpy bar fills cost ~0.7-1 ms of a
~6 ms 16-tile composite on one thread. Why in C rather than OpenCV: matching swscale takes a
kernel that is ~11 taps wide at 2.67x, which no single OpenCV call applies (``INTER_AREA``
is a box, ``INTER_CUBIC`` does not widen when shrinking), and the OpenCV chain that
approximated it (``media._scale_cv``) cost more per tile than swscale itself.

Measured on a 2-vCPU machine shared with other jobs (load average ~2.5, so medians of
interleaved runs; absolute numbers move by 1.5x), 640x480 inputs on a 1280x720 canvas, 16 /
9 / 4 tiles (2.67x / 2x / 1.33x):

* luma PSNR of the whole canvas against FFmpeg's filter graph (``python -m bench.compositor``):
  59.8 / 63.9 / 63.7 dB (the OpenCV chain: 48.6 / 51.3 / 51.6); with 14-bit weights and int16
  intermediates it was 68.7 / 69.2 / 71.8 dB, and the 6-bit weights and 8-bit intermediate
  rows that cost ~10 dB (see ``_rows``) bought ~20% of the composite;
* compose rate against that graph, same run: 2.56 / 2.16 / 1.71x (medians of 6 runs,
  interleaved with 6 runs of the 14-bit code, which gave 2.11 / 1.74 / 1.51x in that period:
  FFmpeg's side slows more than ours under load, so absolute ratios move with it; single
  runs 2.15-2.82x at 16 tiles against 1.70-2.47x; the OpenCV chain: ~1.0 / 1.1 / 0.8x);
* one tile (Y, U, V, ``python -m bench.scale``): swscale on one thread took 1.9 / 1.3 /
  1.2x callbot's time at 16 / 9 / 4 tiles with the 14-bit code; 16 tiles through ``tile()``
  on one thread now take ~1.4 ms (best of 400) against ~1.7 ms for 6-bit vertical weights
  alone and ~2.1 ms for the 14-bit code.

Where a 16-tile composite's resampling goes on one thread (``perf``, share of all samples):
~22% the vertical pass (one pmaddubsw and one add per two taps and 16 pixels), ~19%
interleaving source row pairs for it, which waits on memory even with prefetching (the frames
are not in L2), ~21% the horizontal pass with its transposes, ~4% checking the filters on
every call; see ``_resample.c``.

The chroma planes get the same centre-aligned filter as luma. swscale places 4:2:0 chroma
left-aligned (co-sited with the even luma columns, as MPEG-2 and H.264 do by default), which
shifts chroma by a fraction of a chroma pixel horizontally relative to ours; the function
takes no siting argument, so this difference stays (~46 dB on chroma against swscale).

Enlarging on both axes is plain ``cv2.INTER_CUBIC``: nothing aliases, and it keeps ramps
monotonic. A plane of the same size is copied. If the extension is not built (a source
checkout without a compiler), every shrink falls back to the OpenCV chain, with one warning.
"""

from __future__ import annotations

import logging
from functools import cache, lru_cache
from types import ModuleType

import cv2
import numpy as np
import numpy.typing as npt

from . import _scale_cv
from ._yuv import Plane

__all__ = ["HAVE_RESAMPLER", "paint_picture", "resize_into"]

_resample: ModuleType | None
try:
    from . import _resample
except ImportError as exc:  # not built: the OpenCV chain takes over (see _fallback_warning)
    _resample = None
    _IMPORT_ERROR: ImportError | None = exc
else:
    _IMPORT_ERROR = None

HAVE_RESAMPLER = _resample is not None
"""Whether shrinking runs the C resampler (False: the slower OpenCV chain)."""

_log = logging.getLogger(__name__)

_ONE = 1 << 14  # the 1 of vertical filters longer than _SHORT_TAPS (summed in int32)
# Every other filter has 6-bit weights (1 is _SHORT_ONE), which the C side sums on bytes in
# int16 (pmaddubsw). Both mirror _resample.c's SHORT_TAPS and SHORT_ONE (a test checks).
_SHORT_TAPS = 48
_SHORT_ONE = 64
_SWS_C = int(0.6 * (1 << 24))  # swscale's default bicubic C (B = 0), in its 8.24 fixed point

_Filter = tuple[bytes, bytes, int]
_Planes = tuple[Plane, Plane, Plane]


def paint_picture(
    src: _Planes, cell: _Planes, x: int, y: int, w: int, h: int, cx: int, cy: int
) -> None:
    """Paint a yuv420p picture into a canvas cell: resized into its box, the rest black.

    ``cell`` are the cell's views of the canvas planes; the picture's luma box is ``w`` x ``h``
    at (``x``, ``y``) in ``cell[0]``, its chroma boxes ``w // 2`` x ``h // 2`` at (``cx``,
    ``cy``) in ``cell[1]`` and ``cell[2]``. When all three planes shrink this is one call into
    the C resampler (bars, Y, U and V under one GIL release), because at 16 tiles the
    per-plane Python calls and numpy bar fills cost ~15% of a composite; otherwise it is
    three :func:`resize_into` calls and numpy fills, with the same pixels.
    """
    cw, ch = w // 2, h // 2
    if _resample is not None:
        luma = _filter(*src[0].shape, h, w)
        chroma = _filter(*src[1].shape, ch, cw)
        if luma is not None and chroma is not None and src[1].shape == src[2].shape:
            _resample.tile(*src, *cell, x, y, w, h, cx, cy, luma, chroma)
            return
    for plane, value, (bx, by, bw, bh) in zip(
        cell, (16, 128, 128), ((x, y, w, h), (cx, cy, cw, ch), (cx, cy, cw, ch)), strict=True
    ):
        plane[:by] = value
        plane[by + bh :] = value
        plane[by : by + bh, :bx] = value
        plane[by : by + bh, bx + bw :] = value
    resize_into(src[0], cell[0][y : y + h, x : x + w])
    # Chroma: sharpen=False only matters on the OpenCV fallback, where skipping its final FIR
    # saves ~10% of a tile and half-resolution colour hides the softer passband.
    resize_into(src[1], cell[1][cy : cy + ch, cx : cx + cw], sharpen=False)
    resize_into(src[2], cell[2][cy : cy + ch, cx : cx + cw], sharpen=False)


@lru_cache(maxsize=64)
def _filter(
    sh: int, sw: int, dh: int, dw: int
) -> tuple[bytes, bytes, int, bytes, bytes, int] | None:
    """The C resampler's filter for an ``sh`` x ``sw`` -> ``dh`` x ``dw`` shrink, or None when
    :func:`resize_into` would not use the C resampler for it (enlarging, same size, empty)."""
    if dh == 0 or dw == 0 or (sh <= dh and sw <= dw):
        return None
    return (*_rows(sh, dh), *_columns(sw, dw))


def resize_into(src: Plane, dst: Plane, *, sharpen: bool = True) -> None:
    """Write ``src`` resized to ``dst.shape`` into ``dst`` (antialiased when shrinking).

    ``dst`` may be a view into a larger array; only the view is written. ``sharpen`` only
    matters for the OpenCV fallback (``False`` skips its final FIR there: softer, cheaper);
    the C resampler applies swscale's filter either way, since it costs the same.
    """
    dh, dw = dst.shape
    sh, sw = src.shape
    if dh == 0 or dw == 0:
        return
    if (sh, sw) == (dh, dw):
        np.copyto(dst, src)
        return
    if sh <= dh and sw <= dw:
        cv2.resize(src, (dw, dh), dst=dst, interpolation=cv2.INTER_CUBIC)
        return
    if _resample is None:
        _fallback_warning()
        _scale_cv.resize_into(src, dst, sharpen=sharpen)
        return
    ypos, yweights, ytaps = _rows(sh, dh)
    xstart, xweights, xpairs = _columns(sw, dw)
    if src.strides[1] != 1:
        src = np.ascontiguousarray(src)
    out = dst if dst.strides[1] == 1 else np.empty((dh, dw), np.uint8)
    _resample.resize(src, out, ypos, yweights, ytaps, xstart, xweights, xpairs)
    if out is not dst:
        np.copyto(dst, out)


@cache
def _fallback_warning() -> None:
    """Logs once per process that shrinking runs the OpenCV chain, and why."""
    _log.warning("media._resample is not available (%s): resizing with OpenCV", _IMPORT_ERROR)


@lru_cache(maxsize=64)
def _rows(n_in: int, n_out: int) -> _Filter:
    """The vertical filter for the C side: each output row's first source row (int32), its
    ``taps`` weights (int16) and ``taps``, the widest filter's width.

    Up to ``_SHORT_TAPS`` taps (shrinks up to ~12x) the weights are 6-bit, as the horizontal
    ones always are, which lets the C side multiply bytes directly, two taps per instruction
    (pmaddubsw), in both passes, with 8-bit intermediate rows: half the multiplies of the
    14-bit version and no widening of source rows. Against swscale that costs ~10 dB of luma
    PSNR (per tile at 2.67x ~68 -> ~58 dB; the target is 45). Longer filters keep 14-bit
    weights (padded past ``_SHORT_TAPS`` if they would fit under it), summed in int32.
    """
    matrix = _swscale_bicubic(n_in, n_out)
    weights = _quantise(matrix, _SHORT_ONE)
    first, taps = _support(weights)
    if taps > _SHORT_TAPS:
        weights = _quantise(matrix, _ONE)
        first, taps = _support(weights)
        taps = max(taps, _SHORT_TAPS + 1)
    starts = np.minimum(first, n_in - taps)
    return starts.astype(np.int32).tobytes(), _window(weights, starts, taps).tobytes(), taps


@lru_cache(maxsize=64)
def _columns(n_in: int, n_out: int) -> _Filter:
    """The horizontal filter for the C side: each output's first sample (int32, even), its
    ``2 * pairs`` 6-bit weights from there (int8, see ``_rows`` for why 6 bits) and
    ``pairs``, the widest output's.

    Both cover ``n_out`` rounded up to a multiple of 8 (the extra outputs are zero weights
    from sample 0): the C side computes 8 outputs side by side, so the weights are laid out
    per block of 8 outputs as [pair][output][2]. Starts are even because it multiplies whole
    sample pairs (see ``_resample.c``); an output whose first tap is odd gets a zero weight in
    front.
    """
    weights = _quantise(_swscale_bicubic(n_in, n_out), _SHORT_ONE)
    first, _ = _support(weights)
    last = n_in - 1 - (weights != 0)[:, ::-1].argmax(axis=1)
    starts = first & ~1
    pairs = int(((last - starts) // 2).max()) + 1
    padded = -(-n_out // 8) * 8
    starts = np.concatenate([starts, np.zeros(padded - n_out, dtype=starts.dtype)])
    window = np.zeros((padded, 2 * pairs), dtype=np.int8)
    window[:n_out] = _window(weights, starts[:n_out], 2 * pairs)
    layout = window.reshape(-1, 8, pairs, 2).transpose(0, 2, 1, 3)  # [block][pair][output][2]
    return starts.astype(np.int32).tobytes(), np.ascontiguousarray(layout).tobytes(), pairs


def _support(weights: npt.NDArray[np.int64]) -> tuple[npt.NDArray[np.int64], int]:
    """Each row's first non-zero column, and the widest run of columns any row needs."""
    nonzero = weights != 0
    n_in = weights.shape[1]
    first = nonzero.argmax(axis=1)
    last = n_in - 1 - nonzero[:, ::-1].argmax(axis=1)
    return first, int((last - first).max()) + 1


def _window(
    weights: npt.NDArray[np.int64], starts: npt.NDArray[np.int64], taps: int
) -> npt.NDArray[np.int16]:
    """Each row's ``taps`` weights from its start (zero past the last column)."""
    n_out, n_in = weights.shape
    window = np.zeros((n_out, taps), dtype=np.int16)
    rows = np.arange(n_out)
    for k in range(taps):
        cols = starts + k
        inside = cols < n_in
        window[rows[inside], k] = weights[rows[inside], cols[inside]]
    return window


def _quantise(matrix: npt.NDArray[np.int64], one: int) -> npt.NDArray[np.int64]:
    """Rows scaled to sum to exactly ``one``, each weight rounded so the running sum is
    rounded: no weight is off by more than one step and flat input stays flat exactly."""
    cumulative = np.cumsum(matrix, axis=1, dtype=np.float64)
    scaled = np.rint(cumulative * (one / cumulative[:, -1:]))
    weights: npt.NDArray[np.int64] = np.diff(scaled, axis=1, prepend=0).astype(np.int64)
    return weights


def _swscale_bicubic(n_in: int, n_out: int) -> npt.NDArray[np.int64]:
    """The (n_out, n_in) matrix of swscale's default bicubic filter, before normalising.

    It mirrors libswscale's ``initFilter`` for ``SWS_BICUBIC`` with centred samples (FFmpeg's
    8.24 fixed point, 16.16 step, C's truncating divisions), so the taps and their phase are
    swscale's own, then folds taps that fall outside the plane onto its edge samples, as
    swscale does. swscale also drops taps whose weights sum below 0.2%; keeping them changes
    nothing measurable (luma of the benchmark's frames: 68 dB against swscale in floating
    point, i.e. ±1 rounding).
    """
    matrix = np.zeros((n_out, n_in), dtype=np.int64)
    if n_in == n_out:
        np.fill_diagonal(matrix, 1)
        return matrix
    step = ((n_in << 16) + (n_out >> 1)) // n_out  # input pixels per output pixel, 16.16
    shrink = step > 1 << 16
    size = 1 + (4 * n_in + n_out - 1) // n_out if shrink else 5
    centres = (step - (1 << 16)) + 2 * step * np.arange(n_out, dtype=np.int64)  # 1/2^17 units
    starts = _cdiv(centres - (size - 2) * (1 << 16), np.int64(1 << 17))
    taps = starts[:, None] + np.arange(size, dtype=np.int64)[None, :]
    d = np.abs(taps * (1 << 17) - centres[:, None]) << 13  # distance, 2^30 = one input pixel
    if shrink:
        d = _cdiv(d * n_out, np.int64(n_in))  # stretched: 2^30 = one output pixel
    d = np.minimum(d, 1 << 31)  # outside the kernel either way; keeps d**3 inside int64
    c = _SWS_C
    dd = (d * d) >> 30
    ddd = (dd * d) >> 30
    inner = (12 * (1 << 24) - 6 * c) * ddd + (-18 * (1 << 24) + 6 * c) * dd + 6 * (1 << 54)
    outer = -6 * c * ddd + 30 * c * dd - 48 * c * d + 24 * c * (1 << 30)
    coeff = np.where(d < 1 << 30, inner, np.where(d < 1 << 31, outer, 0)) >> 24
    rows = np.repeat(np.arange(n_out), size)
    np.add.at(matrix, (rows, np.clip(taps, 0, n_in - 1).ravel()), coeff.ravel())
    return matrix


def _cdiv(a: npt.NDArray[np.int64], b: np.int64) -> npt.NDArray[np.int64]:
    """C's integer division (truncating towards zero), which swscale's positions rely on."""
    q: npt.NDArray[np.int64] = np.sign(a) * (np.abs(a) // b)
    return q
