"""Synthetic sources (pattern video, tone audio); the file source is in test_media_file_source."""

from __future__ import annotations

import asyncio
import fractions
import time

import av
import numpy as np
import pytest
from aiortc.mediastreams import MediaStreamError

from media import PatternVideoTrack, ToneAudioTrack, read_stamp
from media.clock import MediaClock

from .test_media_pacing import assert_paced


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
        ({"fps": 30, "flash_every_s": 0.02}, "flash_every_s"),
    ],
)
def test_pattern_rejects_bad_arguments(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PatternVideoTrack(**kwargs)  # type: ignore[arg-type]


async def test_pattern_frames_are_stamped_paced_and_timestamped() -> None:
    track = PatternVideoTrack(width=320, height=240, fps=30)
    t0 = time.monotonic()
    before_ms = int(time.time() * 1000)
    frames, times = [], []
    for _ in range(10):
        frames.append(await track.recv())
        times.append(time.monotonic())
    after_ms = int(time.time() * 1000)
    # pts are 30 fps slots following real time; a late reader gets gaps, never a burst.
    assert_paced([f.pts for f in frames], times, t0=t0, step=3000, period=1 / 30)
    assert track.frames_sent == 10
    for n, frame in enumerate(frames):
        assert isinstance(frame, av.VideoFrame)
        assert (frame.width, frame.height, frame.format.name) == (320, 240, "yuv420p")
        assert frame.time_base == fractions.Fraction(1, 90000)
        stamp = read_stamp(frame)
        assert stamp is not None
        assert stamp.frame_number == n
        assert before_ms <= stamp.capture_time_ms <= after_ms
    track.stop()
    with pytest.raises(MediaStreamError):
        await track.recv()


async def test_pattern_skips_ahead_instead_of_bursting() -> None:
    track = PatternVideoTrack(width=160, height=120, fps=50)
    t0 = time.monotonic()
    frames = [await track.recv()]
    times = [time.monotonic()]
    await asyncio.sleep(0.3)  # a stalled consumer: at least 15 slots late
    frames.append(await track.recv())
    times.append(time.monotonic())
    late = frames[-1]
    assert late.pts is not None and late.pts >= 10 * 1800  # jumped ahead in time
    stamp = read_stamp(late)
    assert stamp is not None and stamp.frame_number == 1  # but numbering stays consecutive
    for _ in range(3):
        frames.append(await track.recv())
        times.append(time.monotonic())
    # Paced again afterwards: never ahead of real time, never a burst of stale slots.
    assert_paced([f.pts for f in frames], times, t0=t0, step=1800, period=1 / 50)


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


def _is_white(frame: av.VideoFrame) -> bool:
    luma = frame.to_ndarray()[: frame.height]
    return bool(luma[frame.height // 4 :].min() >= 230)


def test_pattern_flashes_once_per_period_by_media_time() -> None:
    track = PatternVideoTrack(width=320, height=240, fps=30, label="x", flash_every_s=1.0)
    plain = PatternVideoTrack(width=320, height=240, fps=30, label="x")
    for n in range(95):
        frame = track.render(n, 1000 + n, media_time_s=n / 30)
        # [k, k + 1/30) holds exactly one slot: frames 0, 30, 60, 90.
        assert _is_white(frame) == (n % 30 == 0), n
        stamp = read_stamp(frame)
        assert stamp is not None and stamp.frame_number == n  # the stamp band is kept
    # 25 fps and a 0.5 s period: the first frame at or after each k * 0.5 s.
    odd = PatternVideoTrack(width=320, height=240, fps=25, flash_every_s=0.5)
    assert [n for n in range(60) if odd.is_flash(n / 25)] == [0, 13, 25, 38, 50]
    # Without flash_every_s (or without a media time) nothing changes.
    assert not any(_is_white(plain.render(n, media_time_s=n / 30)) for n in (0, 30))
    assert np.array_equal(track.render(30, 5).to_ndarray(), plain.render(30, 5).to_ndarray())


async def test_pattern_pts_are_media_time_on_a_shared_clock() -> None:
    clock = MediaClock(time.monotonic() - 0.9)  # media time 0.9 s: the first flash is close
    track = PatternVideoTrack(width=160, height=120, fps=30, clock=clock, flash_every_s=1.0)
    flashes = 0
    async with asyncio.timeout(60):  # a starved pacer may skip a flash slot; wait for one
        while not flashes:
            asked = clock.now()
            frame = await track.recv()
            assert frame.pts is not None
            media = frame.pts / 90000
            # The next slot due on the clock: never early, never more than a slot stale.
            assert asked - 1 / 30 - 1e-3 <= media <= clock.now() + 1e-3, (asked, media)
            white = _is_white(frame)
            assert white == (frame.pts % 90000 < 3000), frame.pts
            flashes += white
    track.stop()


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
        ({"beep_every_s": 1.0, "beep_s": 1.0}, "beep_s"),
        ({"beep_every_s": 1.0, "beep_s": 0}, "beep_s"),
    ],
)
def test_tone_rejects_bad_arguments(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ToneAudioTrack(**kwargs)  # type: ignore[arg-type]


async def test_tone_is_continuous_paced_and_correct() -> None:
    track = ToneAudioTrack(frequency=1000, sample_rate=48000, channels=2, amplitude=0.5)
    t0 = time.monotonic()
    frames, times = [], []
    for _ in range(10):
        frames.append(await track.recv())
        times.append(time.monotonic())
    # 20 ms slots in real time; pts count samples, so a late reader sees a gap in pts.
    assert_paced([f.pts for f in frames], times, t0=t0, step=960, period=0.02)
    samples = []
    for frame in frames:
        assert isinstance(frame, av.AudioFrame)
        assert frame.format.name == "s16" and frame.layout.name == "stereo"
        assert frame.sample_rate == 48000 and frame.samples == 960
        assert frame.time_base == fractions.Fraction(1, 48000)
        data = frame.to_ndarray().reshape(-1, 2)
        assert (data[:, 0] == data[:, 1]).all()
        # Every frame is the sine at its own sample position: one continuous sine across
        # frame edges (and a pts gap after a stall is a gap in time, not a phase glitch).
        assert frame.pts is not None
        n = np.arange(frame.pts, frame.pts + 960)
        expected = np.round(np.sin(2 * np.pi * 1000 * n / 48000) * 0.5 * 32767)
        assert np.abs(data[:, 0] - expected).max() <= 1
        samples.append(data[:, 0])
    signal = np.concatenate(samples).astype(np.float64)
    spectrum = np.abs(np.fft.rfft(signal))
    assert np.argmax(spectrum) * 48000 / len(signal) == pytest.approx(1000, abs=5)
    track.stop()
    with pytest.raises(MediaStreamError):
        await track.recv()


def test_tone_beeps_sample_exactly() -> None:
    track = ToneAudioTrack(frequency=1000, amplitude=0.5, beep_every_s=0.5, beep_s=0.1)
    plain = ToneAudioTrack(frequency=1000, amplitude=0.5)
    for first in range(0, 48000, 240):  # 20 ms frames straddling every edge
        got = track.render(first).to_ndarray()[0]
        n = np.arange(first, first + 960)
        gate = (n % 24000) < 4800  # [0, 0.1) and [0.5, 0.6) of each second
        full = plain.render(first).to_ndarray()[0]
        assert np.array_equal(got, np.where(gate, full, 0)), first
    # The beep is the tone itself: loud enough for an envelope to find its onset.
    assert np.abs(track.render(24000).to_ndarray()).max() > 0.45 * 32767


async def test_tone_pts_count_samples_on_a_shared_clock() -> None:
    clock = MediaClock(time.monotonic() - 2.0)
    track = ToneAudioTrack(clock=clock)
    for _ in range(3):
        asked = clock.now()
        frame = await track.recv()
        assert frame.pts is not None and frame.pts % 960 == 0
        assert asked - 0.02 - 1e-3 <= frame.pts / 48000 <= clock.now() + 1e-3
    track.stop()
