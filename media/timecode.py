"""A machine-readable stamp in the luma plane, for end-to-end frame tracking.

Why this shape: the stamp must survive lossy codecs (VP8/H.264 at a few hundred kbit/s) and
downscaling into a compositor tile, and random picture content must never read as a stamp.

* Geometry is relative to the picture: a band of ``ROWS`` x ``COLS`` black/white cells covering
  the top ``BAND`` fraction of the height and the full width. Any scaled copy is read the same
  way (crop to its rect, then use the same fractions).
* Cells are big (1/26 of the width) and written at video-legal extremes (16/235) so codecs keep
  their mean; the reader averages only the centre of each cell, so blurred edges do not matter.
* The first and last columns are a fixed marker pattern; its white and black cells also give
  the reader its local threshold, so level shifts from encoders or range conversion cancel out.
* 96 data bits: 32-bit frame number, 48-bit wall-clock milliseconds, CRC-16 over both (with a
  private xor-out so unrelated CRC'd data does not match). Markers + CRC make a false positive on
  arbitrary content about one in 2**24.
"""

from __future__ import annotations

import binascii
from dataclasses import dataclass

import av
import cv2
import numpy as np
import numpy.typing as npt

from .layout import Rect

__all__ = ["BAND", "COLS", "ROWS", "Stamp", "read_stamp", "stamp_luma"]

COLS = 26
"""Cell columns across the full width: 2 marker columns + 24 data columns."""
ROWS = 4
"""Cell rows in the band."""
BAND = 0.15
"""Fraction of the picture height (from the top) occupied by the stamp band."""

_BLACK = 16
_WHITE = 235
_DATA_COLS = COLS - 2
_NBITS = _DATA_COLS * ROWS  # 96
_FRAME_BITS = 32
_TIME_BITS = 48
_CRC_XOROUT = 0xCA11  # domain separation: plain CRC-16/CCITT data does not validate
_MIN_CONTRAST = 40.0  # white-black marker difference required, in luma units
_MARGIN = 0.15  # each marker must be this fraction of the contrast beyond the threshold

# Marker cells: True = white. Left column and right column are complementary.
_LEFT_MARKER = (True, False, False, True)
_RIGHT_MARKER = (False, True, True, False)

_Luma = npt.NDArray[np.uint8]

# Luma-first 8-bit planar formats whose plane 0 can be used directly.
_LUMA_FIRST = frozenset(
    {
        "yuv420p",
        "yuvj420p",
        "yuv422p",
        "yuvj422p",
        "yuv444p",
        "yuvj444p",
        "yuv440p",
        "yuvj440p",
        "yuv411p",
        "yuv410p",
        "nv12",
        "nv21",
        "gray",
    }
)


@dataclass(frozen=True, slots=True)
class Stamp:
    """What a stamped frame carries: its index at the source and when it was made.

    ``capture_time_ms`` is wall-clock (``time.time() * 1000``) so two processes on one machine
    can compute latency from it.
    """

    frame_number: int
    capture_time_ms: int

    def __post_init__(self) -> None:
        if not 0 <= self.frame_number < 1 << _FRAME_BITS:
            raise ValueError(f"frame_number must fit in 32 bits, got {self.frame_number}")
        if not 0 <= self.capture_time_ms < 1 << _TIME_BITS:
            raise ValueError(f"capture_time_ms must fit in 48 bits, got {self.capture_time_ms}")


def _crc(payload: bytes) -> int:
    return binascii.crc_hqx(payload, 0xFFFF) ^ _CRC_XOROUT


def _encode_bits(stamp: Stamp) -> npt.NDArray[np.bool_]:
    payload = ((stamp.frame_number << _TIME_BITS) | stamp.capture_time_ms).to_bytes(10, "big")
    word = payload + _crc(payload).to_bytes(2, "big")
    return np.unpackbits(np.frombuffer(word, dtype=np.uint8)).astype(np.bool_)


def _decode_bits(bits: npt.NDArray[np.bool_]) -> Stamp | None:
    word = np.packbits(bits).tobytes()
    payload, crc = word[:10], int.from_bytes(word[10:], "big")
    if _crc(payload) != crc:
        return None
    value = int.from_bytes(payload, "big")
    return Stamp(value >> _TIME_BITS, value & ((1 << _TIME_BITS) - 1))


def _cell_pattern(stamp: Stamp) -> npt.NDArray[np.bool_]:
    cells = np.empty((ROWS, COLS), dtype=np.bool_)
    cells[:, 0] = _LEFT_MARKER
    cells[:, -1] = _RIGHT_MARKER
    cells[:, 1:-1] = _encode_bits(stamp).reshape(ROWS, _DATA_COLS)
    return cells


