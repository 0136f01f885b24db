"""Recorder: real files decoded back (frames, stamps, audio, timing), crash safety, errors."""

from __future__ import annotations

import asyncio
import fractions
import itertools
import json
import logging
import signal
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import av
import numpy as np
import numpy.typing as npt
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
from media.recorder import VideoCodec


def _other_tasks() -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]


def _recorder_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("recorder-")]


async def _until(predicate: Callable[[], bool], timeout: float = 90.0) -> None:
    """Wait for a condition; the timeout only guards against a hang, it is no speed target."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


def _assert_in_order(numbers: list[int | None], dropped: int, what: str) -> None:
    """Every frame decodes with its stamp, in order; frames are missing only if reported.

    The recorder's queue drops the oldest frames when the writer falls behind (a starved
    machine), and counts them: that is the only way a frame may go missing.
    """
    stamped = [n for n in numbers if n is not None]
    assert stamped and len(stamped) == len(numbers), f"{what}: {numbers}"
    assert all(b > a for a, b in itertools.pairwise(stamped)), f"{what}: {numbers}"
    missing = stamped[-1] + 1 - len(stamped)
    assert missing <= dropped, f"{what}: {missing} missing, {dropped} reported dropped: {numbers}"


class _LoggedPattern(PatternVideoTrack):
    """Pattern video that remembers the pts it gave each frame (by stamp number)."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.pts: list[int] = []

    async def recv(self) -> av.VideoFrame:
        frame = await super().recv()
        assert frame.pts is not None
        self.pts.append(frame.pts)
        return frame


def _decode(path: Path) -> tuple[list[tuple[float, int | None]], float, list[str]]:
    """(time, stamp number) per video frame, seconds of audio, codec names; tolerates a cut tail."""
    video: list[tuple[float, int | None]] = []
    audio_samples = 0
    rate = 48000
    codecs = []
    with av.open(str(path)) as container:
        codecs = [s.codec_context.name for s in container.streams]
        streams: list[Any] = list(container.streams)  # mixed kinds: the catch-all overload
        try:
            for frame in container.decode(*streams):
                if isinstance(frame, av.VideoFrame):
                    stamp = read_stamp(frame)
                    video.append((float(frame.time or 0.0), stamp.frame_number if stamp else None))
                elif isinstance(frame, av.AudioFrame):
                    audio_samples += frame.samples
                    rate = frame.sample_rate
        except av.InvalidDataError:
            pass  # a killed recording may end in a partial packet
    return video, audio_samples / rate, codecs


class _Recorded:
    """What a recording was fed and how long it took, next to what it reports."""

    def __init__(self, info: RecordingInfo, video: _LoggedPattern, wall_s: float) -> None:
        self.info = info
        self.video = video
        self.wall_s = wall_s


async def _record(
    path: Path, frames: int, *, audio: bool = True, video_codec: VideoCodec | None = None
) -> _Recorded:
    """Record until ``frames`` video frames are encoded (however long a loaded machine takes)."""
    video_track = _LoggedPattern(width=320, height=240, fps=15, label=path.suffix)
    audio_track = ToneAudioTrack() if audio else None
    started = time.monotonic()
    async with Recorder(
        path, video=video_track, audio=audio_track, fps=15, video_codec=video_codec
    ) as rec:
        await _until(lambda: rec.video_frames >= frames)
    info = await rec.aclose()
    wall_s = time.monotonic() - started
    assert await rec.aclose() == info  # idempotent
    video_track.stop()
    if audio_track:
        audio_track.stop()
    return _Recorded(info, video_track, wall_s)


def _assert_real_speed(video: list[tuple[float, int | None]], sent_pts: list[int]) -> None:
    """Each frame sits in the file at its own pts: real speed, gaps kept.

    The source's pts follow real time, so this holds on a loaded machine too: a late frame
    gets a later pts and the file keeps the gap. Times are taken relative to the second frame:
    fragmented MP4 cannot start video after audio, so its muxer stretches the first frame back
    to zero.
    """
    _, (t_first, n_first), *_ = video
    assert n_first is not None
    for t, n in video[1:]:
        assert n is not None
        expected = (sent_pts[n] - sent_pts[n_first]) / 90000
        assert t - t_first == pytest.approx(expected, abs=0.01), (n, t - t_first, expected)


