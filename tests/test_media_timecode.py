"""The luma stamp: exact round trip, survival through real codecs and scaling, no false reads."""

from __future__ import annotations

import fractions
import time
from collections.abc import Callable

import av
import numpy as np
import numpy.typing as npt
import pytest
from aiortc.codecs.h264 import H264Decoder, H264Encoder, h264_depayload
from aiortc.codecs.vpx import Vp8Decoder, Vp8Encoder, vp8_depayload
from aiortc.jitterbuffer import JitterFrame

from media import PatternVideoTrack, Rect, Stamp, read_stamp, stamp_luma
from media.timecode import BAND, COLS, ROWS

NOW_MS = 1_763_000_000_000
TB = fractions.Fraction(1, 90000)


def _stamped(width: int, height: int, stamp: Stamp, fill: int = 90) -> npt.NDArray[np.uint8]:
    y = np.full((height, width), fill, dtype=np.uint8)
    stamp_luma(y, stamp)
    return y


@pytest.mark.parametrize(
    "stamp",
    [
        Stamp(0, 0),
        Stamp(1, NOW_MS),
        Stamp(2**32 - 1, 2**48 - 1),
        Stamp(123456789, int(time.time() * 1000)),
    ],
)
@pytest.mark.parametrize(("width", "height"), [(640, 480), (1280, 720), (213, 160), (66, 90)])
def test_round_trip_on_luma(stamp: Stamp, width: int, height: int) -> None:
    assert read_stamp(_stamped(width, height, stamp)) == stamp


def test_stamp_only_touches_the_band() -> None:
    y = _stamped(640, 480, Stamp(5, NOW_MS), fill=77)
    band_rows = round(480 * BAND)
    assert (y[band_rows:] == 77).all()
    assert set(np.unique(y[:band_rows]).tolist()) == {16, 235}


@pytest.mark.parametrize("fmt", ["yuv420p", "rgb24", "bgr24", "gray", "nv12", "yuv444p"])
def test_read_from_video_frames_of_any_format(fmt: str) -> None:
    frame = PatternVideoTrack(width=320, height=240).render(42, NOW_MS)
    converted = frame.reformat(format=fmt)
    assert converted.format.name == fmt
    assert read_stamp(converted) == Stamp(42, NOW_MS)


def test_read_with_rect_inside_a_larger_picture() -> None:
    canvas = np.full((720, 1280), 16, dtype=np.uint8)
    tile = _stamped(320, 240, Stamp(7, NOW_MS))
    canvas[100:340, 500:820] = tile
    assert read_stamp(canvas, (500, 100, 320, 240)) == Stamp(7, NOW_MS)
    assert read_stamp(canvas, Rect(500, 100, 320, 240)) == Stamp(7, NOW_MS)
    assert read_stamp(canvas) is None  # the band is not at the top of the whole canvas
    assert read_stamp(canvas, (0, 0, 0, 0)) is None


