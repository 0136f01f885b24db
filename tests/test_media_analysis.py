"""media.analysis: exact counts from synthetic sequences, quality from regenerated frames,
audio silences/glitches/beeps (also through a real Opus encode/decode), and TrackProbe on local
tracks. No timing assertions: arrival times are synthetic except in the probe tests."""

from __future__ import annotations

import asyncio
import fractions
import math
import threading

import av
import numpy as np
import numpy.typing as npt
import pytest
from aiortc import MediaStreamTrack

from media import MediaClock, MediaError, PatternVideoTrack, ToneAudioTrack
from media._yuv import planes_of
from media.analysis import (
    AudioAnalyzer,
    FrameRecord,
    PatternSpec,
    TrackProbe,
    VideoAnalyzer,
    luma_ssim,
)
from media.timecode import Stamp, stamp_luma

SPEC = PatternSpec(label="bot 1", seed=3, flash_every_s=1.0)
T0 = 1_700_000_000.0  # synthetic receiver wall clock (s)
CAPTURE0 = 1_699_999_999_900  # synthetic sender capture clock (ms)


def _capture(n: int) -> int:
    return CAPTURE0 + round(n * 1000 / 30)


# --- video -----------------------------------------------------------------------------------


def test_synthetic_sequence_gives_exact_counts_and_latencies() -> None:
    """Drops 10-11, a duplicate of 20, 31 before 30, and a 400 ms stall before frame 40."""
    order = [n for n in range(60) if n not in (10, 11)]
    order.insert(order.index(20) + 1, 20)
    i30 = order.index(30)
    order[i30], order[i30 + 1] = 31, 30
    analyzer = VideoAnalyzer(reference=SPEC)
    arrival = T0
    expected_latency = {}
    for n in order:
        arrival += 0.4 if n == 40 else 1 / 30
        record = analyzer.add(SPEC.render(n, _capture(n)), arrival)
        assert record.frame_number == n
        assert record.latency_ms == pytest.approx(arrival * 1000 - _capture(n), abs=1e-3)
        expected_latency.setdefault(n, arrival * 1000 - _capture(n))
    summary = analyzer.summary()
    assert (summary.frames, summary.stamped) == (len(order), len(order))
    assert summary.drops == 2
    assert summary.duplicates == 1
    assert summary.reordered == 1
    assert summary.freezes == 1
    assert summary.max_freeze_ms == pytest.approx(400.0)
    assert summary.frozen_ms == pytest.approx(400.0)
    assert summary.freeze_list[0][1] == pytest.approx(400.0)
    lat = np.array(list(expected_latency.values()))
    assert summary.latency_ms is not None
    assert summary.latency_ms["min"] == pytest.approx(lat.min(), abs=1e-3)
    assert summary.latency_ms["max"] == pytest.approx(lat.max(), abs=1e-3)
    assert summary.latency_ms["median"] == pytest.approx(np.median(lat), abs=1e-3)
    flags = [(r.frame_number, r.duplicate, r.reordered) for r in analyzer.records]
    assert (20, True, False) in flags
    assert (30, False, True) in flags
    assert summary.flashes == 2  # frames 0 and 30 (media time 0 s and 1 s)
    assert analyzer.flashes == [r for r in analyzer.records if r.flash]
    assert summary.as_dict()["drops"] == 2


def test_reordered_frame_is_not_a_drop_and_duplicates_are_not_new() -> None:
    analyzer = VideoAnalyzer()
    arrivals = [(0, 0.00), (2, 0.03), (1, 0.06), (3, 0.09)]
    arrivals += [(3, 0.09 + 0.05 * k) for k in range(1, 6)]  # repeats for 250 ms
    arrivals += [(4, 0.40)]
    for n, t in arrivals:
        analyzer.add(SPEC.render(n, _capture(n)), T0 + t)
    summary = analyzer.summary()
    assert (summary.drops, summary.reordered, summary.duplicates) == (0, 1, 5)
    assert summary.freezes == 1
    assert summary.max_freeze_ms == pytest.approx(310.0)


