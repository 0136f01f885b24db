"""Pure grid geometry for the compositor.

Every coordinate and size is even so that yuv420p chroma planes (half resolution) line up
exactly with the luma plane when tiles are pasted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["Rect", "fit", "grid"]


@dataclass(frozen=True, slots=True)
class Rect:
    """An axis-aligned pixel rectangle; ``(x, y)`` is the top-left corner."""

    x: int
    y: int
    w: int
    h: int

    @property
    def right(self) -> int:
        return self.x + self.w

    @property
    def bottom(self) -> int:
        return self.y + self.h

    def contains(self, other: Rect) -> bool:
        """True if ``other`` lies entirely inside this rectangle."""
        return (
            other.x >= self.x
            and other.y >= self.y
            and other.right <= self.right
            and other.bottom <= self.bottom
        )


def _even_floor(value: float) -> int:
    return math.floor(value / 2) * 2


def grid(n: int, width: int, height: int) -> list[Rect]:
    """Split a ``width`` x ``height`` canvas into ``n`` cells, row-major.

    cols = ceil(sqrt(n)), rows = ceil(n / cols). Cell edges are placed at even positions of the
    ideal fractional grid, so cells tile the canvas without gaps (up to the even-rounded edge).
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if width <= 0 or height <= 0:
        raise ValueError(f"canvas must be positive, got {width}x{height}")
    if n == 0:
        return []
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    xs = [_even_floor(width * c / cols) for c in range(cols + 1)]
    ys = [_even_floor(height * r / rows) for r in range(rows + 1)]
    cells: list[Rect] = []
    for i in range(n):
        r, c = divmod(i, cols)
        cells.append(Rect(xs[c], ys[r], xs[c + 1] - xs[c], ys[r + 1] - ys[r]))
    return cells


def fit(src_w: int, src_h: int, cell: Rect) -> Rect:
    """Largest rectangle with the source's aspect ratio, centred in ``cell`` (letterbox).

    Position and size are even so chroma planes line up; the result never leaves the cell, even
    when the cell itself has odd coordinates (it then shrinks by at most one pixel per side).
    """
    if src_w <= 0 or src_h <= 0:
        raise ValueError(f"source size must be positive, got {src_w}x{src_h}")
    if cell.w < 0 or cell.h < 0:
        raise ValueError(f"cell size must be >= 0, got {cell.w}x{cell.h}")
    x0 = -_even_floor(-cell.x)  # round up to even
    y0 = -_even_floor(-cell.y)
    avail_w = max(0, _even_floor(cell.right - x0))
    avail_h = max(0, _even_floor(cell.bottom - y0))
    scale = min(avail_w / src_w, avail_h / src_h)
    w = min(_even_floor(src_w * scale + 1e-9), avail_w)
    h = min(_even_floor(src_h * scale + 1e-9), avail_h)
    return Rect(x0 + _even_floor((avail_w - w) / 2), y0 + _even_floor((avail_h - h) / 2), w, h)
