"""Canvas pixel tests: solid-colour inputs land exactly in their layout's picture rects.

Every input is one flat yuv420p colour, so any correct resize reproduces it exactly and a
whole composition can be compared pixel for pixel with a model painted from the layout and
:func:`~media.layout.fit` (black canvas, black bars in each cell, picture in paint order).
Hand-computed rects beside the model catch a layout or ``fit`` that is wrong in the same way
in both.
"""

from __future__ import annotations

from typing import Any

import av
import numpy as np
import numpy.typing as npt
import pytest

from media import canvas as canvas_module
from media._scale import paint_picture
from media.canvas import STALL_MARK_YUV, Canvas, Tile, placeholder_yuv
from media.layout import (
    Placement,
    Rect,
    Scene,
    SceneElement,
    fit,
    grid_layout,
    pip_layout,
    scene_layout,
    speaker_layout,
)

YUV = tuple[int, int, int]
Planes = tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8], npt.NDArray[np.uint8]]

BLACK: YUV = (16, 128, 128)
TEXT_Y = 200  # label and placeholder text are drawn at Y=235; inputs stay below this


def colour(i: int) -> YUV:
    """A distinct, clearly non-black, text-free colour per input index (0..19)."""
    return 40 + 8 * i, 60 + (i * 37) % 136, 196 - (i * 53) % 136


