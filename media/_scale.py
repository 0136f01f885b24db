"""Antialiased resizing of one 8-bit plane straight into a (possibly strided) destination view.

The compositor pastes by resizing each input plane directly into the view of the canvas plane
that its tile covers, so no intermediate frame is allocated or copied.
"""

from __future__ import annotations

import cv2

from ._yuv import Plane


def resize_into(src: Plane, dst: Plane) -> None:
    """Write ``src`` resized to ``dst.shape`` into ``dst`` (antialiased when shrinking)."""
    h, w = dst.shape
    if src.shape == dst.shape:
        dst[...] = src
        return
    cv2.resize(src, (w, h), dst=dst, interpolation=cv2.INTER_AREA)
