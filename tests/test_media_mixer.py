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

from .test_media_pacing import assert_paced


def _other_tasks() -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]


async def _until(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    """Wait for a condition; the timeout only guards against a hang, it is no speed target."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


class _FedTrack(MediaStreamTrack):
    """Audio handed over by the test, frame by frame: no real-time pacing, no timing gaps."""

    kind = "audio"

    def __init__(self, make: Callable[[int], av.AudioFrame]) -> None:
        super().__init__()
        self._make = make  # frame index -> frame
        self._queue: asyncio.Queue[av.AudioFrame | None] = asyncio.Queue()
        self.fed = 0

    async def recv(self) -> av.AudioFrame:
        frame = await self._queue.get()
        if frame is None or self.readyState != "live":
            raise MediaStreamError  # stopped: the end, as for any track
        return frame

    def stop(self) -> None:
        super().stop()
        self._queue.put_nowait(None)

    async def feed_one(self) -> None:
        """Hand over the next frame and wait until the mixer has taken it in."""
        self._queue.put_nowait(self._make(self.fed))
        self.fed += 1
        await _until(self._queue.empty)


def _tone_frames(tone: ToneAudioTrack) -> Callable[[int], av.AudioFrame]:
    return lambda i: tone.render(i * tone.render(0).samples)


async def _collect(
    mixer: AudioMixer, frames: int, fed: tuple[_FedTrack, ...] = ()
) -> npt.NDArray[np.int16]:
    """Mixed samples of ``frames`` output frames.

    Fed inputs are topped up to two frames (the mixer's priming level) before each output frame,
    so they never run dry: the mix is exactly the inputs' audio, however late this loop runs.
    """
    chunks = []
    for _ in range(frames):
        for track in fed:
            while mixer.buffered_ms()[track.id] < 40:
                await track.feed_one()
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
    low = _FedTrack(_tone_frames(ToneAudioTrack(frequency=440, amplitude=0.3)))
    high = _FedTrack(
        _tone_frames(ToneAudioTrack(frequency=1500, amplitude=0.3, sample_rate=44100, channels=2))
    )
    async with AudioMixer(sample_rate=48000, channels=1) as mixer:
        mixer.add_track(low)
        mixer.add_track(high)  # different rate and layout: resampled on the way in
        await _collect(mixer, 5, (low, high))  # past the resampler's start
        signal = await _collect(mixer, 25, (low, high))
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


async def test_silence_without_inputs_and_pacing() -> None:
    async with AudioMixer(sample_rate=16000, channels=2, frame_ms=10) as mixer:
        t0 = time.monotonic()
        frames, times = [], []
        for _ in range(11):
            frames.append(await mixer.output.recv())
            times.append(time.monotonic())
    # 10 ms slots in real time (pts count samples): never ahead, never a stale burst.
    assert_paced([f.pts for f in frames], times, t0=t0, step=160, period=0.01)
    for frame in frames:
        assert isinstance(frame, av.AudioFrame)
        assert frame.format.name == "s16" and frame.layout.name == "stereo"
        assert frame.sample_rate == 16000 and frame.samples == 160
        assert frame.time_base == fractions.Fraction(1, 16000)
        assert not frame.to_ndarray().any()


def _constant(level: int) -> Callable[[int], av.AudioFrame]:
    """DC audio at a fixed level: the simplest way to force a sum beyond int16."""

    def make(index: int) -> av.AudioFrame:
        data = np.full((1, 960), level, dtype=np.int16)
        frame = av.AudioFrame.from_ndarray(data, format="s16", layout="mono")
        frame.sample_rate = 48000
        frame.pts = index * 960
        frame.time_base = fractions.Fraction(1, 48000)
        return frame

    return make


async def test_sum_clips_instead_of_wrapping() -> None:
    tracks = [
        _FedTrack(_constant(30000)),
        _FedTrack(_constant(30000)),
        _FedTrack(_constant(-20000)),
    ]
    async with AudioMixer() as mixer:
        mixer.add_track(tracks[0])
        mixer.add_track(tracks[1])
        loud = await _collect(mixer, 5, (tracks[0], tracks[1]))
        assert (loud == 32767).all()  # 60000 clipped, not wrapped negative
        mixer.add_track(tracks[2])
        mixed = await _collect(mixer, 5, tuple(tracks))
        assert (mixed == 32767).all()  # 40000 still clips
        tracks[1].stop()  # an ended input leaves; the other two sum to 10000, unclipped
        await _until(lambda: mixer.input_count == 2)
        assert (await _collect(mixer, 5, (tracks[0], tracks[2])) == 10000).all()
    assert _other_tasks() == []


async def test_buffers_are_bounded_when_nobody_reads() -> None:
    tone = ToneAudioTrack()
    async with AudioMixer() as mixer:
        mixer.add_track(tone)
        # Nobody consumes the output; the reader keeps draining the input regardless, until
        # far more than the cap has arrived.
        await _until(lambda: tone.frames_sent * 20 >= 2 * MAX_BUFFER_MS)
        buffered = mixer.buffered_ms()
        assert list(buffered.values()) == [pytest.approx(MAX_BUFFER_MS, abs=20)]
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
