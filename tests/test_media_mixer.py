"""AudioMixer: tones in at known amplitudes come out at them (resampled, spread to stereo), the
limiter keeps every sample under full scale, silence is exact zeros, per-input levels, labels,
bounded and trimmed buffers, shared-clock pts that match arrival times, clean-up."""

from __future__ import annotations

import asyncio
import fractions
import itertools
import math
import time
import types
from collections.abc import Callable

import av
import numpy as np
import numpy.typing as npt
import pytest
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from media import AudioMixer, ClosedError, PatternVideoTrack, ToneAudioTrack, _pacing
from media._limiter import Limiter
from media.clock import MediaClock
from media.mixer import CEILING_DBFS, LEVEL_FLOOR_DB, MAX_BUFFER_MS

from .test_media_pacing import assert_paced

_CEILING = 10 ** (CEILING_DBFS / 20) * 32768  # the output's peak limit in s16 units


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

    def __init__(self, make: Callable[[int], av.AudioFrame], label: str | None = None) -> None:
        super().__init__()
        self._make = make  # frame index -> frame
        self.label = self.id if label is None else label  # the mixer's name for it
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


def _tone(label: str | None = None, **params: float) -> _FedTrack:
    tone = ToneAudioTrack(**params)  # type: ignore[arg-type]
    step = tone.render(0).samples
    return _FedTrack(lambda i: tone.render(i * step), label)


def _frames_of(
    planes: npt.NDArray[np.float32], *, fmt: str, rate: int = 48000, samples: int = 960
) -> Callable[[int], av.AudioFrame]:
    """Frame i of a long (channels x n) float signal, in sample format ``fmt``."""
    layout = "mono" if len(planes) == 1 else "stereo"

    def make(index: int) -> av.AudioFrame:
        chunk = planes[:, index * samples : (index + 1) * samples]
        if fmt == "s16":
            data = np.round(chunk.T * 32767).astype(np.int16).reshape(1, -1)
        else:
            data = np.ascontiguousarray(chunk, dtype=np.float32)  # fltp: one row per channel
        frame = av.AudioFrame.from_ndarray(data, format=fmt, layout=layout)
        frame.sample_rate = rate
        frame.pts = index * samples
        frame.time_base = fractions.Fraction(1, rate)
        return frame

    return make


def _sine(freq: float, amplitude: float, n: int, rate: int = 48000) -> npt.NDArray[np.float32]:
    return (amplitude * np.sin(2 * np.pi * freq * np.arange(n) / rate)).astype(np.float32)


async def _collect(
    mixer: AudioMixer, frames: int, fed: tuple[_FedTrack, ...] = ()
) -> npt.NDArray[np.int16]:
    """Mixed samples (samples x channels) of ``frames`` output frames.

    Fed inputs are topped up to two frames (the mixer's priming level) before each output frame,
    so they never run dry: the mix is exactly the inputs' audio, however late this loop runs.
    """
    chunks = []
    for _ in range(frames):
        for track in fed:
            while mixer.buffered_ms()[track.label] < 40:
                await track.feed_one()
        frame = await mixer.output.recv()
        assert isinstance(frame, av.AudioFrame)
        assert frame.format.name == "s16"
        chunks.append(frame.to_ndarray().reshape(frame.samples, -1))
    return np.concatenate(chunks)


def _amplitude(signal: npt.NDArray[np.int16], freq: float, rate: int = 48000) -> float:
    """Amplitude (fraction of full scale) of the sine at ``freq``, which must sit on a bin."""
    n = len(signal)
    assert (freq * n / rate).is_integer(), "pick a length that puts the tone on an FFT bin"
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / n)
    spectrum = np.abs(np.fft.rfft(signal.astype(np.float64) / 32768 * window))
    return float(2 * spectrum[round(freq * n / rate)] / window.sum())


def _strongest_hz(signal: npt.NDArray[np.int16], rate: int = 48000) -> float:
    spectrum = np.abs(np.fft.rfft(signal.astype(np.float64) * np.hanning(len(signal))))
    return float(np.argmax(spectrum) * rate / len(signal))


