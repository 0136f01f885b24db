"""Grid and letterbox geometry, checked exhaustively over many sizes (property-style)."""

from __future__ import annotations

import itertools
import math

import pytest

from media.layout import Rect, fit, grid

SIZES = [(64, 48), (320, 240), (640, 360), (1280, 720), (1920, 1080), (333, 777), (1001, 99)]


def test_grid_empty() -> None:
    assert grid(0, 1280, 720) == []


def test_grid_single_cell_is_whole_canvas() -> None:
    assert grid(1, 1280, 720) == [Rect(0, 0, 1280, 720)]


def test_grid_four_is_two_by_two() -> None:
    assert grid(4, 1280, 720) == [
        Rect(0, 0, 640, 360),
        Rect(640, 0, 640, 360),
        Rect(0, 360, 640, 360),
        Rect(640, 360, 640, 360),
    ]


def test_grid_three_uses_two_columns_two_rows() -> None:
    cells = grid(3, 1280, 720)
    assert [(c.x, c.y) for c in cells] == [(0, 0), (640, 0), (0, 360)]


@pytest.mark.parametrize(("width", "height"), SIZES)
def test_grid_properties(width: int, height: int) -> None:
    for n in range(1, 26):
        cells = grid(n, width, height)
        cols = math.ceil(math.sqrt(n))
        rows = math.ceil(n / cols)
        assert len(cells) == n
        canvas = Rect(0, 0, width, height)
        for cell in cells:
            assert canvas.contains(cell)
            assert cell.x % 2 == 0 and cell.y % 2 == 0
            assert cell.w % 2 == 0 and cell.h % 2 == 0
            assert cell.w > 0 and cell.h > 0
            # Even rounding costs at most two pixels per cell.
            assert abs(cell.w - width / cols) <= 2
            assert abs(cell.h - height / rows) <= 2
        for a, b in itertools.combinations(cells, 2):
            overlap_w = min(a.right, b.right) - max(a.x, b.x)
            overlap_h = min(a.bottom, b.bottom) - max(a.y, b.y)
            assert overlap_w <= 0 or overlap_h <= 0, (n, a, b)
        # Row-major order: rows fill left to right, then top to bottom.
        assert [(c.y, c.x) for c in cells] == sorted((c.y, c.x) for c in cells)
        assert len({c.y for c in cells}) == rows


def test_grid_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="n must be"):
        grid(-1, 100, 100)
    with pytest.raises(ValueError, match="canvas"):
        grid(2, 0, 100)


def test_fit_exact_and_letterbox() -> None:
    assert fit(640, 480, Rect(0, 0, 640, 480)) == Rect(0, 0, 640, 480)
    # 4:3 in a 16:9 cell: pillarbox, centred.
    assert fit(640, 480, Rect(0, 0, 1280, 720)) == Rect(160, 0, 960, 720)
    # 16:9 in a 4:3 cell: letterbox, centred.
    assert fit(1280, 720, Rect(100, 200, 640, 480)) == Rect(100, 200 + 60, 640, 360)
    # Upscaling is allowed.
    assert fit(160, 120, Rect(0, 0, 640, 480)) == Rect(0, 0, 640, 480)


def test_fit_properties_over_many_sizes() -> None:
    sources = [(w, h) for w in (2, 16, 160, 213, 320, 640, 1279, 1920) for h in (2, 9, 120, 479)]
    cells = [
        Rect(x, y, w, h)
        for x, y in ((0, 0), (2, 4), (3, 7), (640, 360))
        for w, h in ((2, 2), (10, 90), (213, 160), (426, 240), (640, 360), (999, 333))
    ]
    for (sw, sh), cell in itertools.product(sources, cells):
        r = fit(sw, sh, cell)
        assert cell.contains(r), (sw, sh, cell, r)
        assert r.x % 2 == 0 and r.y % 2 == 0 and r.w % 2 == 0 and r.h % 2 == 0
        assert r.w >= 0 and r.h >= 0
        # Fills one dimension (up to even rounding)...
        assert cell.w - r.w <= 3 or cell.h - r.h <= 3, (sw, sh, cell, r)
        # ...keeps the aspect ratio within rounding...
        if r.w >= 32 and r.h >= 32:
            assert abs(r.w / r.h - sw / sh) <= (sw / sh) * (2 / r.w + 2 / r.h) * 1.5 + 1e-9
        # ...and is centred within two pixels.
        assert abs((r.x - cell.x) - (cell.right - r.right)) <= 3
        assert abs((r.y - cell.y) - (cell.bottom - r.bottom)) <= 3


def test_fit_rejects_bad_source() -> None:
    with pytest.raises(ValueError, match="source size"):
        fit(0, 10, Rect(0, 0, 10, 10))
