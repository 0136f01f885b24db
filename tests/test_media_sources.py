"""Synthetic sources (pattern video, tone audio) and the file source."""

from __future__ import annotations

import asyncio
import fractions
import statistics
import threading
import time
from pathlib import Path

import av
import numpy as np
import pytest
from aiortc.mediastreams import MediaStreamError

from media import FileSource, PatternVideoTrack, SourceError, ToneAudioTrack, read_stamp


def _no_other_tasks() -> bool:
    return not [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]


# -- PatternVideoTrack ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"width": 641}, "even"),
        ({"height": 479}, "even"),
        ({"width": 32, "height": 32}, "at least"),
        ({"fps": 0}, "fps"),
        ({"fps": -5}, "fps"),
        ({"fps": 121}, "fps"),
    ],
)
def test_pattern_rejects_bad_arguments(kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PatternVideoTrack(**kwargs)


async def test_pattern_frames_are_stamped_paced_and_timestamped() -> None:
    track = PatternVideoTrack(width=320, height=240, fps=30)
    start = time.monotonic()
    before_ms = int(time.time() * 1000)
    frames = [await track.recv() for _ in range(10)]
    elapsed = time.monotonic() - start
    after_ms = int(time.time() * 1000)
    assert 9 / 30 * 0.9 <= elapsed < 9 / 30 + 0.25
    assert track.frames_sent == 10
    for n, frame in enumerate(frames):
        assert isinstance(frame, av.VideoFrame)
        assert (frame.width, frame.height, frame.format.name) == (320, 240, "yuv420p")
        assert frame.time_base == fractions.Fraction(1, 90000)
        assert frame.pts == n * 3000
        stamp = read_stamp(frame)
        assert stamp is not None
        assert stamp.frame_number == n
        assert before_ms <= stamp.capture_time_ms <= after_ms
    track.stop()
    with pytest.raises(MediaStreamError):
        await track.recv()


async def test_pattern_skips_ahead_instead_of_bursting() -> None:
    track = PatternVideoTrack(width=160, height=120, fps=50)
    await track.recv()
    await asyncio.sleep(0.3)  # a stalled consumer: ~15 slots late
    late = await track.recv()
    assert late.pts is not None and late.pts >= 10 * 1800  # jumped ahead in time
    stamp = read_stamp(late)
    assert stamp is not None and stamp.frame_number == 1  # but numbering stays consecutive
    start = time.monotonic()
    following = [await track.recv() for _ in range(3)]
    assert time.monotonic() - start >= 2 / 50  # paced again, not a burst
    pts = [f.pts for f in following]
    assert pts == sorted(pts) and pts[0] is not None and pts[0] > late.pts


def test_pattern_render_cost_is_loop_friendly() -> None:
    track = PatternVideoTrack(width=640, height=480, label="bench", seed=5)
    for n in range(20):
        track.render(n)
    costs = []
    for n in range(200):
        t0 = time.perf_counter()
        track.render(n)
        costs.append(time.perf_counter() - t0)
    assert statistics.median(costs) < 0.001, f"median {statistics.median(costs) * 1e3:.3f} ms"


def test_pattern_content_moves_and_seeds_differ() -> None:
    tracks = [PatternVideoTrack(width=320, height=240, label=f"bot {s}", seed=s) for s in range(3)]
    chroma = []
    for track in tracks:
        planes = track.render(0).to_ndarray()
        u = planes[240:300].astype(np.float64)  # U plane rows (packed two per row)
        chroma.append(float(u[40:].mean()))
    # Three seeds, three clearly different backgrounds.
    assert min(abs(a - b) for i, a in enumerate(chroma) for b in chroma[i + 1 :]) > 10
    first = tracks[0].render(0).to_ndarray()[:240]
    later = tracks[0].render(10).to_ndarray()[:240]
    band = 40
    assert np.count_nonzero(first[band:] != later[band:]) > 1000  # something moved
    unlabeled = PatternVideoTrack(width=320, height=240, seed=0).render(0).to_ndarray()[:240]
    assert np.count_nonzero(first[band:] != unlabeled[band:]) > 500  # the label is drawn


# -- ToneAudioTrack ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"frequency": 0}, "frequency"),
        ({"frequency": 30000}, "frequency"),
        ({"channels": 3}, "channels"),
        ({"amplitude": 1.5}, "amplitude"),
        ({"sample_rate": 44100, "frame_ms": 3}, "frame_ms"),
        ({"sample_rate": 1000}, "sample_rate"),
    ],
)
def test_tone_rejects_bad_arguments(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ToneAudioTrack(**kwargs)  # type: ignore[arg-type]


async def test_tone_is_continuous_paced_and_correct() -> None:
    track = ToneAudioTrack(frequency=1000, sample_rate=48000, channels=2, amplitude=0.5)
    start = time.monotonic()
    frames = [await track.recv() for _ in range(10)]
    elapsed = time.monotonic() - start
    assert 0.16 <= elapsed < 0.45
    samples = []
    for n, frame in enumerate(frames):
        assert isinstance(frame, av.AudioFrame)
        assert frame.format.name == "s16" and frame.layout.name == "stereo"
        assert frame.sample_rate == 48000 and frame.samples == 960
        assert frame.pts == n * 960 and frame.time_base == fractions.Fraction(1, 48000)
        data = frame.to_ndarray().reshape(-1, 2)
        assert (data[:, 0] == data[:, 1]).all()
        samples.append(data[:, 0])
    signal = np.concatenate(samples).astype(np.float64)
    expected = np.round(np.sin(2 * np.pi * 1000 * np.arange(len(signal)) / 48000) * 0.5 * 32767)
    assert np.abs(signal - expected).max() <= 1  # one continuous sine across frame edges
    spectrum = np.abs(np.fft.rfft(signal))
    assert np.argmax(spectrum) * 48000 / len(signal) == pytest.approx(1000, abs=5)
    track.stop()
    with pytest.raises(MediaStreamError):
        await track.recv()


# -- FileSource ----------------------------------------------------------------------------------


def _write_sample(path: Path, frames: int, fps: int = 15) -> None:
    """A small H.264 + AAC file whose frames carry stamps 0..frames-1."""
    pattern = PatternVideoTrack(width=320, height=240, fps=fps)
    tone = ToneAudioTrack(frequency=440)
    with av.open(str(path), mode="w") as container:
        video = container.add_stream("libx264", rate=fps)
        video.codec_context.width, video.codec_context.height = 320, 240
        video.codec_context.pix_fmt = "yuv420p"
        video.codec_context.options = {"preset": "ultrafast"}
        audio = container.add_stream("aac", rate=48000)
        for n in range(frames):
            frame = pattern.render(n, 1_000_000 + n)
            frame.pts = n
            frame.time_base = fractions.Fraction(1, fps)
            container.mux(video.encode(frame))
        for n in range(frames * 48000 // fps // 960):
            container.mux(audio.encode(tone.render(n * 960)))
        container.mux(video.encode(None))
        container.mux(audio.encode(None))


async def test_file_source_plays_once(tmp_path: Path) -> None:
    path = tmp_path / "clip.mp4"
    await asyncio.to_thread(_write_sample, path, 8)
    async with await FileSource.open(path, loop=False) as source:
        assert source.video is not None and source.audio is not None
        assert source.video.kind == "video" and source.audio.kind == "audio"
        numbers = []
        for _ in range(8):
            frame = await source.video.recv()
            assert isinstance(frame, av.VideoFrame)
            stamp = read_stamp(frame)
            assert stamp is not None
            numbers.append(stamp.frame_number)
        assert numbers == list(range(8))
        with pytest.raises(MediaStreamError):
            await source.video.recv()  # played once: the end is an error, as for any track
    assert not [t for t in threading.enumerate() if t.name == "media-player"]
    assert _no_other_tasks()


async def test_file_source_loops(tmp_path: Path) -> None:
    path = tmp_path / "clip.mkv"
    await asyncio.to_thread(_write_sample, path, 6)
    source = FileSource(path)  # loop=True by default
    try:
        assert source.video is not None
        numbers = []
        for _ in range(14):
            stamp = read_stamp(await source.video.recv())  # type: ignore[arg-type]
            assert stamp is not None
            numbers.append(stamp.frame_number)
        assert numbers[:6] == list(range(6))
        assert numbers[6:12] == list(range(6))  # wrapped around
    finally:
        await source.aclose()
        await source.aclose()  # idempotent
    assert source.video.readyState == "ended"
    assert not [t for t in threading.enumerate() if t.name == "media-player"]


async def test_file_source_open_reports_errors_too(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="not found"):
        await FileSource.open(tmp_path / "missing.webm")


def test_file_source_errors(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="not found"):
        FileSource(tmp_path / "missing.mp4")
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"\x00\x01not a media file" * 100)
    with pytest.raises(SourceError, match="cannot open"):
        FileSource(garbage)
    with pytest.raises(SourceError, match="not found"):
        FileSource(tmp_path)  # a directory is not a media file
