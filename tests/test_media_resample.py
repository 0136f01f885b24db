"""media._resample, the C resampler: same bytes on every code path, safe on any plane shape.

The AVX2 path and the portable path must agree bit for bit (the portable one is what a
machine without AVX2 runs, and what these tests check the AVX2 one against), on odd sizes,
1-pixel planes, both vertical arithmetic modes (short filters: 6-bit weights on bytes in
int16, long ones: 14-bit weights in int32), strided destinations and from several threads at
once.
"""

from __future__ import annotations

import threading

import numpy as np
import numpy.typing as npt
import pytest

from media import _resample
from media._scale import _SHORT_ONE, _SHORT_TAPS, _columns, _rows

Plane = npt.NDArray[np.uint8]

SHAPES = [  # (src w, h), (dst w, h)
    ((640, 480), (240, 180)),  # 16 tiles: 11 vertical taps
    ((640, 480), (480, 360)),
    ((320, 240), (120, 90)),
    ((641, 481), (121, 91)),
    ((639, 479), (319, 239)),
    ((1920, 1080), (40, 30)),  # 36x: over 48 vertical taps, the exact int32 mode
    ((1920, 1080), (240, 136)),
    ((640, 480), (640, 120)),  # one axis kept
    ((320, 180), (404, 90)),  # one axis enlarged
    ((7, 5), (3, 2)),
    ((5, 1), (2, 1)),  # 1-pixel-high planes
    ((1, 7), (1, 3)),  # 1-pixel-wide planes
    ((33, 65), (1, 1)),  # down to one pixel
    ((2, 2), (1, 1)),
    ((100, 3), (17, 2)),
]


def run(src: Plane, dst: Plane, *, simd: bool = True) -> None:
    sh, sw = src.shape
    dh, dw = dst.shape
    _resample.resize(src, dst, *_rows(sh, dh), *_columns(sw, dw), simd=simd)