_SECOND_HALF = 25  # 25 frames of 20 ms at 48 kHz: 24000 samples, 2 Hz bins


async def test_a_mono_tone_reaches_both_channels_unchanged() -> None:
    tone = ToneAudioTrack(frequency=1000, amplitude=0.25)
    fed = _tone(frequency=1000, amplitude=0.25)
    async with AudioMixer() as mixer:  # 48 kHz stereo by default
        mixer.add_track(fed)
        out = await _collect(mixer, _SECOND_HALF, (fed,))
        assert mixer.gain_reduction_db == 0.0
    assert out.shape == (24000, 2)
    # Below the ceiling the mix is bit-exact: the input's samples, on both channels.
    expected = np.concatenate([tone.render(i * 960).to_ndarray()[0] for i in range(25)])
    assert np.array_equal(out[:, 0], expected) and np.array_equal(out[:, 1], expected)
    assert _amplitude(out[:, 0], 1000) == pytest.approx(0.25, rel=0.01)
    tone.stop()


async def test_two_tones_each_at_its_amplitude() -> None:
    low = _tone(frequency=440, amplitude=0.3)
    high = _tone(frequency=1500, amplitude=0.15, channels=2)
    async with AudioMixer() as mixer:
        mixer.add_track(low)
        mixer.add_track(high)
        out = await _collect(mixer, _SECOND_HALF, (low, high))
    for side in (out[:, 0], out[:, 1]):
        assert _amplitude(side, 440) == pytest.approx(0.3, rel=0.01)
        assert _amplitude(side, 1500) == pytest.approx(0.15, rel=0.01)
        # Nothing else: what is left after removing both tones is tiny.
        n = np.arange(len(side))
        rest = side / 32768 - 0.3 * np.sin(2 * np.pi * 440 * n / 48000)
        rest -= 0.15 * np.sin(2 * np.pi * 1500 * n / 48000)
        assert np.abs(rest).max() < 0.001


@pytest.mark.parametrize("channels", [2, 1])
async def test_other_rates_and_layouts_are_resampled(channels: int) -> None:
    """16 kHz mono and 44.1 kHz stereo inputs keep frequency and amplitude at 48 kHz."""
    narrow = _tone(frequency=1000, amplitude=0.2, sample_rate=16000)
    cd = _tone(frequency=3000, amplitude=0.3, sample_rate=44100, channels=2)
    async with AudioMixer(channels=channels) as mixer:
        mixer.add_track(narrow)
        mixer.add_track(cd)
        await _collect(mixer, 5, (narrow, cd))  # past the resamplers' start
        out = await _collect(mixer, _SECOND_HALF, (narrow, cd))
    assert out.shape == (24000, channels)
    for side in out.T:
        # Mono in is spread to stereo and stereo folded to mono at unity, not at FFmpeg's +-3 dB.
        assert _amplitude(side, 1000) == pytest.approx(0.2, rel=0.02)
        assert _amplitude(side, 3000) == pytest.approx(0.3, rel=0.02)
    if channels == 2:
        assert np.array_equal(out[:, 0], out[:, 1])


async def test_planar_float_input_keeps_its_channels_apart() -> None:
    n = 40 * 960
    planes = np.stack([_sine(1000, 0.2, n), _sine(2000, 0.1, n)])
    fed = _FedTrack(_frames_of(planes, fmt="fltp"))
    async with AudioMixer() as mixer:
        mixer.add_track(fed)
        out = await _collect(mixer, _SECOND_HALF, (fed,))
    left, right = out[:, 0], out[:, 1]
    assert _amplitude(left, 1000) == pytest.approx(0.2, rel=0.01)
    assert _amplitude(right, 2000) == pytest.approx(0.1, rel=0.01)
    assert _amplitude(left, 2000) < 0.001 and _amplitude(right, 1000) < 0.001


