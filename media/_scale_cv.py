"""The OpenCV fallback of :func:`media._scale.resize_into`, used when ``media._resample`` (the
C resampler) is not built: same contract, built from OpenCV calls only.

It was the compositor's only kernel before the C resampler, which applies swscale's filter
exactly and is both closer to FFmpeg (~66 vs ~48 dB) and cheaper; see ``media._scale``.

Why not one ``cv2.resize`` call: ``INTER_LINEAR``/``INTER_CUBIC`` do not widen their kernel
when shrinking, so fine detail folds into moiré; ``INTER_AREA``'s box kernel still leaks a
near-Nyquist grating at 10-15% and at non-integer factors takes a slow generic path. A
shrink by 2x or more is done in cheap steps instead:

1. per whole factor of two: a 3x3 box blur then an exact 2x2 average (``INTER_AREA`` at 2x,
   OpenCV's SIMD path). Together that is the [1 2 2 1]/6 decimator: it stays centred on pixel
   centres (``pyrDown`` would shift half a pixel, which alone costs ~10 dB against FFmpeg) and
   passes under 8% of anything that would fold below the new Nyquist. The bare 2x2 average
   passes up to 30%: a period-2.5 grating comes out of "2x average, then anything" as a
   strong in-band beat, which no later filter can tell from picture, so the blur stays;
2. ``INTER_LINEAR`` for the remaining factor r in [1, 2) (skipped when r is exactly 1);
3. a 3-tap (5 after two or more 2x steps) symmetric FIR (``sepFilter2D``) at the output size,
   writing into ``dst``.

The FIR is designed per (steps, r) so that the whole chain approximates a bicubic kernel (B=0,
C=0.6) stretched by the scale factor, the antialiased filter FFmpeg's swscale applies by
default: a least-squares fit of the chain's 1-D impulse responses to that kernel's, weighted by
an image model (AR(1) content, rho 0.9, plus white detail), with unit DC gain so flat colours
stay exact. It mostly restores the passband the blur and the linear step soften. It runs last
because that is where it is cheapest: the output has 0.56x the pixels of the half-size plane
at 2.67x, and 3 taps there match swscale better (47.0 vs 45.3 dB) than 5 taps before the
linear step, where the previous version ran it. Shrinks under 2x on some axis keep that older
order, a fitted FIR at the source size then ``INTER_LINEAR``, since nothing is decimated first.

Luma PSNR of the benchmark's whole 1280x720 canvas against FFmpeg's graph (16 / 9 / 4 tiles of
640x480, i.e. 2.67x / 2x / 1.33x): 48.6 / 51.3 / 51.6 dB; ``INTER_AREA`` gives 44.1 / 43.2 /
46.5 and ``INTER_LINEAR`` 34.8 / 43.2 / 45.8. Cheaper chains measured and rejected (tile PSNR
against swscale at 2.67x, decoded pattern frames): 2x average + fitted 7-tap FIR + linear
42.9 dB and fails the grating check; blur + 2x + ``INTER_CUBIC`` 43.5 dB; blur + linear at
2.67x + FIR 46.3 dB but leaks gratings (the blur alone passes 20-30% near Nyquist).

Enlarging on both axes is plain ``INTER_CUBIC``: nothing aliases. Scratch planes live in a
per-thread cache keyed by shape, so callers on several threads (several canvases, the canvas's
tile thread) never share one. OpenCV's thread pool is left as configured: 1 vs 2 threads made
no consistent difference at these sizes (``python -m bench.compositor --cv2-threads``), and
the setting is process-global, so this module never touches it. ``python -m bench.scale``
times the kernel alone.
"""

from __future__ import annotations

import math
import threading
from functools import lru_cache

import cv2
import numpy as np
import numpy.typing as npt

from ._yuv import Plane

__all__ = ["resize_into"]

_Kernel = npt.NDArray[np.float32]
_Matrix = npt.NDArray[np.float64]

_RHO = 0.9  # image model weighting the fit: AR(1) content with this neighbour correlation...
_WHITE = 0.3  # ...plus this much white detail (edges, texture, coding noise)
_MODEL_OUT = 48  # output samples of the 1-D model the FIR is fitted on
_MARGIN = 6  # model outputs near its ends (border effects) left out of the fit
_SWS_C = 0.6  # swscale's default bicubic: Mitchell-Netravali B=0, C=0.6
_SCRATCH_MAX = 32  # planes per thread before the cache starts over

_local = threading.local()


