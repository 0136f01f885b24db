"""AudioMixer: sums inputs (resampled), clips, paces, bounds buffers, cleans up."""

from __future__ import annotations

import asyncio
import fractions
import time
from collections.abc import Callable

import av
import numpy as np
import numpy.typing as npt
import pytest
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from media import AudioMixer, ClosedError, PatternVideoTrack, ToneAudioTrack
from media.mixer import MAX_BUFFER_MS


def _other_tasks() -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]


async def _until(predicate: Callable[[], bool], timeout: float = 3.0) -> None:
    for _ in range(int(timeout / 0.01)):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached in time")


async def _collect(mixer: AudioMixer, frames: int) -> npt.NDArray[np.int16]:
    chunks = []
    for _ in range(frames):
        frame = await mixer.output.recv()
        assert isinstance(frame, av.AudioFrame)
        chunks.append(frame.to_ndarray().reshape(-1))
    return np.concatenate(chunks)


def _peaks(signal: npt.NDArray[np.int16], rate: int) -> tuple[npt.NDArray[np.float64], float]:
    windowed = signal.astype(np.float64) * np.hanning(len(signal))
    spectrum = np.abs(np.fft.rfft(windowed))
    return spectrum, rate / len(signal)


def _magnitude_at(spectrum: npt.NDArray[np.float64], hz_per_bin: float, freq: float) -> float:
    centre = round(freq / hz_per_bin)
    return float(spectrum[centre - 3 : centre + 4].max())


async def test_two_tones_are_both_in_the_mix() -> None:
    low = ToneAudioTrack(frequency=440, amplitude=0.3)
    high = ToneAudioTrack(frequency=1500, amplitude=0.3, sample_rate=44100, channels=2)
    async with AudioMixer(sample_rate=48000, channels=1) as mixer:
        mixer.add_track(low)
        mixer.add_track(high)  # different rate and layout: resampled on the way in
        await _collect(mixer, 5)  # let both inputs prime
        signal = await _collect(mixer, 25)
    assert _other_tasks() == []
    spectrum, hz = _peaks(signal, 48000)
    peak_low = _magnitude_at(spectrum, hz, 440)
    peak_high = _magnitude_at(spectrum, hz, 1500)
    floor = float(np.median(spectrum))
    assert peak_low > 100 * floor and peak_high > 100 * floor
    assert 0.5 < peak_low / peak_high < 2  # equal amplitudes in, comparable out
    # Nothing else loud: the strongest bin away from both tones is far weaker.
    mask = np.ones_like(spectrum, dtype=bool)
    for freq in (440, 1500):
        centre = round(freq / hz)
        mask[centre - 15 : centre + 16] = False
    assert spectrum[mask].max() < 0.05 * min(peak_low, peak_high)
    for track in (low, high):
        track.stop()


async def test_silence_without_inputs_and_pacing() -> None:
    async with AudioMixer(sample_rate=16000, channels=2, frame_ms=10) as mixer:
        start = time.monotonic()
        frames = [await mixer.output.recv() for _ in range(11)]
        elapsed = time.monotonic() - start
    assert 0.09 <= elapsed < 0.35
    for n, frame in enumerate(frames):
        assert isinstance(frame, av.AudioFrame)
        assert frame.format.name == "s16" and frame.layout.name == "stereo"
        assert frame.sample_rate == 16000 and frame.samples == 160
        assert frame.pts == n * 160 and frame.time_base == fractions.Fraction(1, 16000)
        assert not frame.to_ndarray().any()


class _ConstantTrack(MediaStreamTrack):
    """DC audio at a fixed level: the simplest way to force a sum beyond int16."""

    kind = "audio"

    def __init__(self, level: int) -> None:
        super().__init__()
        self._level = level
        self._tone = ToneAudioTrack()  # borrowed for its pacing only

    async def recv(self) -> av.AudioFrame:
        template = await self._tone.recv()
        data = np.full((1, template.samples), self._level, dtype=np.int16)
        frame = av.AudioFrame.from_ndarray(data, format="s16", layout="mono")
        frame.sample_rate = 48000
        frame.pts = template.pts
        frame.time_base = template.time_base
        return frame


async def test_sum_clips_instead_of_wrapping() -> None:
    tracks = [_ConstantTrack(30000), _ConstantTrack(30000), _ConstantTrack(-20000)]
    async with AudioMixer() as mixer:
        mixer.add_track(tracks[0])
        mixer.add_track(tracks[1])
        await _collect(mixer, 5)
        loud = await _collect(mixer, 5)
        assert loud.max() == 32767 and loud.min() > 0  # 60000 clipped, not wrapped negative
        mixer.add_track(tracks[2])
        await _collect(mixer, 5)
        mixed = await _collect(mixer, 5)
        assert (mixed == 32767).mean() > 0.9  # 40000 still clips
    assert _other_tasks() == []


async def test_buffers_are_bounded_when_nobody_reads() -> None:
    tone = ToneAudioTrack()
    async with AudioMixer() as mixer:
        mixer.add_track(tone)
        await asyncio.sleep(0.45)  # ~22 frames arrive, nobody consumes the output
        buffered = mixer.buffered_ms()
        assert list(buffered.values()) == [pytest.approx(MAX_BUFFER_MS, abs=20)]
        assert tone.frames_sent >= 18  # the reader kept draining the input meanwhile
    tone.stop()


async def test_inputs_come_and_go() -> None:
    a, b = ToneAudioTrack(frequency=300), ToneAudioTrack(frequency=600)
    mixer = AudioMixer()
    mixer.add_track(a)
    mixer.add_track(b)
    assert mixer.input_count == 2
    with pytest.raises(ValueError, match="already"):
        mixer.add_track(a)
    with pytest.raises(ValueError, match="audio"):
        mixer.add_track(PatternVideoTrack())
    await _collect(mixer, 3)
    b.stop()  # ended inputs leave by themselves
    await _until(lambda: mixer.input_count == 1)
    mixer.remove_track(a)
    assert mixer.input_count == 0
    mixer.remove_track(a)
    silent = await _collect(mixer, 2)
    assert not silent.any()
    await mixer.aclose()
    await mixer.aclose()
    assert _other_tasks() == []
    with pytest.raises(MediaStreamError):
        await mixer.output.recv()
    with pytest.raises(ClosedError):
        mixer.add_track(a)
    a.stop()


def test_mixer_validates_arguments() -> None:
    with pytest.raises(ValueError, match="sample_rate"):
        AudioMixer(sample_rate=100)
    with pytest.raises(ValueError, match="channels"):
        AudioMixer(channels=6)
    with pytest.raises(ValueError, match="frame_ms"):
        AudioMixer(sample_rate=44100, frame_ms=3)