def test_fps_series_and_trailing_freeze() -> None:
    analyzer = VideoAnalyzer()
    for n in range(90):
        analyzer.add(SPEC.render(n, _capture(n)), T0 + n / 30)
    summary = analyzer.summary()
    assert summary.fps == pytest.approx(30.0)
    assert summary.fps_series == [(0.0, 30.0), (1.0, 30.0)]
    assert summary.freezes == 0
    last = T0 + 89 / 30
    assert analyzer.summary(end_s=last + 0.1).freezes == 0
    stalled = analyzer.summary(end_s=last + 0.5)
    assert stalled.freezes == 1
    assert stalled.max_freeze_ms == pytest.approx(500.0)


def test_unstamped_frames_count_but_are_not_stamped() -> None:
    analyzer = VideoAnalyzer(reference=SPEC)
    blank = av.VideoFrame(640, 480, "yuv420p")
    for plane in blank.planes:
        np.frombuffer(memoryview(plane), dtype=np.uint8)[:] = 128
    analyzer.add(SPEC.render(0, _capture(0)), T0)
    record = analyzer.add(blank, T0 + 0.03)
    assert record.frame_number is None and record.psnr_db is None
    summary = analyzer.summary()
    assert (summary.frames, summary.stamped, summary.drops) == (2, 1, 0)


def test_exact_frames_have_psnr_99_and_ssim_1() -> None:
    analyzer = VideoAnalyzer(reference=SPEC)
    for n in range(0, 40, 3):
        record = analyzer.add(SPEC.render(n, _capture(n)), T0 + n / 30)
        assert record.psnr_db == 99.0
        assert record.ssim == pytest.approx(1.0)
    summary = analyzer.summary()
    assert summary.psnr_db == {"mean": 99.0, "min": 99.0}


def _x264_round_trip(frames: list[av.VideoFrame], crf: int) -> list[av.VideoFrame]:
    enc = av.CodecContext.create("libx264", "w")
    assert isinstance(enc, av.video.codeccontext.VideoCodecContext)
    enc.width, enc.height, enc.pix_fmt = 640, 480, "yuv420p"
    enc.time_base = fractions.Fraction(1, 30)
    enc.options = {"crf": str(crf), "preset": "ultrafast", "tune": "zerolatency"}
    dec = av.CodecContext.create("h264", "r")
    out: list[av.VideoFrame] = []
    for i, frame in enumerate([*frames, None]):
        if frame is not None:
            frame.pts = i
        for packet in enc.encode(frame):
            out.extend(dec.decode(packet))
    out.extend(dec.decode(None))
    return out


def test_lossy_encode_lowers_psnr_and_a_wrong_frame_much_more() -> None:
    frames = [SPEC.render(n, _capture(n)) for n in range(20)]
    decoded = _x264_round_trip(frames, crf=38)
    assert len(decoded) == 20
    lossy = VideoAnalyzer(reference=SPEC)
    for n, frame in enumerate(decoded):
        lossy.add(frame, T0 + n / 30)
    summary = lossy.summary()
    assert summary.stamped == 20 and summary.drops == 0
    assert summary.psnr_db is not None and summary.ssim is not None
    assert 25.0 < summary.psnr_db["mean"] < 60.0
    assert 0.0 < summary.ssim["min"] <= summary.ssim["mean"] < 1.0

    # The picture of frame 50 carrying the stamp of frame 5: a wrong frame.
    wrong = SPEC.render(50, _capture(5))
    stamp_luma(planes_of(wrong)[0], Stamp(5, _capture(5)))
    record = VideoAnalyzer(reference=SPEC).add(wrong, T0)
    assert record.frame_number == 5
    assert record.psnr_db is not None and record.psnr_db < summary.psnr_db["min"] - 5
    assert record.ssim is not None and 0.0 < record.ssim < summary.ssim["min"]


def test_resolution_change_is_detected_and_reference_is_scaled() -> None:
    analyzer = VideoAnalyzer(reference=SPEC)
    for n in range(10):
        frame = SPEC.render(n, _capture(n))
        if n >= 5:
            frame = frame.reformat(width=320, height=240, interpolation="AREA")
        analyzer.add(frame, T0 + n / 30)
    summary = analyzer.summary()
    assert [(w, h) for _, w, h in summary.resolutions] == [(640, 480), (320, 240)]
    assert summary.resolutions[1][0] == pytest.approx(5 / 30)
    small = analyzer.records[-1]
    assert (small.width, small.height) == (320, 240)
    assert small.psnr_db is not None and small.psnr_db > 35.0