async def test_loud_in_phase_tones_are_limited_not_clipped() -> None:
    loud = [_tone(frequency=1000, amplitude=0.8) for _ in range(3)]  # 2.4 x full scale summed
    quiet_wave = ToneAudioTrack(frequency=1000, amplitude=0.8)
    async with AudioMixer() as mixer:
        for track in loud:
            mixer.add_track(track)
        out = await _collect(mixer, _SECOND_HALF, tuple(loud))
        peak = int(np.abs(out.astype(np.int32)).max())
        assert peak <= _CEILING + 1  # never beyond the ceiling, let alone full scale
        assert peak >= 0.97 * _CEILING  # limited to the ceiling, not squashed or silenced
        assert mixer.gain_reduction_db == pytest.approx(20 * math.log10(2.4 / 0.98855), abs=0.1)
        # A limiter, not a clipper: still a clean sine, no odd harmonics from flattened peaks.
        settled = out[960:, 0]  # after the first frame's attack
        settled = settled[: 23 * 960]  # whole 2 Hz bins
        assert _amplitude(settled, 1000) == pytest.approx(_CEILING / 32768, rel=0.02)
        assert _amplitude(settled, 3000) < 0.001 and _amplitude(settled, 5000) < 0.001
        # Two inputs leave: the gain recovers smoothly, then the one left passes untouched.
        for track in loud[1:]:
            mixer.remove_track(track)
        reductions = []
        while mixer.gain_reduction_db > 0:
            await _collect(mixer, 1, (loud[0],))
            reductions.append(mixer.gain_reduction_db)
        assert len(reductions) > 5 and reductions == sorted(reductions, reverse=True)
        first = loud[0].fed * 960 - round(mixer.buffered_ms()[loud[0].id] * 48)
        out = await _collect(mixer, 3, (loud[0],))
    expected = np.concatenate(
        [quiet_wave.render(first + i * 960).to_ndarray()[0] for i in range(3)]
    )
    assert np.array_equal(out[:, 0], expected)
    quiet_wave.stop()


def _constant(level: int) -> Callable[[int], av.AudioFrame]:
    """DC audio at a fixed level: the simplest way to force a sum beyond int16."""
    return _frames_of(np.full((1, 1000 * 960), level / 32767, dtype=np.float32), fmt="s16")


async def test_sum_never_wraps_and_recovers_exactly() -> None:
    tracks = [
        _FedTrack(_constant(30000)),
        _FedTrack(_constant(30000)),
        _FedTrack(_constant(-20000)),
    ]
    async with AudioMixer(channels=1) as mixer:
        mixer.add_track(tracks[0])
        mixer.add_track(tracks[1])
        loud = await _collect(mixer, 5, (tracks[0], tracks[1]))
        assert loud.min() > 30000 and loud.max() <= _CEILING + 1  # 60000: limited, not wrapped
        mixer.add_track(tracks[2])
        mixed = await _collect(mixer, 5, tuple(tracks))
        assert mixed.min() > 0 and mixed.max() <= _CEILING + 1  # 40000: still limited
        tracks[1].stop()  # an ended input leaves; the other two sum to 10000
        await _until(lambda: mixer.input_count == 2)
        while mixer.gain_reduction_db > 0:
            await _collect(mixer, 1, (tracks[0], tracks[2]))
        assert (await _collect(mixer, 5, (tracks[0], tracks[2])) == 10000).all()
    assert _other_tasks() == []


def test_limiter_never_lets_a_sample_past_the_ceiling() -> None:
    """Random bursts, jumps and quiet spells: no sample over, and unity is exact again after."""
    rng = np.random.default_rng(7)
    limiter = Limiter(20, 960)
    ceiling = 10 ** (CEILING_DBFS / 20)
    for index in range(400):
        scale = float(rng.choice([0.05, 0.5, 0.9, 1.5, 4.0, 20.0]))
        frame = (rng.standard_normal((960, 2)) * scale / 3).astype(np.float32)
        if index % 7 == 0:
            frame[rng.integers(960)] = scale  # a lone spike anywhere in the frame
        limiter.process(frame)
        assert np.abs(frame).max() <= ceiling * (1 + 1e-6), index
    quiet = np.full((960, 2), 0.5, dtype=np.float32)
    for _ in range(100):  # well past the release
        limiter.process(quiet.copy())
    assert limiter.reduction_db == 0.0
    frame = quiet.copy()
    limiter.process(frame)
    assert np.array_equal(frame, quiet)


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


