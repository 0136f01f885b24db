"""Pure layout geometry for the compositor: grid, speaker, picture-in-picture and scenes.

Every coordinate and size is even so that yuv420p chroma planes (half resolution) line up
exactly with the luma plane when tiles are pasted. Layout functions take participant keys in
display order and return :class:`Placement`s in paint order (lowest ``z`` first); a key that
is not placed is not shown.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "Placement",
    "Rect",
    "Scene",
    "SceneElement",
    "fit",
    "grid",
    "grid_layout",
    "pip_layout",
    "scene_layout",
    "speaker_layout",
]


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


@dataclass(frozen=True, slots=True)
class Placement:
    """Where one participant's tile goes: its cell (content is aspect-fit inside) and depth."""

    key: str
    rect: Rect
    z: int = 0


@dataclass(frozen=True, slots=True)
class SceneElement:
    """One element of an explicit scene: participant ``key`` drawn in ``rect`` at depth ``z``."""

    key: str
    rect: Rect
    z: int = 0

    def __post_init__(self) -> None:
        r = self.rect
        if r.w <= 0 or r.h <= 0:
            raise ValueError(f"scene element {self.key!r} needs a positive size, got {r}")


@dataclass(frozen=True, slots=True)
class Scene:
    """An explicit canvas scene graph: elements with rectangles and z-order.

    Participants without an element are not drawn; elements whose participant is absent are
    skipped. Rectangles may overlap (higher ``z`` paints on top) and may extend past the
    canvas (they are clipped to it).
    """

    elements: tuple[SceneElement, ...]

    def __post_init__(self) -> None:
        keys = [e.key for e in self.elements]
        if len(set(keys)) != len(keys):
            raise ValueError(f"scene keys must be unique, got {keys}")


def _clip(rect: Rect, width: int, height: int) -> Rect | None:
    """``rect`` clipped to the canvas with even edges, or None if nothing is left."""
    x0 = max(0, rect.x + (rect.x & 1))
    y0 = max(0, rect.y + (rect.y & 1))
    x1 = min(width, rect.right) & ~1
    y1 = min(height, rect.bottom) & ~1
    if x1 - x0 < 2 or y1 - y0 < 2:
        return None
    return Rect(x0, y0, x1 - x0, y1 - y0)


def grid_layout(keys: Sequence[str], width: int, height: int) -> list[Placement]:
    """Everyone in a grid, in order."""
    return [Placement(k, r) for k, r in zip(keys, grid(len(keys), width, height), strict=True)]


def speaker_layout(
    keys: Sequence[str], speaker: str | None, width: int, height: int
) -> list[Placement]:
    """The speaker fills the top ~4/5; everyone else is a filmstrip along the bottom.

    The filmstrip keeps display order (minus the speaker); tiles are 16:9 at most and shrink
    to fit when there are many. With no speaker (or an unknown one) the first key is shown
    large. A lone participant fills the canvas.
    """
    if not keys:
        return []
    main = speaker if speaker is not None and speaker in keys else keys[0]
    others = [k for k in keys if k != main]
    if not others:
        return [Placement(main, Rect(0, 0, width & ~1, height & ~1))]
    strip_h = max(2, _even_floor(height / 5))
    main_rect = Rect(0, 0, width & ~1, _even_floor(height - strip_h))
    tile_w = min(_even_floor(strip_h * 16 / 9), _even_floor(width / len(others)))
    if tile_w < 2:
        return [Placement(main, main_rect)]
    total = tile_w * len(others)
    x0 = _even_floor((width - total) / 2)
    y0 = main_rect.bottom
    placements = [Placement(main, main_rect)]
    for i, key in enumerate(others):
        placements.append(Placement(key, Rect(x0 + i * tile_w, y0, tile_w, height - y0 & ~1)))
    return placements


def pip_layout(keys: Sequence[str], main: str | None, width: int, height: int) -> list[Placement]:
    """``main`` (default: the first key) fills the canvas; the others are insets on top.

    Insets are a quarter of the canvas size, stacked right to left along the bottom edge with
    a margin, then in a second row above when the bottom row is full.
    """
    if not keys:
        return []
    first = main if main is not None and main in keys else keys[0]
    placements = [Placement(first, Rect(0, 0, width & ~1, height & ~1))]
    inset_w, inset_h = _even_floor(width / 4), _even_floor(height / 4)
    margin = max(2, _even_floor(min(width, height) / 40))
    if inset_w < 2 or inset_h < 2:
        return placements
    per_row = max(1, (width - margin) // (inset_w + margin))
    for i, key in enumerate(k for k in keys if k != first):
        row, col = divmod(i, per_row)
        x = width - (col + 1) * (inset_w + margin)
        y = height - (row + 1) * (inset_h + margin)
        if y < 0:
            break  # no room left; further insets are not shown
        placements.append(Placement(key, Rect(x & ~1, y & ~1, inset_w, inset_h), z=1))
    return placements


def scene_layout(keys: Sequence[str], scene: Scene, width: int, height: int) -> list[Placement]:
    """The scene's elements for present keys, clipped to the canvas, in z order (stable)."""
    present = set(keys)
    placements = []
    for element in scene.elements:
        if element.key not in present:
            continue
        rect = _clip(element.rect, width, height)
        if rect is not None:
            placements.append(Placement(element.key, rect, element.z))
    placements.sort(key=lambda p: p.z)
    return placements