def test_flash_frames_are_read_from_the_picture_not_the_frame_number() -> None:
    """On a shared MediaClock the flash frame's number is not a multiple of fps."""
    track = PatternVideoTrack(label="bot 1", seed=3, flash_every_s=1.0, clock=MediaClock())
    analyzer = VideoAnalyzer(reference=SPEC)
    for n in range(40):
        slot = n + 17  # the track joined its clock 17 slots in
        analyzer.add(track.render(n, _capture(n), media_time_s=slot / 30), T0 + n / 30)
    flashes = [r.frame_number for r in analyzer.records if r.flash]
    assert flashes == [13]
    assert all(r.psnr_db == 99.0 for r in analyzer.records)


@pytest.mark.parametrize(("seed", "label", "flash"), [(0, "", None), (5, "bot 5", 2.0)])
def test_pattern_spec_of_a_track_renders_its_frames(
    seed: int, label: str, flash: float | None
) -> None:
    track = PatternVideoTrack(width=320, height=240, fps=15, label=label, seed=seed)
    if flash is not None:
        track = PatternVideoTrack(
            width=320, height=240, fps=15, label=label, seed=seed, flash_every_s=flash
        )
    spec = PatternSpec.of(track)
    assert (spec.seed, spec.label, spec.flash_every_s, spec.fps) == (seed, label, flash, 15.0)
    for n in (0, 7, 30):
        want = track.render(n, 123, media_time_s=n / 15).to_ndarray()
        assert np.array_equal(spec.render(n, 123).to_ndarray(), want)


def test_quality_every_and_ssim_every_thin_out_the_costly_part() -> None:
    analyzer = VideoAnalyzer(reference=SPEC, quality_every=2, ssim_every=2)
    for n in range(8):
        analyzer.add(SPEC.render(n, _capture(n)), T0 + n / 30)
    psnr = [r.psnr_db is not None for r in analyzer.records]
    ssim = [r.ssim is not None for r in analyzer.records]
    assert psnr == [True, False] * 4
    assert ssim == [True, False, False, False] * 2


def test_ssim_is_in_unit_interval() -> None:
    a = planes_of(SPEC.render(0, 0))[0].copy()
    rng = np.random.default_rng(1)
    noisy = np.clip(a + rng.normal(0, 20, a.shape), 0, 255).astype(np.uint8)
    value = luma_ssim(a, noisy)
    assert 0.0 < value < 0.9
    assert luma_ssim(a, a) == pytest.approx(1.0)


# --- audio -----------------------------------------------------------------------------------