async def test_levels_follow_each_input() -> None:
    loud = _tone("alice", frequency=500, amplitude=0.5)
    quiet = _tone("bob", frequency=700, amplitude=0.05, sample_rate=16000)
    mute = _FedTrack(_constant(0), "carol")
    async with AudioMixer() as mixer:
        for track in (loud, quiet, mute):
            mixer.add_track(track, label=track.label)
        assert mixer.levels() == dict.fromkeys(["alice", "bob", "carol"], LEVEL_FLOOR_DB)
        await _collect(mixer, 12, (loud, quiet, mute))  # more than a level window
        levels = mixer.levels()
        assert levels["alice"] == pytest.approx(20 * math.log10(0.5 / math.sqrt(2)), abs=1)
        assert levels["bob"] == pytest.approx(20 * math.log10(0.05 / math.sqrt(2)), abs=1)
        assert levels["carol"] == LEVEL_FLOOR_DB
        # Alice stops sending (still an input): her audio drains, then she reads as silence.
        for _ in range(4):  # what alice had buffered
            await _collect(mixer, 1, (quiet, mute))
        assert mixer.buffered_ms()["alice"] == 0
        await _collect(mixer, 10, (quiet, mute))
        assert mixer.input_count == 3
        assert mixer.levels()["alice"] == LEVEL_FLOOR_DB
        assert mixer.levels()["bob"] == pytest.approx(levels["bob"], abs=1)
    for track in (loud, quiet, mute):
        track.stop()


async def test_inputs_that_stop_sending_give_exact_silence() -> None:
    fed = _tone(frequency=1000, amplitude=0.9)
    async with AudioMixer() as mixer:
        mixer.add_track(fed)
        for _ in range(3):
            await fed.feed_one()
        sound = await _collect(mixer, 5)
        assert np.abs(sound.astype(np.int32)).max() > 20000
        assert mixer.buffered_ms()[fed.id] == 0
        for _ in range(3):
            assert not (await _collect(mixer, 1)).any()  # starved: zeros, not noise or a tail
        assert mixer.input_count == 1
    fed.stop()


async def test_labels_default_to_the_track_id_and_are_unique() -> None:
    a, b, c = (_FedTrack(_constant(0)) for _ in range(3))
    async with AudioMixer() as mixer:
        mixer.add_track(a)
        mixer.add_track(b, label="bob")
        with pytest.raises(ValueError, match="label 'bob'"):
            mixer.add_track(c, label="bob")
        with pytest.raises(ValueError, match="label"):
            mixer.add_track(c, label=a.id)
        assert mixer.input_count == 2
        assert set(mixer.levels()) == set(mixer.buffered_ms()) == {a.id, "bob"}
        mixer.remove_track(b)
        mixer.add_track(c, label="bob")  # free again
        assert set(mixer.levels()) == {a.id, "bob"}
    for track in (a, b, c):
        track.stop()


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


async def test_lasting_extra_latency_is_trimmed() -> None:
    """A burst (say, after a stall) that never drains is cut back to the priming level."""
    fed = _tone(frequency=1000, amplitude=0.2)
    async with AudioMixer() as mixer:
        mixer.add_track(fed)
        for _ in range(2):
            await fed.feed_one()

        async def realtime_step() -> float:  # one frame in per frame out, as a live source
            await fed.feed_one()
            await _collect(mixer, 1)
            return mixer.buffered_ms()[fed.id]

        steady = [await realtime_step() for _ in range(55)]
        assert max(steady) <= 40  # over a second at the normal level: never trimmed
        for _ in range(6):  # 120 ms arrive at once, then the source goes on in real time
            await fed.feed_one()
        backlog = [await realtime_step() for _ in range(10)]
        assert min(backlog) >= 140  # a burst is not cut at once: it may be jitter
        for _ in range(100):  # the next full second with the backlog in place cuts it
            if await realtime_step() <= 40:
                break
        else:
            pytest.fail("the backlog was never trimmed")
    fed.stop()


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


