"""resize_into: antialiased where the compositor shrinks, exact on flat colour, view-safe.

Every behaviour test runs twice: on ``resize_into`` (the C resampler, ``media._resample``)
and on the OpenCV chain it falls back to when the extension is not built
(``media._scale_cv``). The extension's own contract is in test_media_resample.py.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from functools import partial

import av
import cv2
import numpy as np
import numpy.typing as npt
import pytest

from media import PatternVideoTrack, _scale, _scale_cv
from media._scale import HAVE_RESAMPLER, resize_into
from media._yuv import planes_of

Plane = npt.NDArray[np.uint8]
Resize = Callable[..., None]

IMPLEMENTATIONS = {"resampler": resize_into, "opencv": _scale_cv.resize_into}


@pytest.fixture(params=list(IMPLEMENTATIONS))
def impl(request: pytest.FixtureRequest) -> Resize:
    return IMPLEMENTATIONS[request.param]


def test_the_resampler_is_built() -> None:
    # CI installs with `pip install -e .`, which builds it; without it every test of
    # "resampler" below would quietly test the OpenCV fallback twice.
    assert HAVE_RESAMPLER


def grating(period: float, w: int, h: int, *, vertical: bool) -> Plane:
    """A sine grating of amplitude 100 round mid-grey, ``period`` pixels across the stripes."""
    x = np.arange(w if vertical else h)
    line = 128 + 100 * np.sin(2 * np.pi * x / period)
    full = np.broadcast_to(line[None, :] if vertical else line[:, None], (h, w))
    return np.ascontiguousarray(np.rint(full).astype(np.uint8))


def naive_linear(src: Plane, dst: Plane) -> None:
    cv2.resize(src, (dst.shape[1], dst.shape[0]), dst=dst, interpolation=cv2.INTER_LINEAR)


def moire(resize: Resize, period: float, src_wh: tuple[int, int], dst_wh: tuple[int, int]) -> float:
    """Largest spread (std of the interior) left by shrinking a grating, either orientation."""
    worst = 0.0
    for vertical in (True, False):
        out = np.zeros((dst_wh[1], dst_wh[0]), dtype=np.uint8)
        resize(grating(period, *src_wh, vertical=vertical), out)
        interior = out[4:-4, 4:-4].astype(np.float64)
        assert abs(interior.mean() - 128) < 3  # the grating's mean survives
        worst = max(worst, float(interior.std()))
    return worst


# The compositor's factors for 640x480 inputs on 1280x720: 16 tiles (2.67x), 9 tiles (2x),
# and the chroma planes of the same (320x240 -> 120x90 / 160x120).
SHRINKS = [((640, 480), (240, 180)), ((640, 480), (320, 240)), ((320, 240), (120, 90))]


@pytest.mark.parametrize(("src_wh", "dst_wh"), SHRINKS)
@pytest.mark.parametrize("period", [2.1, 2.2, 2.5])
@pytest.mark.parametrize("sharpen", [True, False])
def test_near_nyquist_grating_shrinks_to_flat_grey(
    impl: Resize, src_wh: tuple[int, int], dst_wh: tuple[int, int], period: float, sharpen: bool
) -> None:
    assert moire(partial(impl, sharpen=sharpen), period, src_wh, dst_wh) < 6.5


def test_the_grating_check_catches_a_plain_bilinear_resize() -> None:
    # The same measurement fails for cv2.INTER_LINEAR: it leaves strong moiré at 2.67x.
    assert moire(naive_linear, 2.2, (640, 480), (240, 180)) > 30
    assert moire(naive_linear, 2.5, (640, 480), (240, 180)) > 30


def test_mild_shrink_suppresses_moire_like_bicubic(impl: Resize) -> None:
    # At 1.33x even swscale's bicubic leaves ~18 (period 2.2); bilinear leaves ~39.
    ours = moire(impl, 2.2, (640, 480), (480, 360))
    assert ours < 0.6 * moire(naive_linear, 2.2, (640, 480), (480, 360))


def luma_psnr(a: Plane, b: Plane) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 99.0 if mse == 0 else 10 * float(np.log10(255.0**2 / mse))


@pytest.mark.parametrize(
    ("w", "h", "floor_db", "resampler_floor_db"),
    [
        # resampler measured 58.4 / 62.7 / 62.5 / 59.3 / 57.6 / 58.4 dB (6-bit weights, 8-bit
        # intermediate rows)
        (240, 180, 46.5, 56),  # 16 tiles (2.67x): opencv 47.4 dB
        (320, 240, 45, 60),  # 9 tiles (2x)
        (480, 360, 45, 60),  # 4 tiles (1.33x, no 2x step)
        (320, 180, 45, 56),  # 2x on one axis, 2.67x on the other
        (160, 120, 45, 55),  # two 2x steps
        (321, 181, 45, 55),  # odd sizes
        (1280, 960, 45, 45),  # enlarging (cv2.INTER_CUBIC either way)
    ],
)
def test_close_to_swscale_bicubic(
    impl: Resize, w: int, h: int, floor_db: float, resampler_floor_db: float
) -> None:
    """The FFmpeg reference the benchmark compares with (swscale's default bicubic)."""
    frame = PatternVideoTrack(width=640, height=480, seed=3, label="bot 3").render(17, 5000)
    reference = planes_of(frame.reformat(width=w, height=h, interpolation="BICUBIC"))[0]
    ours = np.zeros((h, w), dtype=np.uint8)
    impl(planes_of(frame)[0], ours)
    if impl is resize_into:
        floor_db = resampler_floor_db  # the same filter as swscale's: rounding differs only
    area = np.zeros((h, w), dtype=np.uint8)
    cv2.resize(planes_of(frame)[0], (w, h), dst=area, interpolation=cv2.INTER_AREA)
    assert luma_psnr(ours, reference) > floor_db
    assert luma_psnr(ours, reference) > luma_psnr(area, reference)


def test_opencv_sharpen_false_is_softer_and_sharpen_true_is_what_matches_swscale() -> None:
    frame = PatternVideoTrack(width=640, height=480, seed=4, label="bot 4").render(9, 3000)
    reference = planes_of(frame.reformat(width=240, height=180, interpolation="BICUBIC"))[0]
    sharp, soft = np.zeros((180, 240), np.uint8), np.zeros((180, 240), np.uint8)
    _scale_cv.resize_into(planes_of(frame)[0], sharp)
    _scale_cv.resize_into(planes_of(frame)[0], soft, sharpen=False)
    assert luma_psnr(sharp, reference) > luma_psnr(soft, reference) + 5
    assert (
        np.abs(np.diff(soft.astype(np.int16))).mean()
        < np.abs(np.diff(sharp.astype(np.int16))).mean()
    )


SIZES = [
    ((640, 480), (240, 180)),
    ((640, 480), (320, 240)),
    ((640, 480), (480, 360)),
    ((640, 480), (320, 180)),  # after the 2x step: 1x on one axis, 1.33x on the other
    ((640, 480), (160, 120)),  # two 2x steps, nothing left
    ((641, 481), (121, 91)),  # odd everywhere
    ((639, 479), (319, 239)),
    ((1920, 1080), (240, 136)),  # three 2x steps, then the rest
    ((640, 480), (640, 120)),  # one axis only
    ((160, 120), (640, 480)),  # enlarging
    ((320, 180), (404, 720)),  # mixed: wider and much taller
    ((7, 5), (3, 2)),
    ((2, 2), (1, 1)),
]


@pytest.mark.parametrize(("src_wh", "dst_wh"), SIZES)
@pytest.mark.parametrize("sharpen", [True, False])
def test_solid_colours_stay_exact(
    impl: Resize, src_wh: tuple[int, int], dst_wh: tuple[int, int], sharpen: bool
) -> None:
    for value in (0, 16, 81, 128, 235, 255):
        src = np.full((src_wh[1], src_wh[0]), value, dtype=np.uint8)
        out = np.zeros((dst_wh[1], dst_wh[0]), dtype=np.uint8)
        impl(src, out, sharpen=sharpen)
        assert (out == value).all(), (value, np.unique(out))


@pytest.mark.parametrize(("src_wh", "dst_wh"), SIZES)
@pytest.mark.parametrize("sharpen", [True, False])
def test_writes_only_inside_a_view_and_follows_the_picture(
    impl: Resize, src_wh: tuple[int, int], dst_wh: tuple[int, int], sharpen: bool
) -> None:
    (sw, sh), (dw, dh) = src_wh, dst_wh
    yy, xx = np.mgrid[0:sh, 0:sw]
    src = (40 + 150 * (xx / max(sw - 1, 1)) * (yy / max(sh - 1, 1))).astype(np.uint8)  # smooth
    canvas = np.full((dh + 10, dw + 13), 7, dtype=np.uint8)
    view = canvas[3 : 3 + dh, 5 : 5 + dw]
    impl(src, view, sharpen=sharpen)
    outside = canvas.copy()
    outside[3 : 3 + dh, 5 : 5 + dw] = 7
    assert (outside == 7).all()
    assert (view >= 39).all()  # every pixel of the view was written (nothing is below 40)
    if min(dw, dh) >= 8:  # on a handful of pixels kernels differ too much to compare
        expected = cv2.resize(src, (dw, dh), interpolation=cv2.INTER_AREA).astype(np.int16)
        assert np.abs(view.astype(np.int16) - expected).mean() < 2.5


def test_same_size_is_a_copy_and_a_strided_source_works(impl: Resize) -> None:
    big = np.random.default_rng(1).integers(0, 256, (500, 700), dtype=np.uint8)
    src = big[10:490, 20:660]  # a view with a row stride, like a decoded frame's plane
    out = np.zeros((480, 640), dtype=np.uint8)
    impl(src, out)
    assert (out == src).all()
    small = np.zeros((180, 240), dtype=np.uint8)
    impl(src, small)
    expected = np.zeros_like(small)
    impl(np.ascontiguousarray(src), expected)
    assert (small == expected).all()


def test_enlarging_is_smooth_and_faithful(impl: Resize) -> None:
    yy, xx = np.mgrid[0:120, 0:160]
    src = (30 + xx + yy / 2).astype(np.uint8)
    out = np.zeros((480, 640), dtype=np.uint8)
    impl(src, out)
    expected = cv2.resize(src, (640, 480), interpolation=cv2.INTER_LINEAR).astype(np.int16)
    assert np.abs(out.astype(np.int16) - expected).max() <= 2
    assert (np.diff(out.astype(np.int16), axis=1) >= 0).all()  # a ramp stays a ramp


def test_threads_with_different_shapes_do_not_share_scratch(impl: Resize) -> None:
    frames = [
        PatternVideoTrack(width=640, height=480, seed=s, label=f"s{s}").render(s, 1000)
        for s in range(4)
    ]
    sources = [planes_of(f)[0] for f in frames]
    shapes = [(180, 240), (240, 320), (90, 120), (360, 480)]
    expected = []
    for src, shape in zip(sources, shapes, strict=True):
        out = np.zeros(shape, dtype=np.uint8)
        impl(src, out)
        expected.append(out)
    errors: list[str] = []

    def work(i: int) -> None:
        for _ in range(30):
            for j in range(4):
                k = (i + j) % 4
                out = np.zeros(shapes[k], dtype=np.uint8)
                impl(sources[k], out)
                if not (out == expected[k]).all():
                    errors.append(f"thread {i} shape {shapes[k]}")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    assert not errors, errors[:3]


@pytest.mark.parametrize("sharpen", [True, False])
def test_chroma_planes_of_a_decoded_frame(impl: Resize, sharpen: bool) -> None:
    frame = PatternVideoTrack(width=640, height=480, seed=5, label="c").render(3, 1000)
    frame = av.VideoFrame.from_ndarray(frame.to_ndarray(), format="yuv420p")
    _, u, v = planes_of(frame)
    for plane in (u, v):
        out = np.zeros((90, 120), dtype=np.uint8)
        impl(plane, out, sharpen=sharpen)
        expected = cv2.resize(plane, (120, 90), interpolation=cv2.INTER_AREA).astype(np.int16)
        assert np.abs(out.astype(np.int16) - expected).mean() < 2


def test_without_the_extension_shrinking_falls_back_to_opencv_and_says_so_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(_scale, "_resample", None)
    _scale._fallback_warning.cache_clear()
    src = PatternVideoTrack(width=640, height=480, seed=6, label="f").render(1, 1000)
    plane = planes_of(src)[0]
    expected = np.zeros((180, 240), np.uint8)
    _scale_cv.resize_into(plane, expected)
    with caplog.at_level(logging.WARNING, logger="media._scale"):
        for _ in range(3):
            out = np.zeros((180, 240), np.uint8)
            resize_into(plane, out)
            assert (out == expected).all()
    assert len([r for r in caplog.records if "OpenCV" in r.getMessage()]) == 1
    _scale._fallback_warning.cache_clear()


def test_paint_picture_without_the_extension_is_bars_plus_the_opencv_chain(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The canvas's one-call tile path falls back to three OpenCV resizes and numpy bars."""
    frame = PatternVideoTrack(width=640, height=480, seed=4, label="p").render(2, 1000)
    src = planes_of(frame)
    monkeypatch.setattr(_scale, "_resample", None)
    cell = (np.full((181, 321), 3, np.uint8), *(np.full((90, 160), 3, np.uint8) for _ in "uv"))
    _scale.paint_picture(src, cell, 42, 0, 240, 180, 21, 0)
    assert (cell[0][:, :42] == 16).all()
    assert (cell[0][:180, 282:] == 16).all()
    assert (cell[0][180:] == 16).all()
    assert (cell[1][:, :21] == 128).all()
    assert (cell[2][:, 141:] == 128).all()
    expected = np.zeros((180, 240), np.uint8)
    _scale_cv.resize_into(src[0], expected)
    assert (cell[0][:180, 42:282] == expected).all()
    expected_u = np.zeros((90, 120), np.uint8)
    _scale_cv.resize_into(src[1], expected_u, sharpen=False)
    assert (cell[1][:, 21:141] == expected_u).all()
    _scale._fallback_warning.cache_clear()