def resize_into(src: Plane, dst: Plane, *, sharpen: bool = True) -> None:
    """Write ``src`` resized to ``dst.shape`` into ``dst`` (antialiased when shrinking).

    ``dst`` may be a view into a larger array; only the view is written. ``sharpen=False``
    skips the FIR after a 2x step: still antialiased, but softer (at 2.67x ~46 instead of
    ~54 dB against swscale on chroma planes) and ~25% cheaper on small planes such as the
    chroma of a 16-tile grid. It changes nothing for shrinks under 2x, where the FIR is the
    antialiasing.
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
    levels = _levels(sw, sh, dw, dh)
    if levels == 0:  # under 2x on some axis: smooth at full size, then the linear step
        kx = _pre_fir(_ratio(sw, dw))
        ky = _pre_fir(_ratio(sh, dh))
        filtered = _scratch("pre", (sh, sw))
        cv2.sepFilter2D(src, -1, kx, ky, dst=filtered, borderType=cv2.BORDER_REPLICATE)
        cv2.resize(filtered, (dw, dh), dst=dst, interpolation=cv2.INTER_LINEAR)
        return
    for level in range(levels):
        h, w = src.shape
        h2, w2 = (h + 1) // 2, (w + 1) // 2
        if h % 2 or w % 2:  # repeat the last row/column: a 2x step needs even sizes
            even = _scratch(("even", level), (2 * h2, 2 * w2))
            cv2.copyMakeBorder(src, 0, h % 2, 0, w % 2, cv2.BORDER_REPLICATE, dst=even)
            src = even
        blurred = _scratch(("blur", level), (2 * h2, 2 * w2))
        cv2.blur(src, (3, 3), dst=blurred, borderType=cv2.BORDER_REPLICATE)
        src = dst if (h2, w2) == (dh, dw) and not sharpen else _scratch(("half", level), (h2, w2))
        cv2.resize(blurred, (w2, h2), dst=src, interpolation=cv2.INTER_AREA)
    if not sharpen:
        if src is not dst:
            cv2.resize(src, (dw, dh), dst=dst, interpolation=cv2.INTER_LINEAR)
        return
    mh, mw = src.shape
    kx = _post_fir(levels, _ratio(mw, dw))
    ky = _post_fir(levels, _ratio(mh, dh))
    if (mh, mw) != (dh, dw):
        resized = _scratch("linear", (dh, dw))
        cv2.resize(src, (dw, dh), dst=resized, interpolation=cv2.INTER_LINEAR)
        src = resized
    cv2.sepFilter2D(src, -1, kx, ky, dst=dst, borderType=cv2.BORDER_REPLICATE)


def _levels(sw: int, sh: int, dw: int, dh: int) -> int:
    """How many 2x steps fit while both axes stay at least the destination size."""
    levels = 0
    while sw >= 2 * dw and sh >= 2 * dh:
        sw = (sw + 1) // 2
        sh = (sh + 1) // 2
        levels += 1
    return levels


def _ratio(n_in: int, n_out: int) -> float:
    """Remaining shrink factor of one axis, rounded so few FIRs are designed (1.0: none)."""
    return max(1.0, round(n_in / n_out * _MODEL_OUT) / _MODEL_OUT)


def _scratch(key: object, shape: tuple[int, int]) -> Plane:
    cache: dict[tuple[object, tuple[int, int]], Plane] | None = getattr(_local, "cache", None)
    if cache is None:
        cache = _local.cache = {}
    plane = cache.get((key, shape))
    if plane is None:
        if len(cache) >= _SCRATCH_MAX:  # layouts change rarely; a stream of sizes must not pile up
            cache.clear()
        plane = cache[(key, shape)] = np.empty(shape, dtype=np.uint8)
    return plane


# ----------------------------------------------------------------------------- FIR design


def _swscale_bicubic(x: _Matrix) -> _Matrix:
    x = np.abs(x)
    c = _SWS_C
    inner = ((12 - 6 * c) * x**3 + (-18 + 6 * c) * x**2 + 6) / 6
    outer = c * (-(x**3) + 5 * x**2 - 8 * x + 4)
    return np.where(x < 1, inner, np.where(x < 2, outer, 0.0))


def _bicubic_matrix(n_in: int, n_out: int) -> _Matrix:
    """What swscale does: centre-aligned, kernel stretched by the shrink factor, clamped."""
    scale = n_in / n_out
    m = np.zeros((n_out, n_in))
    for j in range(n_out):
        centre = (j + 0.5) * scale - 0.5
        taps = np.arange(math.floor(centre - 2 * scale), math.ceil(centre + 2 * scale) + 1)
        offsets = np.asarray((taps - centre) / scale, dtype=np.float64)
        np.add.at(m[j], np.clip(taps, 0, n_in - 1), _swscale_bicubic(offsets))
        m[j] /= m[j].sum()
    return m


def _linear_matrix(n_in: int, n_out: int) -> _Matrix:
    """What ``cv2.resize(..., INTER_LINEAR)`` does along one axis."""
    m = np.zeros((n_out, n_in))
    for j in range(n_out):
        pos = (j + 0.5) * n_in / n_out - 0.5
        x = math.floor(pos)
        frac = pos - x
        if x < 0:
            x, frac = 0, 0.0
        if x >= n_in - 1:
            x, frac = n_in - 1, 0.0
        m[j, x] += 1 - frac
        if frac:
            m[j, x + 1] += frac
    return m


def _shift_matrix(n: int, k: int) -> _Matrix:
    """Picks sample i + k (clamped at the ends, like BORDER_REPLICATE)."""
    m = np.zeros((n, n))
    m[np.arange(n), np.clip(np.arange(n) + k, 0, n - 1)] = 1
    return m


def _decimate_matrix(n: int) -> _Matrix:
    """One 2x step along one axis: 3-tap box, then the 2x2 average (n even)."""
    blur = sum(_shift_matrix(n, k) for k in (-1, 0, 1)) / 3
    box = np.zeros((n // 2, n))
    rows = np.arange(n // 2)
    box[rows, 2 * rows] = box[rows, 2 * rows + 1] = 0.5
    result: _Matrix = box @ blur
    return result


@lru_cache(maxsize=64)
def _pre_fir(r: float) -> _Kernel:
    """The symmetric FIR for which FIR -> linear(r) best matches swscale's (no 2x step)."""
    if r == 1.0:
        return np.ones(1, dtype=np.float32)  # an axis that is not shrunk at all
    n_in = round(_MODEL_OUT * r)
    interp = _linear_matrix(n_in, _MODEL_OUT)
    basis = [interp @ _symmetric_taps(n_in, k) for k in range(max(2, math.ceil(1.5 * r)) + 1)]
    return _fit(basis, n_in)