async def test_records_every_container(tmp_path: Path) -> None:
    expected_codecs: dict[str, list[str]] = {
        "call.mkv": ["h264", "opus"],
        "call.mp4": ["h264", "aac"],
        "call.mov": ["h264", "aac"],
        "call.webm": ["vp8", "opus"],
        "call-vp8.mkv": ["vp8", "opus"],
    }
    paths = [tmp_path / name for name in expected_codecs]
    results = await asyncio.gather(  # 2 s of 15 fps each
        *(_record(p, 30, video_codec="vp8" if "vp8" in p.name else None) for p in paths)
    )
    assert _other_tasks() == []
    assert _recorder_threads() == []
    for path, rec in zip(paths, results, strict=True):
        info = rec.info
        assert info.path == path
        assert info.video_frames >= 30 and info.audio_frames > 0, info
        video, audio_s, codecs = await asyncio.to_thread(_decode, path)
        assert codecs == expected_codecs[path.name]
        assert len(video) == info.video_frames  # every encoded frame is in the file
        _assert_in_order([n for _, n in video], info.dropped_video_frames, path.name)
        times = [t for t, _ in video]
        assert all(b > a for a, b in itertools.pairwise(times))
        _assert_real_speed(video, rec.video.pts)
        # The media is as long as the frames span, and never longer than the recording took.
        assert (len(video) - 1) / 15 <= info.duration_s <= rec.wall_s + 0.1, (info, rec.wall_s)
        # Audio covers the same time as video (gaps are filled with silence).
        assert audio_s == pytest.approx(info.duration_s, abs=0.2), (path.name, audio_s, info)


async def test_video_only_and_audio_only(tmp_path: Path) -> None:
    rec = await _record(tmp_path / "video.mkv", 8, audio=False)
    video, audio_s, codecs = await asyncio.to_thread(_decode, tmp_path / "video.mkv")
    assert codecs == ["h264"] and audio_s == 0
    assert len(video) == rec.info.video_frames >= 8
    _assert_in_order([n for _, n in video], rec.info.dropped_video_frames, "video.mkv")
    _assert_real_speed(video, rec.video.pts)

    for name, codec in (("voice.mp4", "aac"), ("voice.mka", "opus")):
        tone = ToneAudioTrack(frequency=300)
        started = time.monotonic()
        async with Recorder(tmp_path / name, video=None, audio=tone) as recorder:
            await _until(lambda: recorder.audio_frames >= 30)  # 0.6 s of 20 ms frames
        info = await recorder.aclose()
        wall_s = time.monotonic() - started
        tone.stop()
        assert info.video_frames == 0 and info.audio_frames >= 30
        video, audio_s, codecs = await asyncio.to_thread(_decode, tmp_path / name)
        assert codecs == [codec] and video == []
        assert audio_s == pytest.approx(info.duration_s, abs=0.05)  # what was encoded decodes
        assert info.audio_frames * 0.02 - 0.05 <= audio_s <= wall_s + 0.1


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


STEP = 1 / 30
SCRIPT = [i * STEP for i in range(10)]  # normal
SCRIPT += [0.5 + i * STEP for i in range(10, 20)]  # a 0.5 s gap (lost frames upstream)
SCRIPT += [i * STEP for i in range(10)]  # pts reset to 0 (source looped)


async def _record_script(path: Path) -> list[float]:
    """Record SCRIPT's frames; the gaps between their times in the file."""
    track = _ScriptedTrack(SCRIPT)
    async with Recorder(path, video=track, width=320, height=240, fps=30) as rec:
        await _until(lambda: rec.video_frames >= len(SCRIPT))
    info = await rec.aclose()
    track.stop()
    assert info.video_frames == len(SCRIPT)
    times, numbers = await asyncio.to_thread(_decode_letterboxed, path)
    assert numbers == list(range(len(SCRIPT)))  # every frame, stamps readable
    return [b - a for a, b in itertools.pairwise(times)]


async def test_timestamps_follow_frames_through_gaps_and_resets(tmp_path: Path) -> None:
    deltas = await _record_script(tmp_path / "gaps.mkv")
    assert all(d > 0 for d in deltas)  # strictly increasing despite the reset
    # Within a stretch the file follows the frames' own pts (not their arrival), so these
    # hold however late the frames arrive.
    assert deltas[9] == pytest.approx(0.5 + STEP, abs=0.02)  # the gap is kept, real speed
    assert sum(deltas[:9]) == pytest.approx(9 * STEP, abs=0.02)
    assert sum(deltas[10:19]) == pytest.approx(9 * STEP, abs=0.02)


