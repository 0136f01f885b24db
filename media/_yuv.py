"""I420 (yuv420p) buffers as numpy arrays, and cheap conversion to and from ``av.VideoFrame``.

Private helpers shared by the pattern source and the compositor. ``VideoFrame.from_ndarray``
costs ~0.4 ms at 640x480; wrapping a contiguous I420 buffer costs ~5 us, which is what keeps
per-frame work small enough for the event loop.
"""

from __future__ import annotations

import av
import numpy as np
import numpy.typing as npt
from av.video.plane import VideoPlane

Plane = npt.NDArray[np.uint8]

BLACK_Y = 16
NEUTRAL_C = 128


def check_size(width: int, height: int) -> None:
    if width <= 0 or height <= 0 or width % 2 or height % 2:
        raise ValueError(f"yuv420p needs a positive even width and height, got {width}x{height}")


def alloc(width: int, height: int) -> npt.NDArray[np.uint8]:
    """A black I420 buffer (flat, contiguous: Y, then U, then V)."""
    buf = np.empty(width * height * 3 // 2, dtype=np.uint8)
    buf[: width * height] = BLACK_Y
    buf[width * height :] = NEUTRAL_C
    return buf


def views(buf: npt.NDArray[np.uint8], width: int, height: int) -> tuple[Plane, Plane, Plane]:
    """Writable 2-D views of the Y, U and V planes of a flat I420 buffer."""
    luma = width * height
    chroma = luma // 4
    y = buf[:luma].reshape(height, width)
    u = buf[luma : luma + chroma].reshape(height // 2, width // 2)
    v = buf[luma + chroma :].reshape(height // 2, width // 2)
    return y, u, v


def to_frame(buf: npt.NDArray[np.uint8], width: int, height: int) -> av.VideoFrame:
    """Wrap (zero-copy when possible) a flat I420 buffer; the caller must not reuse ``buf``."""
    if height % 4 == 0:
        return av.VideoFrame.from_numpy_buffer(
            buf.reshape(height * 3 // 2, width), format="yuv420p"
        )
    # from_numpy_buffer derives the height as rows // 6 * 4; copy into a fresh frame instead.
    frame = av.VideoFrame(width, height, "yuv420p")
    for plane, src in zip(frame.planes, views(buf, width, height), strict=True):
        size = plane.line_size * plane.height
        dst = np.frombuffer(memoryview(plane), dtype=np.uint8, count=size)
        dst.reshape(plane.height, plane.line_size)[:, : plane.width] = src
    return frame


def planes_of(frame: av.VideoFrame) -> tuple[Plane, Plane, Plane]:
    """Read-only-by-convention 2-D views of a yuv420p frame's planes (no copy).

    One ``ndarray`` constructor per plane rather than ``frombuffer``, ``reshape`` and a slice:
    a third of the time, and the compositor calls this for every tile of every composite.
    """
    y, u, v = frame.planes
    return _view(y), _view(u), _view(v)


def _view(plane: VideoPlane) -> Plane:
    buf = memoryview(plane)
    return np.ndarray((plane.height, plane.width), np.uint8, buf, 0, (plane.line_size, 1))