def reference(src: Plane, dh: int, dw: int) -> Plane:
    """The documented arithmetic (_resample.c's header) on the same filters, in numpy."""
    sh, sw = src.shape
    pos = np.frombuffer(_rows(sh, dh)[0], np.int32)
    _, yw_b, taps = _rows(sh, dh)
    wy = np.frombuffer(yw_b, np.int16).reshape(dh, taps)
    rows = np.zeros((dh, sh), np.int64)
    for i in range(dh):
        rows[i, pos[i] : pos[i] + taps] = wy[i]
    shift = 6 if taps <= _SHORT_TAPS else 14  # the weights' 1: _SHORT_ONE or 1 << 14
    mid = np.clip((rows @ src.astype(np.int64) + (1 << (shift - 1))) >> shift, 0, 255)

    start_b, w_b, pairs = _columns(sw, dw)
    starts = np.frombuffer(start_b, np.int32)
    assert len(starts) % 8 == 0 and not (starts % 2).any()
    blocks = np.frombuffer(w_b, np.int8).reshape(len(starts) // 8, pairs, 8, 2)
    assert not blocks.transpose(0, 2, 1, 3).reshape(-1, 2 * pairs)[dw:].any()
    cols = np.zeros((dw, sw), np.int64)
    for i in range(dw):
        g, k = divmod(i, 8)
        taps_x = blocks[g, :, k, :].ravel()
        at = starts[i] + np.arange(2 * pairs)
        inside = at < sw
        cols[i, at[inside]] = taps_x[inside]
        assert not taps_x[~inside].any()
    assert (cols.sum(axis=1) == _SHORT_ONE).all() and (rows.sum(axis=1) == 1 << shift).all()
    return np.clip((mid @ cols.T + 32) >> 6, 0, 255).astype(np.uint8)


def float_reference(src: Plane, dh: int, dw: int) -> npt.NDArray[np.float64]:
    """The same filters in floating point: no rounding, only the intermediate rows clamped."""
    sh, sw = src.shape
    pos = np.frombuffer(_rows(sh, dh)[0], np.int32)
    _, yw_b, taps = _rows(sh, dh)
    wy = np.frombuffer(yw_b, np.int16).reshape(dh, taps)
    rows = np.zeros((dh, sh))
    for i in range(dh):
        rows[i, pos[i] : pos[i] + taps] = wy[i]
    start_b, w_b, pairs = _columns(sw, dw)
    starts = np.frombuffer(start_b, np.int32)
    blocks = np.frombuffer(w_b, np.int8).reshape(len(starts) // 8, pairs, 8, 2)
    cols = np.zeros((dw, sw))
    for i in range(dw):
        g, k = divmod(i, 8)
        at = starts[i] + np.arange(2 * pairs)
        cols[i, at[at < sw]] = blocks[g, :, k, :].ravel()[at < sw]
    rows /= rows.sum(axis=1, keepdims=True)
    cols /= cols.sum(axis=1, keepdims=True)
    return np.clip(rows @ src.astype(np.float64), 0, 255) @ cols.T


def noise(w: int, h: int, seed: int = 0) -> Plane:
    return np.random.default_rng(seed).integers(0, 256, (h, w), dtype=np.uint8)


@pytest.mark.parametrize(("src_wh", "dst_wh"), SHAPES)
def test_simd_and_portable_paths_give_the_same_bytes(
    src_wh: tuple[int, int], dst_wh: tuple[int, int]
) -> None:
    src = noise(*src_wh)
    fast = np.zeros((dst_wh[1], dst_wh[0]), np.uint8)
    portable = np.zeros_like(fast)
    run(src, fast)
    run(src, portable, simd=False)
    assert (fast == portable).all()


@pytest.mark.parametrize(("src_wh", "dst_wh"), SHAPES)
@pytest.mark.parametrize("simd", [True, False])
def test_is_its_documented_arithmetic_and_clamps(
    src_wh: tuple[int, int], dst_wh: tuple[int, int], simd: bool
) -> None:
    # Hard 0/255 edges overshoot (the bicubic's negative lobes): out of range must clamp,
    # never wrap round, in the 8-bit intermediate rows too.
    src = np.where(noise(*src_wh) > 127, 255, 0).astype(np.uint8)
    out = np.zeros((dst_wh[1], dst_wh[0]), np.uint8)
    run(src, out, simd=simd)
    assert (out == reference(src, *out.shape)).all()


@pytest.mark.parametrize(("src_wh", "dst_wh"), SHAPES)
def test_stays_within_two_levels_of_its_filters_in_floating_point(
    src_wh: tuple[int, int], dst_wh: tuple[int, int]
) -> None:
    # Two roundings (the 8-bit intermediate rows, then the output), the first spread by the
    # horizontal filter's absolute weights (<= 1.2 of half a level); on natural pictures the
    # error is far smaller.
    src = noise(*src_wh, seed=5)
    out = np.zeros((dst_wh[1], dst_wh[0]), np.uint8)
    run(src, out)
    expected = np.clip(float_reference(src, *out.shape), 0, 255)
    assert np.abs(out - expected).max() <= 2


@pytest.mark.parametrize(("src_wh", "dst_wh"), SHAPES)
@pytest.mark.parametrize("simd", [True, False])
def test_flat_colours_are_exact(
    src_wh: tuple[int, int], dst_wh: tuple[int, int], simd: bool
) -> None:
    for value in range(256):
        src = np.full((src_wh[1], src_wh[0]), value, np.uint8)
        out = np.zeros((dst_wh[1], dst_wh[0]), np.uint8)
        run(src, out, simd=simd)
        assert (out == value).all(), (value, np.unique(out))


@pytest.mark.parametrize("simd", [True, False])
def test_writes_a_strided_view_and_nothing_else(simd: bool) -> None:
    src = noise(641, 481, seed=2)
    expected = np.zeros((91, 121), np.uint8)
    run(src, expected, simd=simd)
    canvas = np.full((200, 300), 7, np.uint8)
    view = canvas[50:141, 33:154]
    run(src, view, simd=simd)
    assert (view == expected).all()
    canvas[50:141, 33:154] = 7
    assert (canvas == 7).all()
    upside_down = np.zeros((91, 121), np.uint8)
    run(np.ascontiguousarray(src[::-1]), upside_down, simd=simd)
    flipped = np.zeros((91, 121), np.uint8)
    run(src[::-1], flipped[::-1], simd=simd)  # negative row strides on both sides
    assert (flipped[::-1] == upside_down).all()


def test_two_threads_at_once_get_the_same_pixels() -> None:
    # The GIL is released while resampling, so these really run together.
    sources = [noise(1280, 720, seed=s) for s in range(2)]
    expected = []
    for src in sources:
        out = np.zeros((180, 320), np.uint8)
        run(src, out)
        expected.append(out)
    errors: list[int] = []
    start = threading.Barrier(2)

    def work(i: int) -> None:
        start.wait()
        for _ in range(40):
            out = np.zeros((180, 320), np.uint8)
            run(sources[i], out)
            if not (out == expected[i]).all():
                errors.append(i)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    assert not errors


def test_python_designs_filters_for_the_arithmetic_the_c_side_applies() -> None:
    assert (_resample.SHORT_TAPS, _resample.SHORT_ONE) == (_SHORT_TAPS, _SHORT_ONE)
    for n_in, n_out in [(480, 180), (1080, 136), (1080, 30), (40, 1), (60, 1)]:
        _, w_bytes, taps = _rows(n_in, n_out)
        w = np.frombuffer(w_bytes, np.int16).reshape(n_out, taps).astype(np.int64)
        one = _SHORT_ONE if taps <= _SHORT_TAPS else 1 << 14
        assert (w.sum(axis=1) == one).all()
        if taps <= _SHORT_TAPS:  # int16 sums of bytes never overflow (see _resample.c)
            assert np.abs(w).sum(axis=1).max() <= 128


def test_refuses_short_filters_whose_int16_sums_could_overflow() -> None:
    src, out = noise(64, 48), np.zeros((18, 24), np.uint8)
    ypos, yweights, ytaps = _rows(48, 18)
    xstart, xweights, xpairs = _columns(64, 24)
    loud = np.frombuffer(yweights, np.int16).reshape(18, ytaps).copy()
    loud[3, :2] = (-40, 104)  # still sums to 64 on that row, but |w| sums to 144
    loud[3, 2:] = 0
    with pytest.raises(ValueError, match="6-bit"):
        _resample.resize(src, out, ypos, loud.tobytes(), ytaps, xstart, xweights, xpairs)


def test_refuses_long_filters_whose_int32_sums_could_overflow() -> None:
    taps = 300  # a long (14-bit) filter: one output row from 300 input rows
    src, out = noise(64, taps), np.zeros((1, 24), np.uint8)
    xstart, xweights, xpairs = _columns(64, 24)
    ypos = np.zeros(1, np.int32).tobytes()
    weights = np.full((1, taps), 32767, np.int16)
    weights[0, 1::2] = -32767  # sums to ~0, but 255 * sum|w| is past int32
    with pytest.raises(ValueError, match="absolute weights must sum"):
        _resample.resize(src, out, ypos, weights.tobytes(), taps, xstart, xweights, xpairs)


def test_refuses_filters_that_would_read_outside_the_planes() -> None:
    src = noise(64, 48)
    out = np.zeros((18, 24), np.uint8)
    ypos, yweights, ytaps = _rows(48, 18)
    xstart, xweights, xpairs = _columns(64, 24)
    bad_rows = np.frombuffer(ypos, np.int32).copy()
    bad_rows[-1] = 48
    with pytest.raises(ValueError, match="y filter"):
        _resample.resize(src, out, bad_rows.tobytes(), yweights, ytaps, xstart, xweights, xpairs)
    bad_cols = np.frombuffer(xstart, np.int32).copy()
    bad_cols[0] = -1
    with pytest.raises(ValueError, match="x filter"):
        _resample.resize(src, out, ypos, yweights, ytaps, bad_cols.tobytes(), xweights, xpairs)
    bad_cols[0] = 1  # the AVX2 path reads whole sample pairs
    with pytest.raises(ValueError, match="even sample"):
        _resample.resize(src, out, ypos, yweights, ytaps, bad_cols.tobytes(), xweights, xpairs)
    with pytest.raises(ValueError, match="x filter"):
        _resample.resize(src, out, ypos, yweights, ytaps, xstart, xweights, xpairs + 1)
    with pytest.raises(ValueError, match="contiguous rows"):
        _resample.resize(src[:, ::2], out, ypos, yweights, ytaps, xstart, xweights, xpairs)
    with pytest.raises(ValueError, match="uint8"):
        _resample.resize(src.astype(np.int16), out, ypos, yweights, ytaps, xstart, xweights, xpairs)
    out.flags.writeable = False
    with pytest.raises((ValueError, BufferError), match="read-only"):
        _resample.resize(src, out, ypos, yweights, ytaps, xstart, xweights, xpairs)


@pytest.mark.parametrize("simd", [True, False])
@pytest.mark.parametrize(
    ("src_wh", "cell", "box"),
    [
        ((640, 480), (1, 3, 321, 181), (42, 0, 240, 180)),  # odd cell corner: 16-tile pillarbox
        ((641, 481), (0, 0, 130, 100), (4, 6, 120, 90)),  # odd source, bars on all four sides
        ((1920, 1080), (10, 10, 64, 64), (0, 14, 64, 36)),  # long vertical filters
    ],
)
def test_tile_is_bars_plus_three_resizes_in_one_call(
    simd: bool,
    src_wh: tuple[int, int],
    cell: tuple[int, int, int, int],
    box: tuple[int, int, int, int],
) -> None:
    """tile() gives exactly the bytes of filling the cell black and resizing each plane."""
    sw, sh = src_wh
    srcs = [noise(sw, sh, seed=7), noise((sw + 1) // 2, (sh + 1) // 2, seed=8)]
    srcs.append(noise((sw + 1) // 2, (sh + 1) // 2, seed=9))
    cx0, cy0, cw, ch = cell
    x, y, w, h = box
    got = [np.full((200, 400), 3, np.uint8), *(np.full((100, 200), 3, np.uint8) for _ in "uv")]
    want = [p.copy() for p in got]
    luma_cell = (slice(cy0, cy0 + ch), slice(cx0, cx0 + cw))
    chroma_cell = (slice(cy0 // 2, (cy0 + ch) // 2), slice(cx0 // 2, (cx0 + cw) // 2))
    cells = [g[luma_cell if i == 0 else chroma_cell] for i, g in enumerate(got)]
    bx, by = (x + cx0) // 2 - cx0 // 2, (y + cy0) // 2 - cy0 // 2
    c_sh, c_sw = srcs[1].shape
    _resample.tile(
        *srcs, *cells, x, y, w, h, bx, by,
        (*_rows(sh, h), *_columns(sw, w)),
        (*_rows(c_sh, h // 2), *_columns(c_sw, w // 2)),
        simd=simd,
    )  # fmt: skip
    for i, plane in enumerate(want):
        view = plane[luma_cell if i == 0 else chroma_cell]
        view[...] = 16 if i == 0 else 128
        px, py, pw, ph = (x, y, w, h) if i == 0 else (bx, by, w // 2, h // 2)
        run(srcs[i], view[py : py + ph, px : px + pw], simd=simd)
        assert (got[i] == plane).all()


def test_tile_refuses_a_box_outside_its_cell() -> None:
    src, cell = noise(64, 48, seed=1), np.zeros((30, 40), np.uint8)
    chroma_src, chroma_cell = noise(32, 24, seed=2), np.zeros((15, 20), np.uint8)
    luma = (*_rows(48, 30), *_columns(64, 40))
    chroma = (*_rows(24, 15), *_columns(32, 20))
    with pytest.raises(ValueError, match="inside its cell"):
        _resample.tile(src, chroma_src, chroma_src, cell, chroma_cell, chroma_cell,
                       2, 0, 40, 30, 1, 0, luma, chroma)  # fmt: skip