async def test_shared_clock_pts_are_media_time_since_the_epoch() -> None:
    clock = MediaClock(time.monotonic() - 3.0)  # an epoch 3 s ago, as for a late-added mixer
    async with AudioMixer(clock=clock) as mixer:
        shift = mixer.latency_samples
        assert shift == 2 * 960 - 480  # priming level less half a frame: 30 ms
        asked, frames, seen = [], [], []
        for _ in range(8):
            asked.append(clock.now())
            frames.append(await mixer.output.recv())
            seen.append(clock.now())
    slots = []
    for frame, t_ask, t_seen in zip(frames, asked, seen, strict=True):
        assert frame.pts is not None and (frame.pts + shift) % 960 == 0
        slot = (frame.pts + shift) // 960
        slots.append(slot)
        assert slot * 0.02 <= t_seen + 1e-3  # never handed out before its slot on the clock
        assert slot * 0.02 >= t_ask - 0.02 - 1e-3  # nor a stale one
    assert slots[0] * 0.02 >= 3.0
    assert all(b > a for a, b in itertools.pairwise(slots))


async def test_shared_clock_starts_at_zero_not_before() -> None:
    clock = MediaClock()
    async with AudioMixer(clock=clock) as mixer:
        frames = [await mixer.output.recv() for _ in range(3)]
    # Slots 0 and 1 would have pts before the epoch once shifted back: they are skipped.
    assert all(f.pts is not None and f.pts >= 0 for f in frames), [f.pts for f in frames]


class _FakeTime:
    """Drives ``media._pacing`` (the mixer's only notion of time) by hand."""

    def __init__(self) -> None:
        self.now = 5000.0

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds


@pytest.mark.parametrize("arrival_ms", [1, 10, 19])
async def test_a_sound_gets_the_pts_of_its_arrival(
    monkeypatch: pytest.MonkeyPatch, arrival_ms: int
) -> None:
    """A live input (one 20 ms frame per 20 ms, arriving ``arrival_ms`` after each output slot):
    a click's pts in the mix is within half a frame of the clock time it reached the mixer."""
    fake = _FakeTime()
    monkeypatch.setattr(_pacing, "time", types.SimpleNamespace(monotonic=fake.monotonic))
    monkeypatch.setattr(_pacing, "asyncio", types.SimpleNamespace(sleep=fake.sleep))
    clock = MediaClock(fake.now)
    click_frame, click_at = 6, 300  # frame 6, sample 300

    def make(index: int) -> av.AudioFrame:
        data = np.zeros((1, 960), dtype=np.int16)
        if index == click_frame:
            data[0, click_at] = 16384
        frame = av.AudioFrame.from_ndarray(data, format="s16", layout="mono")
        frame.sample_rate = 48000
        return frame

    fed = _FedTrack(make)
    async with AudioMixer(clock=clock) as mixer:
        mixer.add_track(fed)
        found: int | None = None
        for slot in range(2, 16):
            for index in range(fed.fed, slot):  # frames due before this slot arrive first
                fake.now = clock.epoch + index / 50 + arrival_ms / 1000
                await fed.feed_one()
            fake.now = clock.epoch + slot / 50
            frame = await mixer.output.recv()
            assert isinstance(frame, av.AudioFrame)
            assert frame.pts == slot * 960 - mixer.latency_samples  # contiguous, on the clock
            hits = np.flatnonzero(frame.to_ndarray().reshape(-1, 2)[:, 0])
            if len(hits):
                found = frame.pts + int(hits[0])
    arrived = round((click_frame * 0.02 + arrival_ms / 1000) * 48000) + click_at
    assert found is not None
    assert abs(found - arrived) <= 480, (found, arrived)
    fed.stop()


def test_mixer_validates_arguments() -> None:
    with pytest.raises(ValueError, match="sample_rate"):
        AudioMixer(sample_rate=100)
    with pytest.raises(ValueError, match="channels"):
        AudioMixer(channels=6)
    with pytest.raises(ValueError, match="frame_ms"):
        AudioMixer(sample_rate=44100, frame_ms=3)