def _frames_of(
    x: npt.NDArray[np.float64], *, rate: int = 48000, size: int = 960
) -> list[av.AudioFrame]:
    out = []
    for k in range(len(x) // size):
        pcm = np.round(x[k * size : (k + 1) * size] * 32767).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = rate
        frame.pts = k * size
        frame.time_base = fractions.Fraction(1, rate)
        out.append(frame)
    return out


def _feed(
    analyzer: AudioAnalyzer, frames: list[av.AudioFrame], delay_s: float = 0.0
) -> list[float]:
    """Arrival = T0 + delay + the frame's pts time; returns the arrivals."""
    arrivals = []
    for frame in frames:
        assert frame.pts is not None and frame.time_base is not None
        arrival = T0 + delay_s + float(frame.pts * frame.time_base)
        analyzer.add(frame, arrival)
        arrivals.append(arrival)
    return arrivals


def _sine(
    start: int, count: int, *, phase: float = 0.0, f: float = 440.0
) -> npt.NDArray[np.float64]:
    n = np.arange(start, start + count)
    return 0.25 * np.sin(2 * np.pi * f * n / 48000 + phase)


def _opus_round_trip(frames: list[av.AudioFrame], layout: str, bitrate: int) -> list[av.AudioFrame]:
    enc = av.CodecContext.create("libopus", "w")
    assert isinstance(enc, av.audio.codeccontext.AudioCodecContext)
    enc.sample_rate, enc.layout, enc.format, enc.bit_rate = 48000, layout, "s16", bitrate
    dec = av.CodecContext.create("libopus", "r")
    assert isinstance(dec, av.audio.codeccontext.AudioCodecContext)
    dec.sample_rate, dec.layout = 48000, layout
    out: list[av.AudioFrame] = []
    for frame in [*frames, None]:
        for packet in enc.encode(frame):
            out.extend(dec.decode(packet))
    return out


def test_clean_tone_is_present_with_no_silence_or_glitch() -> None:
    tone = ToneAudioTrack(frequency=440)
    analyzer = AudioAnalyzer(frequency=440)
    _feed(analyzer, [tone.render(k * 960) for k in range(100)])
    summary = analyzer.summary()
    assert summary.present
    assert summary.duration_s == pytest.approx(2.0)
    assert summary.rms_dbfs == pytest.approx(20 * math.log10(0.25 / math.sqrt(2)), abs=0.05)
    assert (summary.silences, summary.glitches, summary.beeps) == ([], 0, [])


def test_silent_stream_is_not_present() -> None:
    analyzer = AudioAnalyzer(frequency=440)
    _feed(analyzer, _frames_of(np.zeros(48000)))
    summary = analyzer.summary()
    assert not summary.present
    assert summary.silences == [(0.0, 1.0)]
    assert summary.as_dict()["rms_dbfs"] is None


@pytest.mark.parametrize("how", ["lost frames", "zeros"])
def test_injected_gap_is_a_silence_with_the_right_start_and_length(how: str) -> None:
    x = _sine(0, 96000)
    start, length = 38400, 4800  # 0.8 s, 100 ms: whole frames 40-44
    if how == "zeros":
        x[start : start + length] = 0.0
        frames = _frames_of(x)
    else:
        frames = [f for k, f in enumerate(_frames_of(x)) if not 40 <= k < 45]
    analyzer = AudioAnalyzer(frequency=440)
    _feed(analyzer, frames)
    summary = analyzer.summary()
    assert len(summary.silences) == 1
    got_start, got_length = summary.silences[0]
    assert got_start == pytest.approx(0.8, abs=0.001)
    assert got_length == pytest.approx(0.1, abs=0.001)
    assert summary.glitches == 0


@pytest.mark.parametrize("phase", [math.pi / 2, math.pi, 2.5])
def test_phase_jump_is_one_glitch(phase: float) -> None:
    x = np.concatenate([_sine(0, 24010), _sine(24010, 23990, phase=phase)])
    analyzer = AudioAnalyzer(frequency=440)
    _feed(analyzer, _frames_of(x))
    summary = analyzer.summary()
    assert summary.glitches == 1
    assert summary.glitch_at[0] == pytest.approx(24010 / 48000, abs=0.001)
    assert summary.silences == []


def test_frequency_is_estimated_when_not_given() -> None:
    x = np.concatenate([_sine(0, 48000, f=1000.0), _sine(48000, 48000, phase=2.0, f=1000.0)])
    analyzer = AudioAnalyzer()
    _feed(analyzer, _frames_of(x))
    summary = analyzer.summary()
    assert summary.frequency == pytest.approx(1000.0, rel=1e-3)
    assert summary.glitches == 1


@pytest.mark.parametrize(("layout", "bitrate"), [("mono", 16000), ("stereo", 32000)])
def test_clean_tone_through_opus_has_no_glitch(layout: str, bitrate: int) -> None:
    tone = ToneAudioTrack(frequency=440, channels=1 if layout == "mono" else 2)
    decoded = _opus_round_trip([tone.render(k * 960) for k in range(150)], layout, bitrate)
    analyzer = AudioAnalyzer(frequency=440)
    _feed(analyzer, decoded)
    summary = analyzer.summary()
    assert summary.present and summary.glitches == 0 and summary.silences == []


def test_phase_jump_through_opus_is_still_a_glitch() -> None:
    x = np.concatenate([_sine(0, 48000), _sine(48000, 48000, phase=math.pi / 2)])
    decoded = _opus_round_trip(_frames_of(x), "mono", 32000)
    analyzer = AudioAnalyzer(frequency=440)
    _feed(analyzer, decoded)
    assert analyzer.summary().glitches == 1


@pytest.mark.parametrize(
    ("rate", "channels", "codec"), [(48000, 1, False), (44100, 2, False), (48000, 2, True)]
)
def test_beep_onsets_within_1ms(rate: int, channels: int, codec: bool) -> None:
    tone = ToneAudioTrack(sample_rate=rate, channels=channels, beep_every_s=1.0, beep_s=0.1)
    size = rate // 50
    frames = [tone.render(k * size) for k in range(int(4.5 * 50))]
    if codec:
        frames = _opus_round_trip(frames, "stereo", 32000)
    analyzer = AudioAnalyzer(beep_every_s=1.0, beep_s=0.1)
    _feed(analyzer, frames, delay_s=0.25)
    summary = analyzer.summary()
    truth = [T0 + 0.25 + k for k in (1, 2, 3, 4)]
    assert len(summary.beeps) == 4
    assert np.max(np.abs(np.array(summary.beeps) - truth)) < 0.001
    assert summary.silences == [] and summary.glitches == 0


def test_beeps_as_planar_float_at_another_rate() -> None:
    tone = ToneAudioTrack(beep_every_s=0.5, beep_s=0.1)
    resampler = av.AudioResampler(format="fltp", layout="stereo", rate=16000)
    frames: list[av.AudioFrame] = []
    for k in range(100):
        frames.extend(resampler.resample(tone.render(k * 960)))
    analyzer = AudioAnalyzer(beep_every_s=0.5)
    _feed(analyzer, frames)
    beeps = np.array(analyzer.summary().beeps) - T0
    assert len(beeps) == 3
    assert np.max(np.abs(beeps - [0.5, 1.0, 1.5])) < 0.002  # the resampler's filter delay


def test_missing_beep_is_a_silence_and_not_an_onset() -> None:
    tone = ToneAudioTrack(beep_every_s=1.0, beep_s=0.1)
    frames = [tone.render(k * 960) for k in range(250) if not 100 <= k < 103]  # 2.00-2.06 s
    analyzer = AudioAnalyzer(beep_every_s=1.0, beep_s=0.1)
    _feed(analyzer, frames)
    summary = analyzer.summary()
    assert [round(b - T0, 3) for b in summary.beeps] == [1.0, 3.0, 4.0]
    assert len(summary.silences) == 1
    assert summary.silences[0][0] == pytest.approx(2.0, abs=0.001)
    assert summary.silences[0][1] == pytest.approx(0.06, abs=0.001)


def _flash(n: int, capture_s: float, arrival_s: float) -> FrameRecord:
    return FrameRecord(
        arrival_s,
        n,
        round(capture_s * 1000),
        arrival_s * 1000 - capture_s * 1000,
        640,
        480,
        False,
        False,
        None,
        None,
        True,
    )


def test_audio_latency_and_av_offset_from_flash_records() -> None:
    """Beep k captured at C + k s arrives 120 ms later; flash k arrives 80 ms after capture."""
    tone = ToneAudioTrack(beep_every_s=1.0, beep_s=0.1)
    analyzer = AudioAnalyzer(beep_every_s=1.0)
    _feed(analyzer, [tone.render(k * 960) for k in range(250)], delay_s=0.12)
    capture0 = T0  # sample 0 was captured at T0 (the sender's clock = the receiver's)
    flashes = [_flash(30 * k, capture0 + k, capture0 + k + 0.08) for k in (1, 2, 3, 4)]
    not_flash = FrameRecord(T0 + 1.1, 33, 0, None, 640, 480, False, False, None, None)
    summary = analyzer.summary(flashes=[*flashes, flashes[0], not_flash])
    assert summary.av_pairs == 4
    assert summary.latency_ms is not None and summary.av_offset_ms is not None
    assert summary.latency_ms["median"] == pytest.approx(120.0, abs=1.0)
    assert summary.latency_ms["max"] == pytest.approx(120.0, abs=1.0)
    assert summary.av_offset_ms == pytest.approx(40.0, abs=1.0)
    assert summary.as_dict()["av_pairs"] == 4


# --- TrackProbe ------------------------------------------------------------------------------


class _GapCounter(MediaStreamTrack):
    """Passes a paced source through, counting the pts gaps it left (slots a starved loop
    skipped): each may cut a beep, which the analyzer rightly calls a glitch."""

    def __init__(self, inner: ToneAudioTrack) -> None:
        super().__init__()
        self.kind = inner.kind
        self._inner = inner
        self._next_pts: int | None = None
        self.gaps = 0

    async def recv(self) -> av.AudioFrame:
        frame = await self._inner.recv()
        assert frame.pts is not None
        self.gaps += self._next_pts is not None and frame.pts != self._next_pts
        self._next_pts = frame.pts + frame.samples
        return frame


async def test_probe_on_local_tracks() -> None:
    clock = MediaClock()
    video = PatternVideoTrack(label="probe", seed=2, flash_every_s=1.0, clock=clock)
    tone = ToneAudioTrack(beep_every_s=1.0, clock=clock)
    audio = _GapCounter(tone)
    async with (
        TrackProbe(video, reference=PatternSpec.of(video), label="v", keep_worst=2) as vprobe,
        TrackProbe(
            audio, beep_every_s=1.0, label="a", sync_flashes=lambda: vprobe.flashes
        ) as aprobe,
    ):
        await vprobe.wait_frames(70, timeout_s=20)
        await aprobe.wait_frames(120, timeout_s=20)
    await vprobe.aclose()  # idempotent
    vs = vprobe.video_summary()
    assert vs.frames >= 70 and vs.stamped == vs.frames
    assert vs.drops == 0 and vs.duplicates == 0 and vs.reordered == 0
    assert vs.analysis_dropped == 0
    assert vs.latency_ms is not None and vs.latency_ms["min"] >= 0.0
    assert vs.psnr_db is not None and vs.psnr_db["min"] == 99.0
    assert vs.ssim is not None
    assert vs.flashes >= 1
    assert len(vprobe.worst_frames()) == 2
    assert vprobe.flashes == [r for r in vprobe.records if r.flash and not r.duplicate]
    summary = aprobe.audio_summary(vprobe.flashes)
    assert aprobe.audio_summary() == summary  # sync_flashes: the same pairs by default
    assert summary.present and summary.glitches <= audio.gaps, (summary.glitch_at, audio.gaps)
    assert len(summary.beeps) >= 1
    assert summary.av_pairs >= 1
    assert summary.latency_ms is not None and summary.latency_ms["min"] > -5.0
    with pytest.raises(ValueError, match="no audio summary"):
        vprobe.audio_summary()
    assert not [t for t in threading.enumerate() if t.name.startswith("probe-")]
    video.stop()
    tone.stop()


async def test_probe_wait_frames_fails_fast_when_the_track_ends() -> None:
    video = PatternVideoTrack(width=64, height=64, fps=30)
    probe = TrackProbe(video, label="short")
    probe.start()
    await probe.wait_frames(2, timeout_s=10)
    video.stop()
    with pytest.raises(TimeoutError, match="ended after"):
        await probe.wait_frames(10_000, timeout_s=10)
    assert probe.ended
    await probe.aclose()
    assert probe.video_summary().frames >= 2


async def test_probe_wait_frames_timeout_says_how_many() -> None:
    video = PatternVideoTrack(width=64, height=64, fps=5)
    async with TrackProbe(video, label="slow") as probe:
        with pytest.raises(TimeoutError, match="of 1000 frames after"):
            await probe.wait_frames(1000, timeout_s=0.3)
    video.stop()
    await asyncio.sleep(0)


async def test_a_probe_whose_analysis_fails_says_so_instead_of_hanging(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    track = PatternVideoTrack(width=160, height=120)
    probe = TrackProbe(track, label="cam")

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("cannot read this frame")

    monkeypatch.setattr(probe._video, "add", broken)
    try:
        with pytest.raises(MediaError, match="'cam': analysis failed: RuntimeError: cannot read"):
            await probe.wait_frames(5, timeout_s=20)
        with pytest.raises(MediaError, match="analysis failed"):
            probe.video_summary()
    finally:
        await probe.aclose()
        track.stop()