@pytest.mark.parametrize("divisor", [2, 3, 4, 6])
def test_survives_downscaling(divisor: int) -> None:
    track = PatternVideoTrack(width=640, height=480, label="scale", seed=3)
    for n in range(0, 200, 37):
        frame = track.render(n, NOW_MS + n)
        small = frame.reformat(width=(640 // divisor) & ~1, height=(480 // divisor) & ~1)
        assert read_stamp(small) == Stamp(n, NOW_MS + n)
    odd = track.render(9, NOW_MS).reformat(width=213, height=160, interpolation="AREA")
    assert read_stamp(odd) == Stamp(9, NOW_MS)


def _codec_round_trip(
    encoder: Vp8Encoder | H264Encoder,
    decoder: Vp8Decoder | H264Decoder,
    depayload: Callable[[bytes], bytes],
    frames: int,
) -> tuple[list[tuple[int, av.VideoFrame]], int]:
    """Encode moving pattern frames exactly as aiortc sends them, then depacketize and decode."""
    track = PatternVideoTrack(width=640, height=480, label="codec", seed=1)
    decoded: list[tuple[int, av.VideoFrame]] = []
    sent_bytes = 0
    for n in range(frames):
        frame = track.render(n, NOW_MS + n * 33)
        frame.pts = n * 3000
        frame.time_base = TB
        payloads, timestamp = encoder.encode(frame, force_keyframe=n == 0)
        data = b"".join(depayload(p) for p in payloads)
        sent_bytes += len(data)
        for out in decoder.decode(JitterFrame(data, timestamp)):
            assert isinstance(out, av.VideoFrame)
            decoded.append((n, out))
    return decoded, sent_bytes


def _check_stamps(decoded: list[tuple[int, av.VideoFrame]], frames: int, scale: int) -> None:
    good = 0
    for n, frame in decoded:
        image = frame
        if scale > 1:
            image = frame.reformat(width=(640 // scale) & ~1, height=(480 // scale) & ~1)
        stamp = read_stamp(image)
        if stamp is not None:
            assert stamp == Stamp(n, NOW_MS + n * 33), "a stamp must never read wrong"
            good += 1
    assert len(decoded) >= frames - 1
    assert good >= 0.95 * frames, f"only {good}/{frames} stamps survived"


def test_survives_vp8_at_500kbps() -> None:
    encoder = Vp8Encoder()
    assert encoder.target_bitrate == 500_000  # aiortc's default for VP8
    decoded, sent = _codec_round_trip(encoder, Vp8Decoder(), vp8_depayload, frames=60)
    assert sent * 8 / 2.0 < 1_500_000  # two seconds at 30 fps: really low-bitrate
    _check_stamps(decoded, 60, scale=1)
    _check_stamps(decoded, 60, scale=3)


def test_survives_h264_at_500kbps() -> None:
    encoder = H264Encoder()
    encoder.target_bitrate = 500_000
    decoded, sent = _codec_round_trip(encoder, H264Decoder(), h264_depayload, frames=60)
    assert sent * 8 / 2.0 < 1_500_000
    _check_stamps(decoded, 60, scale=1)
    _check_stamps(decoded, 60, scale=3)


def _checkerboard(h: int, w: int, cell: int) -> npt.NDArray[np.uint8]:
    yy, xx = np.indices((h, w))
    return np.where(((yy // cell) + (xx // cell)) % 2 == 0, 235, 16).astype(np.uint8)


def test_no_stamp_in_plain_pictures() -> None:
    rng = np.random.default_rng(1234)
    h, w = 480, 640
    pictures: list[npt.NDArray[np.uint8]] = [
        np.zeros((h, w), np.uint8),
        np.full((h, w), 16, np.uint8),
        np.full((h, w), 235, np.uint8),
        np.full((h, w), 128, np.uint8),
        np.tile(np.linspace(0, 255, w).astype(np.uint8), (h, 1)),
        np.tile(np.linspace(0, 255, h).astype(np.uint8)[:, None], (1, w)),
    ]
    pictures += [rng.integers(0, 256, (h, w), dtype=np.uint8) for _ in range(50)]
    pictures += [
        (rng.integers(0, 2, (h // c, w // c), dtype=np.uint8) * 219 + 16).repeat(c, 0).repeat(c, 1)
        for c in (4, 8, 16, 24, 40)
        for _ in range(10)
    ]
    for cell in (1, 2, 3, 5, 8, 12, 18, 24, 25, 32, 48, 64):
        pictures.append(_checkerboard(h, w, cell))
        rows = np.where((np.arange(h) // cell) % 2 == 0, 235, 16).astype(np.uint8)
        cols = np.where((np.arange(w) // cell) % 2 == 0, 235, 16).astype(np.uint8)
        pictures.append(np.tile(rows[:, None], (1, w)))
        pictures.append(np.tile(cols[None, :], (h, 1)))
    # The cell grid itself, with right markers: only the CRC stands between it and a stamp.
    grid_w = w / COLS
    grid_h = h * BAND / ROWS
    for _ in range(300):
        cells = rng.integers(0, 2, (ROWS, COLS)).astype(bool)
        cells[:, 0] = (True, False, False, True)
        cells[:, -1] = (False, True, True, False)
        y = np.full((h, w), 90, np.uint8)
        for r in range(ROWS):
            for c in range(COLS):
                y0, y1 = round(r * grid_h), round((r + 1) * grid_h)
                x0, x1 = round(c * grid_w), round((c + 1) * grid_w)
                y[y0:y1, x0:x1] = 235 if cells[r, c] else 16
        pictures.append(y)
    # Pattern frames whose stamp band was painted over.
    track = PatternVideoTrack(width=w, height=h, label="nostamp")
    for n in range(5):
        y = track.render(n).to_ndarray()[:h].copy()
        y[: round(h * BAND)] = y[round(h * BAND) + 5]
        pictures.append(y)
    false_reads = [i for i, p in enumerate(pictures) if read_stamp(p) is not None]
    assert false_reads == []
    assert read_stamp(av.VideoFrame.from_ndarray(pictures[-1], format="gray")) is None


def test_every_single_bit_flip_is_rejected() -> None:
    h, w = 240, 320
    y = _stamped(w, h, Stamp(987654, NOW_MS))
    band_h = h * BAND
    for r in range(ROWS):
        for c in range(1, COLS - 1):
            flipped = y.copy()
            y0, y1 = round(r * band_h / ROWS), round((r + 1) * band_h / ROWS)
            x0, x1 = round(c * w / COLS), round((c + 1) * w / COLS)
            flipped[y0:y1, x0:x1] = 251 - flipped[y0:y1, x0:x1]
            assert read_stamp(flipped) is None, (r, c)


def test_invalid_inputs() -> None:
    with pytest.raises(ValueError, match="32 bits"):
        Stamp(2**32, 0)
    with pytest.raises(ValueError, match="48 bits"):
        Stamp(0, -1)
    with pytest.raises(ValueError, match="too small"):
        stamp_luma(np.zeros((20, 20), np.uint8), Stamp(0, 0))
    with pytest.raises(ValueError, match="2-D uint8"):
        stamp_luma(np.zeros((480, 640, 3), np.uint8), Stamp(0, 0))
    with pytest.raises(ValueError, match="2-D uint8"):
        read_stamp(np.zeros((480, 640), np.float32))  # type: ignore[arg-type]
    assert read_stamp(np.zeros((4, 4), np.uint8)) is None