def solid(width: int, height: int, yuv: YUV) -> av.VideoFrame:
    """A new yuv420p frame of one flat colour."""
    luma = width * height
    buf = np.empty(luma * 3 // 2, dtype=np.uint8)
    buf[:luma] = yuv[0]
    buf[luma : luma * 5 // 4] = yuv[1]
    buf[luma * 5 // 4 :] = yuv[2]
    return av.VideoFrame.from_ndarray(buf.reshape(height * 3 // 2, width), format="yuv420p")


def planes(frame: av.VideoFrame) -> Planes:
    """Y, U and V planes of a decoded yuv420p frame (``to_ndarray``: Y rows, then U, then V)."""
    assert frame.format.name == "yuv420p"
    w, h = frame.width, frame.height
    arr = np.asarray(frame.to_ndarray(), dtype=np.uint8)
    assert arr.shape == (h * 3 // 2, w)
    chroma = arr[h:].reshape(-1)
    q = w * h // 4
    return (
        arr[:h],
        chroma[:q].reshape(h // 2, w // 2),
        chroma[q:].reshape(h // 2, w // 2),
    )


def pixel(p: Planes, x: int, y: int) -> YUV:
    """Y/U/V at luma position (x, y)."""
    return int(p[0][y, x]), int(p[1][y // 2, x // 2]), int(p[2][y // 2, x // 2])


def region_is(p: Planes, r: Rect, yuv: YUV) -> bool:
    """Whether every luma and chroma sample of ``r`` (even coords) is exactly ``yuv``."""
    assert r.x % 2 == 0 and r.y % 2 == 0 and r.w % 2 == 0 and r.h % 2 == 0, r
    return (
        bool((p[0][r.y : r.bottom, r.x : r.right] == yuv[0]).all())
        and bool((p[1][r.y // 2 : r.bottom // 2, r.x // 2 : r.right // 2] == yuv[1]).all())
        and bool((p[2][r.y // 2 : r.bottom // 2, r.x // 2 : r.right // 2] == yuv[2]).all())
    )


class Model:
    """The expected canvas, painted with plain numpy slicing from cells and source sizes."""

    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self.y = np.full((height, width), BLACK[0], dtype=np.uint8)
        self.u = np.full((height // 2, width // 2), BLACK[1], dtype=np.uint8)
        self.v = np.full((height // 2, width // 2), BLACK[2], dtype=np.uint8)

    def fill(self, r: Rect, yuv: YUV) -> None:
        self.y[r.y : r.bottom, r.x : r.right] = yuv[0]
        self.u[r.y // 2 : r.bottom // 2, r.x // 2 : r.right // 2] = yuv[1]
        self.v[r.y // 2 : r.bottom // 2, r.x // 2 : r.right // 2] = yuv[2]

    def tile(self, cell: Rect, src_w: int, src_h: int, yuv: YUV) -> Rect:
        """Black cell, then the aspect-fit picture; returns the picture rect."""
        self.fill(cell, BLACK)
        picture = fit(src_w, src_h, cell)
        self.fill(picture, yuv)
        return picture

    def matches(self, frame: av.VideoFrame) -> bool:
        if (frame.width, frame.height) != (self.width, self.height):
            return False
        got = planes(frame)
        return all(
            np.array_equal(g, want) for g, want in zip(got, (self.y, self.u, self.v), strict=True)
        )

    def assert_matches(self, frame: av.VideoFrame) -> None:
        assert (frame.width, frame.height) == (self.width, self.height)
        got = planes(frame)
        for name, g, want in zip("YUV", got, (self.y, self.u, self.v), strict=True):
            bad = np.argwhere(g != want)
            if len(bad):
                r, c = (int(v) for v in bad[0])
                raise AssertionError(
                    f"{name} plane: {len(bad)} samples differ, first at row {r} col {c}: "
                    f"got {g[r, c]}, want {want[r, c]}"
                )


def compose_placements(
    canvas: Canvas, placements: list[Placement], sizes: dict[str, tuple[int, int]]
) -> tuple[av.VideoFrame, Model, dict[str, Rect]]:
    """Compose solid inputs (colour by key order in ``sizes``) and paint the model alongside."""
    order = list(sizes)
    tiles = [
        Tile(p.key, p.rect, solid(*sizes[p.key], colour(order.index(p.key)))) for p in placements
    ]
    frame = canvas.compose(tiles)
    model = Model(canvas.width, canvas.height)
    pictures = {
        p.key: model.tile(p.rect, *sizes[p.key], colour(order.index(p.key))) for p in placements
    }
    return frame, model, pictures


# Input shapes: 4:3 and 11:9 pillarbox in wide cells, 21:9 and 16:9 letterbox in narrow ones.
SHAPES = [(640, 480), (840, 360), (1280, 720), (320, 240), (176, 144), (1680, 720)]
CANVASES = [(1280, 720), (960, 720), (642, 362)]  # 16:9, 4:3, and one not a multiple of 4


@pytest.mark.parametrize(("width", "height"), CANVASES)
@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 9, 16])
def test_grid_inputs_fill_their_picture_rects(n: int, width: int, height: int) -> None:
    keys = [f"p{i}" for i in range(n)]
    sizes = {k: SHAPES[i % len(SHAPES)] for i, k in enumerate(keys)}
    canvas = Canvas(width=width, height=height)
    placements = grid_layout(keys, width, height)
    frame, model, pictures = compose_placements(canvas, placements, sizes)
    model.assert_matches(frame)
    got = planes(frame)
    for p in placements:
        pic = pictures[p.key]
        assert p.rect.contains(pic)
        assert region_is(got, pic, colour(keys.index(p.key)))
        # Bars are black and only on one axis: the picture spans the cell the other way.
        assert pic.w >= p.rect.w - 2 or pic.h >= p.rect.h - 2
        if pic.x > p.rect.x:
            assert region_is(got, Rect(p.rect.x, p.rect.y, pic.x - p.rect.x, p.rect.h), BLACK)
        if pic.y > p.rect.y:
            assert region_is(got, Rect(p.rect.x, p.rect.y, p.rect.w, pic.y - p.rect.y), BLACK)


def test_grid_bars_by_hand() -> None:
    """Pillarbox (4:3 in 16:9 cells) and letterbox (21:9 in 4:3 cells), rects worked out."""
    canvas = Canvas(width=1280, height=720)
    keys = ["a", "b", "c", "d"]
    sizes = {k: (640, 480) for k in keys}
    frame, _, pictures = compose_placements(canvas, grid_layout(keys, 1280, 720), sizes)
    # 640x360 cells; 4:3 at height 360 is 480 wide, centred: 80 px black each side.
    assert pictures == {
        "a": Rect(80, 0, 480, 360),
        "b": Rect(720, 0, 480, 360),
        "c": Rect(80, 360, 480, 360),
        "d": Rect(720, 360, 480, 360),
    }
    got = planes(frame)
    assert region_is(got, Rect(0, 0, 80, 720), BLACK)
    assert region_is(got, Rect(560, 0, 160, 720), BLACK)  # two bars meet at the cell edge
    assert region_is(got, Rect(1200, 0, 80, 720), BLACK)
    assert pixel(got, 80, 0) == colour(0) and pixel(got, 78, 0) == BLACK
    assert pixel(got, 558, 358) == colour(0) and pixel(got, 560, 358) == BLACK
    assert pixel(got, 80, 360) == colour(2)

    canvas = Canvas(width=960, height=720)
    sizes = {k: (840, 360) for k in keys}  # 21:9
    frame, _, pictures = compose_placements(canvas, grid_layout(keys, 960, 720), sizes)
    # 480x360 cells; 21:9 at width 480 is 204 high (even), centred: 78 px above and below.
    assert pictures["a"] == Rect(0, 78, 480, 204)
    assert pictures["d"] == Rect(480, 360 + 78, 480, 204)
    got = planes(frame)
    assert region_is(got, Rect(0, 0, 960, 78), BLACK)
    assert region_is(got, Rect(0, 282, 960, 156), BLACK)
    assert pixel(got, 0, 78) == colour(0) and pixel(got, 0, 76) == BLACK
    assert pixel(got, 958, 640) == colour(3) and pixel(got, 958, 642) == BLACK


@pytest.mark.parametrize("n", [1, 3, 6])
def test_speaker_layout_pixels(n: int) -> None:
    keys = [f"s{i}" for i in range(n)]
    sizes = {k: SHAPES[i % len(SHAPES)] for i, k in enumerate(keys)}
    canvas = Canvas(width=1280, height=720)
    placements = speaker_layout(keys, keys[-1], 1280, 720)
    frame, model, pictures = compose_placements(canvas, placements, sizes)
    model.assert_matches(frame)
    main = placements[0]
    assert main.key == keys[-1]
    got = planes(frame)
    if n == 1:
        assert main.rect == Rect(0, 0, 1280, 720)
        assert pictures[main.key] == Rect(160, 0, 960, 720)  # 4:3 pillarboxed
        return
    # The main area is the top 4/5; the filmstrip sits below it and outside it.
    assert main.rect == Rect(0, 0, 1280, 576)
    for p in placements[1:]:
        assert p.rect.y >= main.rect.bottom
        assert region_is(got, pictures[p.key], colour(keys.index(p.key)))
    assert region_is(got, pictures[main.key], colour(n - 1))
    if n == 3:
        # s2 is 1280x720 in a 1280x576 cell: 1024x576 centred; strip tiles are 256x144.
        assert pictures["s2"] == Rect(128, 0, 1024, 576)
        assert [p.rect for p in placements[1:]] == [
            Rect(384, 576, 256, 144),
            Rect(640, 576, 256, 144),
        ]
        assert pictures["s0"] == Rect(384 + 32, 576, 192, 144)  # 4:3 pillarboxed
        assert pictures["s1"] == Rect(640, 576 + 18, 256, 108)  # 21:9 letterboxed (even)
        # Left and right of the strip is uncovered canvas: black.
        assert region_is(got, Rect(0, 576, 384, 144), BLACK)
        assert region_is(got, Rect(896, 576, 384, 144), BLACK)


def test_pip_layout_pixels() -> None:
    keys = ["main", "i1", "i2"]
    sizes = {"main": (640, 480), "i1": (1280, 720), "i2": (840, 360)}
    canvas = Canvas(width=1280, height=720)
    placements = pip_layout(keys, "main", 1280, 720)
    assert [p.key for p in placements] == keys
    frame, model, pictures = compose_placements(canvas, placements, sizes)
    model.assert_matches(frame)
    got = planes(frame)
    # Main is full-canvas (pillarboxed); insets 320x180 along the bottom right, on top of it.
    assert placements[0].rect == Rect(0, 0, 1280, 720)
    assert pictures["main"] == Rect(160, 0, 960, 720)
    margin = 18  # min(1280, 720) / 40, even
    i1, i2 = placements[1].rect, placements[2].rect
    assert i1 == Rect(1280 - 320 - margin, 720 - 180 - margin, 320, 180)
    assert i2 == Rect(1280 - 2 * (320 + margin), 720 - 180 - margin, 320, 180)
    assert placements[1].z > placements[0].z
    assert region_is(got, pictures["i1"], colour(1))  # covers main's picture and its bar
    assert region_is(got, pictures["i2"], colour(2))
    assert pictures["i2"] == Rect(i2.x, i2.y + 22, 320, 136)  # letterboxed inside the inset
    assert region_is(got, Rect(i2.x, i2.y, 320, 22), BLACK)  # the inset's own bar covers main
    assert pixel(got, i2.x, i2.y - 2) == colour(0)  # main shows just above the inset


def test_scene_z_order_overlap_and_clipping() -> None:
    scene = Scene(
        (
            SceneElement("top", Rect(200, 100, 400, 300), z=5),
            SceneElement("bottom", Rect(0, 0, 640, 360), z=0),
            SceneElement("middle", Rect(100, 50, 400, 300), z=2),
            SceneElement("offside", Rect(-160, 200, 320, 240), z=9),  # half off the left edge
            SceneElement("gone", Rect(700, 0, 100, 100), z=1),  # wholly off-canvas
            SceneElement("absent", Rect(0, 0, 100, 100), z=3),  # no such participant
        )
    )
    keys = ["bottom", "middle", "top", "offside", "gone"]
    sizes = {
        "bottom": (640, 360),
        "middle": (400, 300),
        "top": (400, 300),
        "offside": (320, 240),
        "gone": (100, 100),
    }
    canvas = Canvas(width=640, height=360)
    placements = scene_layout(keys, scene, 640, 360)
    assert [(p.key, p.z) for p in placements] == [
        ("bottom", 0),
        ("middle", 2),
        ("top", 5),
        ("offside", 9),
    ]
    # Clipped to the canvas: the off-left element keeps its on-canvas part only.
    assert placements[3].rect == Rect(0, 200, 160, 160)
    frame, model, pictures = compose_placements(canvas, placements, sizes)
    model.assert_matches(frame)
    got = planes(frame)
    # Higher z covers lower where they overlap; the lower shows where it does not.
    assert pixel(got, 300, 200) == colour(2)  # top over middle over bottom
    assert pixel(got, 150, 80) == colour(1)  # middle over bottom
    assert pixel(got, 620, 20) == colour(0)  # bottom alone
    assert pixel(got, 100, 300) == colour(3)  # offside over everything
    assert pictures["offside"] == Rect(0, 220, 160, 120)  # 4:3 fit into its clipped cell
    assert pixel(got, 100, 210) == BLACK  # offside's own bar, over "middle"


def test_scene_odd_rects_are_clipped_to_even_edges() -> None:
    scene = Scene((SceneElement("a", Rect(3, 5, 101, 51)),))
    (placement,) = scene_layout(["a"], scene, 640, 360)
    assert placement.rect == Rect(4, 6, 100, 50)  # shrunk inwards to even edges
    canvas = Canvas(width=640, height=360)
    frame, model, _ = compose_placements(canvas, [placement], {"a": (200, 100)})
    model.assert_matches(frame)


# -- labels ---------------------------------------------------------------------------------


def _bright(p: Planes, r: Rect) -> int:
    return int((p[0][r.y : r.bottom, r.x : r.right] > TEXT_Y).sum())


def test_label_is_drawn_bottom_left_of_the_picture() -> None:
    cell = Rect(0, 0, 640, 360)
    frame = solid(640, 480, (60, 100, 150))
    canvas = Canvas(width=640, height=360)
    pic = fit(640, 480, cell)
    labelled = planes(canvas.compose([Tile("k", cell, frame, label="Alice Example")]))
    plain = planes(Canvas(width=640, height=360).compose([Tile("k", cell, frame)]))
    assert _bright(plain, cell) == 0
    bh = (pic.h // 8) & ~1
    band = Rect(pic.x, pic.bottom - bh, pic.w // 2, bh)
    assert _bright(labelled, band) > 50
    # Nothing bright elsewhere: not above the band, not in the right half, not in the bars.
    assert _bright(labelled, cell) == _bright(labelled, band)
    # The picture above the label band is untouched.
    assert region_is(labelled, Rect(pic.x, pic.y, pic.w, pic.h - bh), (60, 100, 150))
    # Behind the text the picture is darkened and grey, so the caption reads on any picture.
    y = labelled[0][band.y : band.bottom, band.x : band.right]
    dim = y == 60 // 3
    assert dim.sum() > 500
    rows, cols = np.nonzero(dim)
    u = labelled[1][(band.y + rows) // 2, (band.x + cols) // 2]
    v = labelled[2][(band.y + rows) // 2, (band.x + cols) // 2]
    assert (u == 128).all() and (v == 128).all()
    assert ((y == 60) | dim | (y > TEXT_Y)).all()  # nothing else in the band


def test_no_label_on_a_tiny_tile() -> None:
    canvas = Canvas(width=640, height=360)
    cell = Rect(100, 100, 80, 50)  # picture 66x50: below the label's minimum height
    frame = canvas.compose([Tile("k", cell, solid(320, 240, (60, 100, 150)), label="Bob")])
    got = planes(frame)
    assert _bright(got, Rect(0, 0, 640, 360)) == 0
    model = Model(640, 360)
    model.tile(cell, 320, 240, (60, 100, 150))
    model.assert_matches(frame)


# -- placeholders ---------------------------------------------------------------------------


def test_placeholder_fills_the_cell_with_the_keys_colour_and_name() -> None:
    canvas = Canvas(width=1280, height=720)
    cells = grid_layout(["alice", "bob", "carol"], 1280, 720)
    tiles = [Tile(p.key, p.rect, None, label=p.key.title()) for p in cells]
    got = planes(canvas.compose(tiles))
    seen: set[YUV] = set()
    for p in cells:
        col = placeholder_yuv(p.key)
        seen.add(col)
        assert col != BLACK
        r = p.rect
        y = got[0][r.y : r.bottom, r.x : r.right]
        text = y == 235
        # Mostly the colour; the rest is the name in white, somewhere in the middle.
        assert (y == col[0]).mean() > 0.9
        assert ((y == col[0]) | text).all()
        rows, cols = np.nonzero(text)
        assert len(rows) > 100
        assert r.h * 0.25 < rows.mean() < r.h * 0.75 and r.w * 0.25 < cols.mean() < r.w * 0.75
        u = got[1][r.y // 2 : r.bottom // 2, r.x // 2 : r.right // 2]
        assert ((u == col[1]) | (u == 128)).all() and (u == col[1]).mean() > 0.9
        # Edges of the cell are the colour (the tile is not inset or shifted).
        assert pixel(got, r.x, r.y) == col and pixel(got, r.right - 1, r.bottom - 1) == col
    assert len(seen) == 3  # different keys, different colours
    assert placeholder_yuv("alice") == placeholder_yuv("alice")  # stable
    # The fourth cell is uncovered canvas.
    assert region_is(got, Rect(640, 360, 640, 360), BLACK)


def test_placeholder_follows_its_cell_when_the_layout_changes() -> None:
    canvas = Canvas(width=640, height=360)
    col = placeholder_yuv("erin")
    for cell in (Rect(0, 0, 640, 360), Rect(320, 0, 320, 360), Rect(0, 180, 160, 90)):
        got = planes(canvas.compose([Tile("erin", cell, None, label="Erin")]))
        assert pixel(got, cell.x, cell.y) == col
        assert pixel(got, cell.right - 2, cell.bottom - 2) == col
        outside = np.ones((360, 640), dtype=np.bool_)
        outside[cell.y : cell.bottom, cell.x : cell.right] = False
        assert (got[0][outside] == 16).all()
        rows, cols = np.nonzero(got[0] == 235)
        assert abs(cols.mean() - (cell.x + cell.w / 2)) < cell.w / 6  # name centred in it
        assert abs(rows.mean() - (cell.y + cell.h / 2)) < cell.h / 6


def test_placeholder_without_label_shows_the_key() -> None:
    canvas = Canvas(width=320, height=180)
    got = planes(canvas.compose([Tile("dave", Rect(0, 0, 320, 180))]))
    assert int((got[0] == 235).sum()) > 50


def test_placeholder_colours_differ_across_many_keys() -> None:
    keys = [f"user-{i}" for i in range(50)]
    colours = {placeholder_yuv(k) for k in keys}
    assert len(colours) >= 45  # a hash into 360 hues: a few collisions at most
    for y, u, v in colours:
        assert 16 <= y <= 235 and 16 <= u <= 240 and 16 <= v <= 240


# -- stall marker ---------------------------------------------------------------------------


def test_stalled_tile_keeps_its_picture_inside_a_red_border() -> None:
    cell = Rect(0, 0, 640, 360)
    col = (90, 160, 70)
    frame = solid(640, 480, col)
    canvas = Canvas(width=640, height=360)
    pic = fit(640, 480, cell)
    assert pic == Rect(80, 0, 480, 360)
    got = planes(canvas.compose([Tile("k", cell, frame, stalled=True)]))
    red = STALL_MARK_YUV
    t = 2  # the border is at least two pixels thick (even, for chroma)
    for ring in (
        Rect(pic.x, pic.y, pic.w, t),
        Rect(pic.x, pic.bottom - t, pic.w, t),
        Rect(pic.x, pic.y, t, pic.h),
        Rect(pic.right - t, pic.y, t, pic.h),
    ):
        assert region_is(got, ring, red), ring
    # Thin: the picture is kept inside it; the bars stay black.
    inner = Rect(pic.x + 20, pic.y + 20, pic.w - 40, pic.h - 40)
    assert region_is(got, inner, col)
    assert region_is(got, Rect(0, 0, 80, 360), BLACK)
    assert region_is(got, Rect(560, 0, 80, 360), BLACK)
    border_px = int((got[0][pic.y : pic.bottom, pic.x : pic.right] == red[0]).sum())
    assert border_px < pic.w * pic.h * 0.1
    # Not stalled: no red anywhere.
    fresh = planes(Canvas(width=640, height=360).compose([Tile("k", cell, frame)]))
    assert not (fresh[1] == red[1]).any()


# -- resolution changes and cell reuse ------------------------------------------------------


def test_resolution_change_and_cell_reuse(monkeypatch: pytest.MonkeyPatch) -> None:
    resizes = 0
    real_paint = paint_picture

    def counting(*args: Any) -> None:
        nonlocal resizes
        resizes += 1
        real_paint(*args)

    monkeypatch.setattr(canvas_module, "paint_picture", counting)
    canvas = Canvas(width=1280, height=720)
    cell_a, cell_b = Rect(0, 0, 640, 720), Rect(640, 0, 640, 720)
    b = solid(320, 240, colour(9))
    steps = [
        (640, 480, colour(1), Rect(0, 120, 640, 480)),  # 4:3 letterboxed in a 8:9 cell
        (320, 180, colour(2), Rect(0, 180, 640, 360)),  # Chrome downscales: 16:9
        (1280, 720, colour(3), Rect(0, 180, 640, 360)),  # and back up: same shape, new size
        (360, 640, colour(4), Rect(118, 0, 404, 720)),  # portrait: pillarboxed (even-rounded)
    ]
    previous: av.VideoFrame | None = None
    for w, h, col, want in steps:
        frame = solid(w, h, col)
        resizes = 0
        out = canvas.compose([Tile("a", cell_a, frame), Tile("b", cell_b, b)])
        # A new frame object is repainted (one picture); "b" is reused after the first.
        assert resizes == (1 if previous is not None else 2)
        model = Model(1280, 720)
        want_pic = model.tile(cell_a, w, h, col)
        model.tile(cell_b, 320, 240, colour(9))
        model.assert_matches(out)
        assert want_pic == want
        # Composing the same frame objects again copies both cells and gives the same picture.
        resizes = 0
        again = canvas.compose([Tile("a", cell_a, frame), Tile("b", cell_b, b)])
        assert resizes == 0
        model.assert_matches(again)
        previous = frame


def test_reuse_under_overlap_repaints_only_what_changed() -> None:
    """Overlapping scene tiles: a changed lower tile must not show through a reused upper one."""
    scene = Scene(
        (
            SceneElement("low", Rect(0, 0, 640, 360), z=0),
            SceneElement("high", Rect(320, 180, 320, 180), z=1),
        )
    )
    placements = scene_layout(["low", "high"], scene, 640, 360)
    canvas = Canvas(width=640, height=360)
    high = solid(320, 240, colour(5))
    for step, (lw, lh) in enumerate([(640, 480), (640, 360), (840, 360), (840, 360)]):
        low = solid(lw, lh, colour(step))
        frame = canvas.compose(
            [Tile("low", placements[0].rect, low), Tile("high", placements[1].rect, high)]
        )
        model = Model(640, 360)
        model.tile(placements[0].rect, lw, lh, colour(step))
        model.tile(placements[1].rect, 320, 240, colour(5))
        model.assert_matches(frame)
    # And the other way round: the upper tile changes, the lower is reused.
    low = solid(640, 360, colour(7))
    for step, (hw, hh) in enumerate([(320, 240), (640, 360), (100, 400)]):
        high = solid(hw, hh, colour(10 + step))
        frame = canvas.compose(
            [Tile("low", placements[0].rect, low), Tile("high", placements[1].rect, high)]
        )
        model = Model(640, 360)
        model.tile(placements[0].rect, 640, 360, colour(7))
        model.tile(placements[1].rect, hw, hh, colour(10 + step))
        model.assert_matches(frame)


def test_same_frame_is_repainted_when_stall_label_or_layout_change() -> None:
    canvas = Canvas(width=640, height=360)
    frame = solid(640, 480, colour(3))
    full, left = Rect(0, 0, 640, 360), Rect(0, 0, 320, 360)
    red = STALL_MARK_YUV

    def compose(tile: Tile) -> Planes:
        return planes(canvas.compose([tile]))

    got = compose(Tile("a", full, frame))
    assert pixel(got, 80, 0) == colour(3)
    got = compose(Tile("a", full, frame, stalled=True))  # the video stopped: border appears
    assert pixel(got, 80, 0) == red
    got = compose(Tile("a", full, frame, stalled=True))  # reused, border kept
    assert pixel(got, 80, 0) == red and pixel(got, 320, 180) == colour(3)
    got = compose(Tile("a", full, frame))  # video resumed with the same frame object
    assert pixel(got, 80, 0) == colour(3)
    assert _bright(got, full) == 0
    got = compose(Tile("a", full, frame, label="Anna"))
    assert _bright(got, full) > 0
    got = compose(Tile("a", full, frame))
    assert _bright(got, full) == 0
    got = compose(Tile("a", left, frame))  # the cell moved: repainted, old area cleared
    assert region_is(got, Rect(320, 0, 320, 360), BLACK)
    assert region_is(got, fit(640, 480, left), colour(3))
    got = compose(Tile("b", left, frame))  # another participant in the same cell
    assert region_is(got, fit(640, 480, left), colour(3))
    got = compose(Tile("b", left, None))  # and now without video: placeholder, not a copy
    assert pixel(got, 0, 0) == placeholder_yuv("b")


def test_odd_sized_and_rgb_inputs_with_resolution_changes() -> None:
    canvas = Canvas(width=640, height=360)
    cell = Rect(0, 0, 640, 360)
    odd = av.VideoFrame(321, 241, "yuv420p")
    for plane, value in zip(odd.planes, (90, 60, 200), strict=True):
        np.frombuffer(memoryview(plane), dtype=np.uint8)[...] = value
    got = planes(canvas.compose([Tile("a", cell, odd)]))
    pic = fit(321, 241, cell)
    assert pic == Rect(80, 0, 478, 360)
    assert region_is(got, pic, (90, 60, 200))
    assert region_is(got, Rect(0, 0, 80, 360), BLACK)
    assert region_is(got, Rect(558, 0, 82, 360), BLACK)
    # Other pixel formats go through a per-participant scaler that must follow size changes.
    seen: set[YUV] = set()
    for w, h in [(640, 480), (320, 180), (1280, 720), (200, 400)]:
        rgb = np.zeros((h, w, 3), dtype=np.uint8)
        rgb[...] = (200, 30, 60)
        got = planes(canvas.compose([Tile("a", cell, av.VideoFrame.from_ndarray(rgb, "rgb24"))]))
        pic = fit(w, h, cell)
        y0 = got[0][pic.y : pic.bottom, pic.x : pic.right]
        assert int(y0.min()) == int(y0.max())  # uniform over exactly the picture rect
        seen.add(pixel(got, pic.x, pic.y))
        bars = np.ones((360, 640), dtype=np.bool_)
        bars[pic.y : pic.bottom, pic.x : pic.right] = False
        assert (got[0][bars] == 16).all()
    assert len(seen) == 1  # the same colour whatever the size
    ((yy, uu, vv),) = seen
    assert yy < 100 and vv > 180 and uu < 128  # red-ish in BT.601


@pytest.mark.parametrize("tagged", ["yuvj420p", "yuv420p-full-range"])
def test_full_range_input_is_mapped_to_video_range(tagged: str) -> None:
    """JPEG-range input (MJPEG webcams, some H.264) must not paint out-of-range black/white."""
    w, h = 320, 240
    arr = np.empty((h * 3 // 2, w), dtype=np.uint8)
    arr[: h // 2] = 0  # full-range black
    arr[h // 2 : h] = 255  # full-range white
    arr[h:] = 128
    if tagged == "yuvj420p":
        frame = av.VideoFrame.from_ndarray(arr, format="yuvj420p")
    else:
        frame = av.VideoFrame.from_ndarray(arr, format="yuv420p")
        frame.color_range = 2  # AVCOL_RANGE_JPEG
    canvas = Canvas(width=320, height=240)
    got = planes(canvas.compose([Tile("a", Rect(0, 0, 320, 240), frame)]))
    assert abs(int(got[0][10, 10]) - 16) <= 1
    assert abs(int(got[0][230, 10]) - 235) <= 1
    assert abs(int(got[1][60, 80]) - 128) <= 1


def test_two_tile_threads_paint_exactly_what_one_does() -> None:
    """Disjoint cells go to two threads; the picture must not depend on it (labels, stalls,
    placeholders and cell reuse included), and close() leaves a working one-thread canvas."""
    cells = [p.rect for p in grid_layout([str(i) for i in range(9)], 1280, 720)]
    sets = [
        [solid(640 if i % 2 else 480, 480 if i % 3 else 360, colour(i + k)) for i in range(9)]
        for k in range(2)
    ]

    def tiles(k: int) -> list[Tile]:
        return [
            Tile(
                key=f"p{i}", rect=cells[i], frame=None if i == 4 else sets[k][i],
                label=f"p{i}", stalled=i == 7,
            )
            for i in range(9)
        ]  # fmt: skip

    one, two = Canvas(width=1280, height=720, threads=1), Canvas(width=1280, height=720, threads=2)
    try:
        for k in (0, 1, 1, 0):  # a repeat (k=1 twice) exercises cell reuse on both
            a, b = one.compose(tiles(k)), two.compose(tiles(k))
            assert np.array_equal(a.to_ndarray(), b.to_ndarray()), k
        assert two._pool is not None  # the second thread really painted
    finally:
        one.close()
        two.close()
    assert two._threads == 1
    again = two.compose(tiles(0)).to_ndarray()
    assert np.array_equal(
        again, Canvas(width=1280, height=720, threads=1).compose(tiles(0)).to_ndarray()
    )