def _edges(length: float, count: int) -> npt.NDArray[np.int64]:
    return np.round(np.arange(count + 1) * (length / count)).astype(np.int64)


def _check_plane(y: npt.NDArray[np.generic]) -> None:
    if y.ndim != 2 or y.dtype != np.uint8:
        raise ValueError(f"expected a 2-D uint8 luma plane, got shape {y.shape} dtype {y.dtype}")


def stamp_luma(y: npt.NDArray[np.uint8], stamp: Stamp) -> None:
    """Write ``stamp`` into the top band of luma plane ``y`` (H x W, uint8) in place.

    Only luma is touched: the caller should keep chroma neutral under the band (grey) if it
    wants the band to look clean, though reading does not depend on it.
    """
    _check_plane(y)
    height, width = y.shape
    if width < 2 * COLS or height * BAND < 2 * ROWS:
        raise ValueError(f"picture {width}x{height} is too small to carry a stamp")
    levels = np.where(_cell_pattern(stamp), _WHITE, _BLACK).astype(np.uint8)
    rows = np.diff(_edges(height * BAND, ROWS))
    cols = np.diff(_edges(width, COLS))
    band = np.repeat(np.repeat(levels, rows, axis=0), cols, axis=1)
    y[: band.shape[0], :] = band


def _luma_of(frame: av.VideoFrame) -> _Luma:
    if frame.format.name not in _LUMA_FIRST:
        frame = frame.reformat(format="gray")
    plane = frame.planes[0]
    data = np.frombuffer(memoryview(plane), dtype=np.uint8, count=plane.line_size * frame.height)
    return data.reshape(frame.height, plane.line_size)[:, : frame.width]


def _cell_means(y: _Luma) -> npt.NDArray[np.float64]:
    """Mean of the central half (in each direction) of every cell."""
    height, width = y.shape
    band_rows = min(height, int(np.ceil(height * BAND)) + 1)
    integral = cv2.integral(np.ascontiguousarray(y[:band_rows]), sdepth=cv2.CV_32S)

    def spans(length: float, count: int, limit: int) -> tuple[npt.NDArray[np.int64], ...]:
        size = length / count
        centre = (np.arange(count) + 0.5) * size
        lo = np.floor(centre - size / 4).astype(np.int64)
        hi = np.maximum(np.ceil(centre + size / 4).astype(np.int64), lo + 1)
        return np.clip(lo, 0, limit - 1), np.clip(hi, 1, limit)

    r0, r1 = spans(height * BAND, ROWS, band_rows)
    c0, c1 = spans(float(width), COLS, width)
    sums = (
        integral[np.ix_(r1, c1)]
        - integral[np.ix_(r0, c1)]
        - integral[np.ix_(r1, c0)]
        + integral[np.ix_(r0, c0)]
    )
    areas = np.outer(r1 - r0, c1 - c0)
    result: npt.NDArray[np.float64] = sums / areas
    return result


def read_stamp(
    image: av.VideoFrame | npt.NDArray[np.uint8],
    rect: tuple[int, int, int, int] | Rect | None = None,
) -> Stamp | None:
    """Read the stamp of a picture, or None if there is no valid one.

    ``image`` is a 2-D uint8 luma plane or a VideoFrame of any pixel format. ``rect`` =
    ``(x, y, w, h)`` (or a :class:`Rect`) selects where the stamped picture lies, e.g. a tile of a
    composite; the stamp band is then expected at the top of that rectangle.
    """
    if isinstance(image, av.VideoFrame):
        y = _luma_of(image)
    else:
        _check_plane(image)
        y = image
    if rect is not None:
        x0, y0, w, h = (rect.x, rect.y, rect.w, rect.h) if isinstance(rect, Rect) else rect
        if w <= 0 or h <= 0 or x0 < 0 or y0 < 0:
            return None
        y = y[y0 : y0 + h, x0 : x0 + w]
    height, width = y.shape
    if width < COLS or height * BAND < ROWS:
        return None
    means = _cell_means(y)
    markers = np.column_stack((means[:, 0], means[:, -1]))
    is_white = np.column_stack((_LEFT_MARKER, _RIGHT_MARKER))
    white = markers[is_white]
    black = markers[~is_white]
    contrast = float(white.mean() - black.mean())
    if contrast < _MIN_CONTRAST:
        return None
    threshold = float(white.mean() + black.mean()) / 2
    margin = _MARGIN * contrast
    if white.min() < threshold + margin or black.max() > threshold - margin:
        return None
    bits = (means[:, 1:-1] > threshold).reshape(-1)
    return _decode_bits(bits)