@lru_cache(maxsize=64)
def _post_fir(levels: int, r: float) -> _Kernel:
    """The symmetric FIR for which 2x^levels -> linear(r) -> FIR best matches swscale's."""
    n_mid = round(_MODEL_OUT * r)
    n_in = n_mid << levels
    chain = np.eye(n_in)
    for level in range(levels):
        chain = _decimate_matrix(n_in >> level) @ chain
    if r != 1.0:
        chain = _linear_matrix(n_mid, _MODEL_OUT) @ chain
    half = 1 if levels == 1 else 2  # 3 taps after one 2x step; deeper droop wants 5
    basis = [_symmetric_taps(_MODEL_OUT, k) @ chain for k in range(half + 1)]
    return _fit(basis, n_in)


def _symmetric_taps(n: int, k: int) -> _Matrix:
    """Samples i - k plus i + k (just i for k = 0): one tap pair of a symmetric FIR."""
    return _shift_matrix(n, k) + _shift_matrix(n, -k) if k else np.eye(n)


def _fit(basis: list[_Matrix], n_in: int) -> _Kernel:
    """Taps (centre first in ``basis``) whose chain best matches swscale's bicubic, in the
    image model's least-squares sense, with unit DC gain so flat colours stay exact."""
    n_out = basis[0].shape[0]
    target = _bicubic_matrix(n_in, n_out)
    idx = np.arange(n_in)
    model = _RHO ** np.abs(idx[:, None] - idx[None, :]) + _WHITE * np.eye(n_in)
    weight = np.linalg.cholesky(model)
    keep = slice(_MARGIN, n_out - _MARGIN)
    a = np.stack([(m @ weight)[keep].ravel() for m in basis], axis=1)
    b = (target @ weight)[keep].ravel()
    # Unit DC gain: centre = 1 - 2 * sum(side taps), so fit the side taps only.
    side, *_ = np.linalg.lstsq(a[:, 1:] - 2 * a[:, :1], b - a[:, 0], rcond=None)
    kernel = np.concatenate([side[::-1], [1 - 2 * side.sum()], side])
    return kernel.astype(np.float32)