async def test_timestamp_reset_keeps_real_speed(tmp_path: Path) -> None:
    deltas = await _record_script(tmp_path / "reset.mkv")
    # After the reset (a source looping back to 0) the frames are re-anchored to their
    # arrival and then follow their own pts again: 30 fps, not squashed together.
    assert sum(deltas[20:]) == pytest.approx(9 * STEP, abs=0.02), deltas[19:]


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
    await _until(lambda: rec.video_frames >= 5)
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
    import asyncio, json, sys, time
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
        counts = [[r.video_frames, r.dropped_video_frames] for r in recorders]
        print(json.dumps(counts), flush=True)
        # Freeze the loop: no frame is queued or dropped any more, so the counts just printed
        # are final, while the writer threads carry on (and may be mid-write when killed).
        time.sleep(120)

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
        # Killed only once every file has 2 s of video encoded, however long that takes.
        line = await asyncio.wait_for(proc.stdout.readline(), timeout=90)
        counts = json.loads(line)
    finally:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
    assert proc.returncode == -signal.SIGKILL
    for path, (encoded, dropped) in zip(paths, counts, strict=True):
        video, audio_s, _ = await asyncio.to_thread(_decode, path)
        # At least 2 s were encoded; at most about one second (one cluster / fragment) may be
        # lost to the kill.
        assert encoded >= 30
        assert len(video) >= 14, f"{path.name}: only {len(video)} frames survived"
        _assert_in_order([n for _, n in video], dropped, path.name)
        times = [t for t, _ in video]
        assert all(b > a for a, b in itertools.pairwise(times)), f"{path.name}: {times}"
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
    with pytest.raises(RecorderError, match=r"\.mka is audio-only"):
        Recorder(tmp_path / "x.mka", video=track)
    with pytest.raises(RecorderError, match=r"\.mp4 cannot carry vp8"):
        Recorder(tmp_path / "x.mp4", video=track, video_codec="vp8")
    with pytest.raises(RecorderError, match=r"\.webm cannot carry h264"):
        Recorder(tmp_path / "x.webm", video=track, video_codec="h264")
    with pytest.raises(ValueError, match="video_codec"):
        Recorder(tmp_path / "x.mkv", video=track, video_codec="av1")  # type: ignore[arg-type]


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


class _ScriptedAudio(MediaStreamTrack):
    """A 440 Hz tone cut into 20 ms frames that start at the scripted samples, then ends."""

    kind = "audio"

    def __init__(self, starts: list[int]) -> None:
        super().__init__()
        self._tone = ToneAudioTrack(frequency=440)
        self._starts = iter(starts)

    async def recv(self) -> av.AudioFrame:
        await asyncio.sleep(0)
        start = next(self._starts, None)
        if start is None:
            self.stop()
            raise MediaStreamError
        return self._tone.render(start)  # pts = start, in 1/48000


async def test_audio_keeps_its_timeline_through_repeats_overlaps_and_gaps(tmp_path: Path) -> None:
    """Audio is placed by its pts: repeated time is dropped, overlaps trimmed, gaps silent.

    If any of these were written as they come, everything after would be shifted and the
    tone's phase would no longer match the ideal tone at each point in the file.
    """
    script = [i * 960 for i in range(10)]  # [0, 0.2 s)
    script.append(9 * 960)  # the last 20 ms again: dropped
    script.append(9 * 960 + 240)  # [0.185, 0.205): 15 ms overlap, trimmed to [0.2, 0.205)
    script += [10 * 960 + 240 + i * 960 for i in range(9)]  # [0.205, 0.385)
    script += [32880 + i * 960 for i in range(5)]  # after a 0.3 s gap: [0.685, 0.785)
    path = tmp_path / "script.mka"
    track = _ScriptedAudio(script)
    async with Recorder(path, video=None, audio=track) as rec:
        await _until(lambda: rec.audio_frames + rec.dropped_audio_frames >= len(script))
    info = await rec.aclose()
    assert (info.audio_frames, info.dropped_audio_frames, info.dropped_video_frames) == (25, 1, 0)
    assert info.dropped_frames == 1

    def decode() -> npt.NDArray[np.float64]:
        with av.open(str(path)) as container:
            chunks = [f.to_ndarray()[0] for f in container.decode(audio=0)]  # mono fltp
        return np.concatenate(chunks).astype(np.float64)

    samples = await asyncio.to_thread(decode)

    def match(start_s: float, end_s: float) -> float:
        """Normalised correlation of the file with the ideal tone over [start_s, end_s)."""
        first, last = round(start_s * 48000), round(end_s * 48000)
        got = samples[first:last]
        want = np.sin(2 * np.pi * 440 * np.arange(first, last) / 48000)
        return float(got @ want / np.sqrt((got @ got) * (want @ want)))

    assert len(samples) / 48000 == pytest.approx(0.785, abs=0.025)
    assert match(0.02, 0.19) > 0.95
    assert match(0.21, 0.38) > 0.95  # after the repeat and the overlap: still in phase
    assert match(0.69, 0.78) > 0.95  # after the gap: in phase again
    assert np.abs(samples[round(0.39 * 48000) : round(0.68 * 48000)]).max() < 0.01  # silence


