"""Recorder: real files decoded back (frames, stamps, audio, timing), crash safety, errors."""

from __future__ import annotations

import asyncio
import fractions
import itertools
import logging
import signal
import sys
import textwrap
import threading
from pathlib import Path

import av
import pytest
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from media import (
    PatternVideoTrack,
    Recorder,
    RecorderError,
    RecordingInfo,
    Rect,
    ToneAudioTrack,
    fit,
    read_stamp,
)


def _other_tasks() -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]


def _recorder_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("recorder-")]


def _decode(path: Path) -> tuple[list[tuple[float, int | None]], float, list[str]]:
    """(time, stamp number) per video frame, seconds of audio, codec names; tolerates a cut tail."""
    video: list[tuple[float, int | None]] = []
    audio_samples = 0
    rate = 48000
    codecs = []
    with av.open(str(path)) as container:
        codecs = [s.codec_context.name for s in container.streams]
        try:
            for frame in container.decode(*container.streams):
                if isinstance(frame, av.VideoFrame):
                    stamp = read_stamp(frame)
                    video.append((float(frame.time or 0.0), stamp.frame_number if stamp else None))
                elif isinstance(frame, av.AudioFrame):
                    audio_samples += frame.samples
                    rate = frame.sample_rate
        except av.InvalidDataError:
            pass  # a killed recording may end in a partial packet
    return video, audio_samples / rate, codecs


async def _record(path: Path, seconds: float, *, audio: bool = True) -> RecordingInfo:
    video_track = PatternVideoTrack(width=320, height=240, fps=15, label=path.suffix)
    audio_track = ToneAudioTrack() if audio else None
    async with Recorder(path, video=video_track, audio=audio_track, fps=15) as rec:
        await asyncio.sleep(seconds)
    info = await rec.aclose()
    assert await rec.aclose() == info  # idempotent
    video_track.stop()
    if audio_track:
        audio_track.stop()
    return info


async def test_records_every_container(tmp_path: Path) -> None:
    paths = [tmp_path / f"call.{ext}" for ext in ("mkv", "mp4", "webm", "mov")]
    infos = await asyncio.gather(*(_record(p, 2.0) for p in paths))
    assert _other_tasks() == []
    assert _recorder_threads() == []
    expected_codecs = {
        ".mkv": ["h264", "opus"],
        ".mp4": ["h264", "aac"],
        ".mov": ["h264", "aac"],
        ".webm": ["vp8", "opus"],
    }
    for path, info in zip(paths, infos, strict=True):
        assert info.path == path
        assert 26 <= info.video_frames <= 33, info
        assert 90 <= info.audio_frames <= 110, info
        assert info.duration_s == pytest.approx(2.0, abs=0.25)
        assert info.dropped_frames == 0
        video, audio_s, codecs = await asyncio.to_thread(_decode, path)
        assert codecs == expected_codecs[path.suffix]
        assert len(video) == info.video_frames
        numbers = [n for _, n in video]
        assert numbers == list(range(len(video))), f"{path.name}: {numbers}"
        times = [t for t, _ in video]
        assert all(b > a for a, b in itertools.pairwise(times))
        # Real speed: 15 fps content spans (frames - 1) / 15 seconds in the file.
        assert times[-1] - times[0] == pytest.approx((len(video) - 1) / 15, abs=0.15)
        assert audio_s == pytest.approx(2.0, abs=0.25)


async def test_video_only_and_audio_only(tmp_path: Path) -> None:
    video_info = await _record(tmp_path / "video.mkv", 0.6, audio=False)
    video, audio_s, codecs = await asyncio.to_thread(_decode, tmp_path / "video.mkv")
    assert codecs == ["h264"] and audio_s == 0
    assert len(video) == video_info.video_frames >= 7

    tone = ToneAudioTrack(frequency=300)
    async with Recorder(tmp_path / "voice.mp4", video=None, audio=tone) as rec:
        await asyncio.sleep(0.6)
    info = await rec.aclose()
    tone.stop()
    assert info.video_frames == 0 and info.audio_frames >= 25
    video, audio_s, codecs = await asyncio.to_thread(_decode, tmp_path / "voice.mp4")
    assert codecs == ["aac"] and video == []
    assert audio_s == pytest.approx(0.6, abs=0.15)


class _ScriptedTrack(MediaStreamTrack):
    """Pattern frames at 30 fps whose pts jump forward, then reset (like a looping file)."""

    kind = "video"

    def __init__(self, pts_seconds: list[float], size: tuple[int, int] = (320, 240)) -> None:
        super().__init__()
        self._times = pts_seconds
        self._pattern = PatternVideoTrack(width=size[0], height=size[1], fps=30)
        self._big = PatternVideoTrack(width=640, height=360, fps=30)

    async def recv(self) -> av.VideoFrame:
        index = self._pattern.frames_sent
        paced = await self._pattern.recv()  # real-time pacing and stamp numbering
        if index >= len(self._times):
            self.stop()
            raise MediaStreamError  # end of script, the way tracks end
        frame = paced if index % 2 == 0 else self._big.render(index)  # resolution changes too
        frame.pts = round(self._times[index] * 1000)
        frame.time_base = fractions.Fraction(1, 1000)
        return frame


