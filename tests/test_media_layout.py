"""Grid and letterbox geometry, checked exhaustively over many sizes (property-style)."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from media.layout import (
    Placement,
    Rect,
    Scene,
    SceneElement,
    fit,
    grid,
    grid_layout,
    pip_layout,
    scene_layout,
    speaker_layout,
)

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


# -- speaker, pip and scene layouts ---------------------------------------------------------

LAYOUT_SIZES = [*SIZES, (1280, 1080), (720, 1280), (100, 40), (40, 100), (16, 10)]


def _assert_even_inside(rect: Rect, width: int, height: int) -> None:
    assert rect.x % 2 == 0 and rect.y % 2 == 0 and rect.w % 2 == 0 and rect.h % 2 == 0, rect
    assert rect.w >= 2 and rect.h >= 2, rect
    assert Rect(0, 0, width, height).contains(rect), (rect, width, height)


def _overlap(a: Rect, b: Rect) -> bool:
    return min(a.right, b.right) > max(a.x, b.x) and min(a.bottom, b.bottom) > max(a.y, b.y)


def test_grid_layout_keeps_key_order() -> None:
    keys = ["d", "a", "c", "b", "e"]
    placements = grid_layout(keys, 1280, 720)
    assert [p.key for p in placements] == keys
    assert [p.rect for p in placements] == grid(5, 1280, 720)
    assert {p.z for p in placements} == {0}


@pytest.mark.parametrize(("width", "height"), LAYOUT_SIZES)
def test_speaker_layout_properties(width: int, height: int) -> None:
    for n in range(1, 14):
        keys = [f"k{i}" for i in range(n)]
        for speaker in (None, keys[-1], keys[n // 2], "not-here"):
            placements = speaker_layout(keys, speaker, width, height)
            main = placements[0]
            want_main = speaker if speaker in keys else keys[0]
            assert main.key == want_main
            _assert_even_inside(main.rect, width, height)
            strip = placements[1:]
            # The others in display order, minus the speaker (all of them unless too narrow).
            others = [k for k in keys if k != want_main]
            assert [p.key for p in strip] == others[: len(strip)]
            if width >= 2 * len(others) + 2:
                assert len(strip) == len(others), (width, height, n)
            if n == 1:
                assert main.rect == Rect(0, 0, width & ~1, height & ~1)
                continue
            # The main area spans the width; the strip is below it, inside the canvas.
            assert main.rect.w == width & ~1 and main.rect.y == 0
            assert main.rect.h >= height // 2, (width, height, main.rect)
            for p in strip:
                _assert_even_inside(p.rect, width, height)
                assert not _overlap(p.rect, main.rect), (p.rect, main.rect)
                assert p.rect.y == main.rect.bottom
                assert p.rect.w <= p.rect.h * 16 / 9 + 2  # 16:9 at most
            for a, b in itertools.combinations(strip, 2):
                assert not _overlap(a.rect, b.rect), (a, b)
            if strip:  # centred
                left = strip[0].rect.x
                right = (width & ~1) - strip[-1].rect.right
                assert abs(left - right) <= 2, (width, height, n, left, right)


def test_speaker_layout_by_hand() -> None:
    assert speaker_layout([], None, 1280, 720) == []
    placements = speaker_layout(["a", "b", "c"], "b", 1280, 720)
    assert placements == [
        Placement("b", Rect(0, 0, 1280, 576)),
        Placement("a", Rect(384, 576, 256, 144)),
        Placement("c", Rect(640, 576, 256, 144)),
    ]
    # Many participants: the filmstrip tiles narrow to fit the width.
    many = speaker_layout([f"k{i}" for i in range(11)], None, 1280, 720)
    assert [p.rect.w for p in many[1:]] == [128] * 10
    assert many[1].rect.x == 0 and many[-1].rect.right == 1280


@pytest.mark.parametrize(("width", "height"), LAYOUT_SIZES)
def test_pip_layout_properties(width: int, height: int) -> None:
    for n in range(1, 14):
        keys = [f"k{i}" for i in range(n)]
        for main in (None, keys[-1], "not-here"):
            placements = pip_layout(keys, main, width, height)
            first = main if main in keys else keys[0]
            assert placements[0] == Placement(first, Rect(0, 0, width & ~1, height & ~1), 0)
            insets = placements[1:]
            assert [p.key for p in insets] == [k for k in keys if k != first][: len(insets)]
            for p in insets:
                _assert_even_inside(p.rect, width, height)
                assert p.z > placements[0].z  # on top of the main picture
                assert p.rect.w <= width // 4 and p.rect.h <= height // 4
            for a, b in itertools.combinations(insets, 2):
                assert not _overlap(a.rect, b.rect), (a, b)
            if width >= 40 and height >= 40:
                assert len(insets) == min(n - 1, 3 * 3), (width, height, n, insets)


def test_pip_layout_by_hand() -> None:
    assert pip_layout([], None, 1280, 720) == []
    placements = pip_layout(["a", "b", "c"], "c", 1280, 720)
    assert placements == [
        Placement("c", Rect(0, 0, 1280, 720), 0),
        Placement("a", Rect(1280 - 338, 720 - 198, 320, 180), 1),
        Placement("b", Rect(1280 - 676, 720 - 198, 320, 180), 1),
    ]


def test_scene_layout_clips_and_orders_by_z() -> None:
    rng = random.Random(1234)
    for _ in range(300):
        width = rng.randrange(2, 400, 2)
        height = rng.randrange(2, 400, 2)
        elements = tuple(
            SceneElement(
                f"e{i}",
                Rect(
                    rng.randint(-300, 500),
                    rng.randint(-300, 500),
                    rng.randint(1, 400),
                    rng.randint(1, 400),
                ),
                z=rng.randint(-3, 3),
            )
            for i in range(rng.randint(0, 8))
        )
        scene = Scene(elements)
        keys = [e.key for e in elements if rng.random() < 0.8]
        placements = scene_layout(keys, scene, width, height)
        by_key = {e.key: e for e in elements}
        # Paint order: z ascending, scene order among equal z.
        order = [p.key for p in placements]
        assert [p.z for p in placements] == sorted(p.z for p in placements)
        for a, b in itertools.pairwise(placements):
            if a.z == b.z:
                assert elements.index(by_key[a.key]) < elements.index(by_key[b.key])
        for key in keys:
            e = by_key[key]
            # The visible part of the element, shrunk inwards to even edges.
            x0 = max(0, e.rect.x + e.rect.x % 2)
            y0 = max(0, e.rect.y + e.rect.y % 2)
            x1 = min(width, e.rect.right) // 2 * 2
            y1 = min(height, e.rect.bottom) // 2 * 2
            if x1 - x0 >= 2 and y1 - y0 >= 2:
                (p,) = (p for p in placements if p.key == key)
                assert p.rect == Rect(x0, y0, x1 - x0, y1 - y0)
                assert p.z == e.z
                _assert_even_inside(p.rect, width, height)
                assert e.rect.contains(p.rect)
            else:
                assert key not in order
        assert set(order) <= set(keys)


def test_scene_validation() -> None:
    with pytest.raises(ValueError, match="unique"):
        Scene((SceneElement("a", Rect(0, 0, 2, 2)), SceneElement("a", Rect(2, 2, 2, 2))))
    with pytest.raises(ValueError, match="positive size"):
        SceneElement("a", Rect(0, 0, 0, 10))
    scene = Scene((SceneElement("a", Rect(-10, -10, 5, 5)), SceneElement("b", Rect(0, 0, 1, 1))))
    assert scene_layout(["a", "b"], scene, 100, 100) == []  # off-canvas, or under 2x2