ROOT = Path(__file__).resolve().parents[1]
TERM_CHILD = textwrap.dedent(
    """
    import asyncio, json, signal, sys
    from media import PatternVideoTrack, Recorder, ToneAudioTrack

    async def main() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        video = PatternVideoTrack(width=320, height=240, fps=15)
        audio = ToneAudioTrack()
        rec = Recorder(sys.argv[1], video=video, audio=audio, fps=15)
        await rec.start()
        while not stop.is_set():
            print(json.dumps({"frames": rec.video_frames}), flush=True)
            try:
                await asyncio.wait_for(stop.wait(), 0.1)
            except TimeoutError:
                pass
        info = await rec.aclose()
        video.stop()
        audio.stop()
        print(json.dumps({"frames": info.video_frames, "duration": info.duration_s}), flush=True)

    asyncio.run(main())
    """
)


async def test_sigterm_finalises_the_file(tmp_path: Path) -> None:
    """A recorder stopped by SIGTERM (through aclose) leaves a complete, indexed file."""
    path = tmp_path / "term.mkv"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", TERM_CHILD, str(path), cwd=ROOT, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(90):
            # Frames written, not media time: a starved source skips slots (2 s may hold 20).
            while json.loads(await proc.stdout.readline())["frames"] < 30:
                pass
            proc.send_signal(signal.SIGTERM)
            lines = (await proc.stdout.read()).splitlines()
            await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0
    final = json.loads(lines[-1])
    assert final["frames"] >= 30

    def probe() -> tuple[float | None, int]:
        with av.open(str(path)) as container:
            duration = container.duration
            frames = sum(1 for _ in container.decode(video=0))
        return (None if duration is None else duration / av.time_base), frames

    duration, frames = await asyncio.to_thread(probe)
    assert frames == final["frames"]  # every encoded frame, none cut off
    # The header carries the duration only once the muxer was finalised (a killed Matroska
    # recording has none).
    assert duration == pytest.approx(final["duration"], abs=0.1)


async def test_start_cancelled_while_opening_still_leaves_a_valid_file(tmp_path: Path) -> None:
    """A Ctrl-C that lands while the file is being opened must not leave a 0-byte file: the
    recorder still starts, and whoever cancelled it closes it."""
    path = tmp_path / "early.mkv"
    track = PatternVideoTrack(width=160, height=120, fps=15)
    rec = Recorder(path, video=track, width=64, height=48, fps=15)
    starting = asyncio.create_task(rec.start())
    await asyncio.sleep(0)  # start() is now waiting for the open in its worker thread
    starting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await starting
    await _until(lambda: rec.video_frames >= 3)
    info = await rec.aclose()
    track.stop()

    def probe() -> tuple[float | None, tuple[int, int], int]:
        with av.open(str(path)) as container:  # a finalised file: header, streams, duration
            stream = container.streams.video[0]
            size = (stream.codec_context.width, stream.codec_context.height)
            return container.duration, size, sum(1 for _ in container.decode(video=0))

    duration, size, frames = await asyncio.to_thread(probe)
    assert duration is not None and size == (64, 48)
    assert frames == info.video_frames >= 3
    assert _recorder_threads() == []