async def test_timestamps_follow_frames_through_gaps_and_resets(tmp_path: Path) -> None:
    step = 1 / 30
    script = [i * step for i in range(10)]  # normal
    script += [0.5 + i * step for i in range(10, 20)]  # a 0.5 s gap (lost frames upstream)
    script += [i * step for i in range(10)]  # pts reset to 0 (source looped)
    track = _ScriptedTrack(script)
    path = tmp_path / "gaps.mkv"
    async with Recorder(path, video=track, width=320, height=240, fps=30) as rec:
        for _ in range(300):
            if rec.video_frames >= len(script):
                break
            await asyncio.sleep(0.02)
    info = await rec.aclose()
    track.stop()
    assert info.video_frames == len(script)
    times, numbers = await asyncio.to_thread(_decode_letterboxed, path)
    assert numbers == list(range(len(script)))  # every frame, stamps readable
    deltas = [b - a for a, b in itertools.pairwise(times)]
    assert all(d > 0 for d in deltas)  # strictly increasing despite the reset
    assert deltas[9] == pytest.approx(0.5 + step, abs=0.02)  # the gap is kept, real speed
    assert sum(deltas[:9]) == pytest.approx(9 * step, abs=0.02)
    assert deltas[19] == pytest.approx(step, abs=0.1)  # the reset is re-anchored to arrival


def _decode_letterboxed(path: Path) -> tuple[list[float], list[int | None]]:
    """Even frames fill 320x240; odd ones were 640x360 and sit letterboxed in the middle."""
    times: list[float] = []
    numbers: list[int | None] = []
    with av.open(str(path)) as container:
        for index, frame in enumerate(container.decode(video=0)):
            assert (frame.width, frame.height) == (320, 240)
            luma = frame.to_ndarray()[:240]
            if index % 2:
                assert luma[:26].mean() < 20 and luma[-26:].mean() < 20  # black bars
                stamp = read_stamp(frame, fit(640, 360, Rect(0, 0, 320, 240)))
            else:
                stamp = read_stamp(frame)
            times.append(float(frame.time or 0.0))
            numbers.append(stamp.frame_number if stamp else None)
    return times, numbers


class _FailingTrack(MediaStreamTrack):
    kind = "video"

    def __init__(self) -> None:
        super().__init__()
        self._pattern = PatternVideoTrack(width=160, height=120, fps=30)

    async def recv(self) -> av.VideoFrame:
        if self._pattern.frames_sent == 5:
            raise RuntimeError("remote decoder exploded")
        return await self._pattern.recv()


async def test_reader_failure_is_reported_and_file_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="media.recorder")
    path = tmp_path / "partial.webm"
    rec = Recorder(path, video=_FailingTrack())
    await rec.start()
    for _ in range(200):
        if rec.video_frames >= 5:
            break
        await asyncio.sleep(0.01)
    with pytest.raises(RecorderError, match="exploded"):
        await rec.aclose()
    with pytest.raises(RecorderError, match="exploded"):
        await rec.aclose()  # idempotent: the same outcome again
    assert "reader failed" in caplog.text
    video, _, _ = await asyncio.to_thread(_decode, path)
    assert [n for _, n in video] == [0, 1, 2, 3, 4]
    assert _other_tasks() == [] and _recorder_threads() == []


CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from media import PatternVideoTrack, Recorder, ToneAudioTrack

    async def main() -> None:
        recorders = []
        for path in sys.argv[1:]:
            rec = Recorder(
                path,
                video=PatternVideoTrack(width=320, height=240, fps=15),
                audio=ToneAudioTrack(),
                fps=15,
            )
            await rec.start()
            recorders.append(rec)
        while min(r.video_frames for r in recorders) < 30:
            await asyncio.sleep(0.02)
        print("recording", flush=True)
        await asyncio.sleep(60)

    asyncio.run(main())
    """
)


async def test_killed_recording_stays_playable(tmp_path: Path) -> None:
    paths = [tmp_path / f"crash.{ext}" for ext in ("mkv", "mp4", "webm")]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD, *map(str, paths), stdout=asyncio.subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), timeout=30)
        assert line.strip() == b"recording"
    finally:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
    assert proc.returncode == -signal.SIGKILL
    for path in paths:
        video, audio_s, _ = await asyncio.to_thread(_decode, path)
        numbers = [n for _, n in video]
        # 2 s were encoded; at most about one second (one cluster / fragment) may be lost.
        assert len(video) >= 14, f"{path.name}: only {len(video)} frames survived"
        assert numbers == list(range(len(video)))
        assert audio_s >= 0.9


def test_bad_arguments_fail_at_construction(tmp_path: Path) -> None:
    track = PatternVideoTrack()
    with pytest.raises(RecorderError, match=r"unsupported recording extension '\.avi'"):
        Recorder(tmp_path / "x.avi", video=track)
    with pytest.raises(RecorderError, match="unsupported"):
        Recorder(tmp_path / "noext", video=track)
    with pytest.raises(RecorderError, match="nothing to record"):
        Recorder(tmp_path / "x.mkv", video=None)
    with pytest.raises(ValueError, match="kind"):
        Recorder(tmp_path / "x.mkv", video=ToneAudioTrack())
    with pytest.raises(ValueError, match="both width and height"):
        Recorder(tmp_path / "x.mkv", video=track, width=320)
    with pytest.raises(ValueError, match="even"):
        Recorder(tmp_path / "x.mkv", video=track, width=321, height=240)


async def test_unwritable_path_fails_at_start(tmp_path: Path) -> None:
    track = PatternVideoTrack(width=160, height=120)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    for path in (tmp_path / "missing" / "dir" / "x.mkv", blocker / "x.mp4"):
        rec = Recorder(path, video=track)
        with pytest.raises(RecorderError, match="cannot record to"):
            await rec.start()
        info = await rec.aclose()  # still safe to close
        assert info.video_frames == 0
    with pytest.raises(RecorderError, match="cannot record to"):
        async with Recorder(tmp_path / "missing" / "y.webm", video=track):
            pass
    assert _other_tasks() == []
    assert _recorder_threads() == []
    track.stop()