async def test_async_with_cancelled_while_opening_closes_itself(tmp_path: Path) -> None:
    """``async with`` runs no ``__aexit__`` when entering fails: a cancel that lands while the
    file opens must not leave the writer thread and reader tasks running with no owner."""
    track = PatternVideoTrack(width=160, height=120, fps=15)
    rec = Recorder(tmp_path / "entered.mkv", video=track, fps=15)

    async def enter() -> None:
        async with rec:
            await asyncio.Event().wait()  # pragma: no cover - cancelled before entering

    entering = asyncio.create_task(enter())
    await asyncio.sleep(0)  # start() is now waiting for the open in its worker thread
    entering.cancel()
    with pytest.raises(asyncio.CancelledError):
        await entering
    track.stop()
    others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    assert others == [] and _recorder_threads() == []
    assert (await rec.aclose()).video_frames >= 0  # closed already: idempotent


class _Silent(MediaStreamTrack):
    """A track that never delivers a frame."""

    kind = "video"

    async def recv(self) -> av.VideoFrame:
        await asyncio.Event().wait()
        raise MediaStreamError  # pragma: no cover - never reached


async def test_a_recording_without_any_frame_leaves_no_file(tmp_path: Path) -> None:
    """Headers without media cannot be opened by players or composite: leave nothing."""
    path = tmp_path / "nothing.mkv"
    async with Recorder(path, video=_Silent()) as rec:
        assert path.exists()  # opened (and checked writable) at start
    info = await rec.aclose()
    assert info.empty and info.video_frames == 0
    assert not path.exists()


EXIT_CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from media import PatternVideoTrack, Recorder

    async def main() -> None:
        rec = Recorder(sys.argv[1], video=PatternVideoTrack(width=160, height=120), fps=30)
        await rec.start()
        while rec.video_frames < 10:
            await asyncio.sleep(0.02)
        print(rec.video_frames, flush=True)
        # Returns without aclose(): a bug in the caller, or an exit path that skipped it.

    asyncio.run(main())
    """
)


async def test_process_exit_does_not_kill_an_unfinished_writer(tmp_path: Path) -> None:
    """The writer thread is not a daemon: at exit it finalises a file nobody closed."""
    path = tmp_path / "forgotten.mkv"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", EXIT_CHILD, str(path), cwd=ROOT, stdout=asyncio.subprocess.PIPE
    )
    async with asyncio.timeout(90):  # guards a hang (a non-daemon writer that never ends)
        out, _ = await proc.communicate()
    assert proc.returncode == 0
    encoded = int(out.decode().split()[0])

    def probe() -> tuple[float | None, int]:
        with av.open(str(path)) as container:
            return container.duration, sum(1 for _ in container.decode(video=0))

    duration, frames = await asyncio.to_thread(probe)
    assert duration is not None  # the trailer was written: finalised, not cut off
    assert frames >= encoded


def test_stale_video_is_dropped_but_never_all_of_it() -> None:
    """The writer's queue bounds its lag: video waits at most MAX_LAG_S, but the first frame
    of every MAX_LAG_S slice stays (a starved writer still shows some video); audio stays
    twice as long. Here the writer never takes anything for 3 s; arrival times are synthetic
    (the queue only compares them)."""
    from media._writer import Item
    from media.recorder import MAX_LAG_S, _LiveQueue

    q = _LiveQueue(1000, MAX_LAG_S)
    frame = av.VideoFrame(16, 16, "yuv420p")
    sound = ToneAudioTrack().render(0)
    items: list[Item] = [("video", frame, 100.0 + i / 30) for i in range(90)]
    items += [("audio", sound, 100.0 + i / 50) for i in range(150)]
    items.sort(key=lambda item: item[2])
    dropped: list[str] = []
    for item in items:
        dropped += q.put_live(item)
        now = item[2]
        queued = [x for x in q.queue if x is not None]
        stale_video = [a for kind, _, a in queued if kind == "video" and a < now - MAX_LAG_S]
        slices = [int((a - 100.0) // MAX_LAG_S) for a in stale_video]
        assert len(slices) == len(set(slices))  # at most one stale frame per slice...
        # ... and exactly the first one of each slice that has gone stale: none starves.
        assert stale_video == [a for a in (100.0, 100.5, 101.0, 101.5, 102.0) if a < now - 0.5]
        assert all(a >= now - 2 * MAX_LAG_S for kind, _, a in queued if kind == "audio")
    assert len(dropped) + q.qsize() == len(items)  # every frame is queued or counted


async def test_keyframes_follow_media_time_not_a_frame_count(tmp_path: Path) -> None:
    """A 4 fps source recorded with fps=30 (gop 30 frames = 7.5 s of it) still gets a keyframe
    every second of media: what a crash loses (one MP4 fragment) stays about a second."""
    path = tmp_path / "slow.mp4"
    track = PatternVideoTrack(width=160, height=120, fps=4)
    async with Recorder(path, video=track, fps=30) as rec:
        await _until(lambda: rec.video_frames >= 16)
    track.stop()

    def packets() -> list[tuple[float, bool]]:
        with av.open(str(path)) as container:
            return [
                (float(p.pts * p.time_base), p.is_keyframe)
                for p in container.demux(video=0)
                if p.pts is not None and p.time_base is not None
            ]

    last_key = None
    for t, key in await asyncio.to_thread(packets):
        if key:
            last_key = t
        else:
            assert last_key is not None and t - last_key < 1.0, (t, last_key)


async def test_unknown_rate_is_declared_from_the_video_and_the_offset_is_tagged(
    tmp_path: Path,
) -> None:
    """fps=None (a remote track): the file declares the rate its frames come at, not a guess;
    with a timeline its header says where it starts on it."""
    path = tmp_path / "sender.mkv"
    zero = time.monotonic() - 5.0  # the room recording began 5 s ago
    track = PatternVideoTrack(width=160, height=120, fps=12)
    async with Recorder(path, video=track, fps=None, timeline=lambda: zero) as rec:
        await _until(lambda: rec.video_frames >= 30)
        origin = rec.origin
    track.stop()
    assert origin is not None

    def probe() -> tuple[fractions.Fraction | None, dict[str, str], list[float]]:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            times = [float(f.time or 0.0) for f in container.decode(video=0)]
            return stream.average_rate, dict(container.metadata), times

    rate, tags, times = await asyncio.to_thread(probe)
    steps = np.diff([t for t in times if t <= times[0] + 1.0])
    assert rate == round(1 / float(np.median(steps)))  # what the frames do, at their start
    assert float(tags["CALLBOT_OFFSET"]) == pytest.approx(origin - zero, abs=0.002)
    assert 5.0 <= float(tags["CALLBOT_OFFSET"]) < 5.0 + 90


class _LateStart(MediaStreamTrack):
    """30 fps pattern whose first frame comes ``late_s`` after it was due; the following
    frames catch up as fast as they can, then keep their schedule (a call's first frames)."""

    kind = "video"

    def __init__(self, late_s: float) -> None:
        super().__init__()
        self._pattern = PatternVideoTrack(width=160, height=120, fps=30)
        self._late = late_s
        self._n = 0
        self.first_due: float | None = None

    async def recv(self) -> av.VideoFrame:
        if self.first_due is None:
            self.first_due = time.monotonic()
            await asyncio.sleep(self._late)
        else:
            await asyncio.sleep(max(0.0, self.first_due + self._n / 30 - time.monotonic()))
        frame = self._pattern.render(self._n)
        frame.pts, frame.time_base = self._n * 3000, fractions.Fraction(1, 90000)
        self._n += 1
        return frame

    def stop(self) -> None:
        super().stop()
        self._pattern.stop()


async def test_a_late_first_frame_does_not_shift_the_file_on_its_timeline(tmp_path: Path) -> None:
    """The offset tag is when the first frame was due, not when it came: otherwise a split
    file of a slow-starting sender would sit that much too late in a recomposite."""
    path = tmp_path / "late.mkv"
    zero = time.monotonic() - 1.0
    track = _LateStart(late_s=0.6)
    async with Recorder(path, video=track, fps=None, timeline=lambda: zero) as rec:
        await _until(lambda: rec.video_frames >= 45)
    track.stop()
    assert track.first_due is not None

    def probe() -> tuple[dict[str, str], list[tuple[float, int | None]]]:
        with av.open(str(path)) as container:
            tags = dict(container.metadata)
        return tags, _decode(path)[0]

    tags, video = await asyncio.to_thread(probe)
    # Due 1.0 s into the timeline; it came at 1.6 s. (Slack: a loaded machine's late sleeps.)
    assert float(tags["CALLBOT_OFFSET"]) == pytest.approx(track.first_due - zero, abs=0.15)
    # Every frame at its own pts from the first one: the catch-up burst is not squashed.
    assert all(t == pytest.approx(n / 30, abs=0.002) for t, n in video if n is not None)
