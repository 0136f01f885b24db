"""FileSource: real clips written with PyAV, read back through the tracks for several passes.

Timing checks are one-sided and load-proof: a frame is never handed out before its media time
(so a file can never burst out faster than real time), with no upper bound on lateness.
"""

from __future__ import annotations

import asyncio
import fractions
import itertools
import logging
import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import av
import numpy as np
import pytest
from aiortc.mediastreams import MediaStreamError

from media import FileSource, PatternVideoTrack, SourceError, ToneAudioTrack, read_stamp
from media._filereader import (
    AUDIO_CAPACITY,
    STALE_S,
    THREAD_NAME,
    VIDEO_CAPACITY,
    FileTrack,
)
from peer import Participant, ParticipantConfig, RemoteTrack
from signaling_server import RunningServer

_EPS = 0.003  # timer and timestamp rounding slack, far below a frame
_BEEP_S = 0.1


@dataclass(frozen=True, slots=True, kw_only=True)
class Clip:
    path: Path
    frames: int  # video frames, stamped 0..frames-1
    fps: int

    @property
    def length_s(self) -> float:
        return self.frames / self.fps


def write_clip(
    path: Path,
    *,
    video: str | None = "libx264",
    audio: str | None = None,
    frames: int = 10,
    fps: int = 20,
    audio_rate: int = 48000,
    stereo: bool = False,
    container_format: str | None = None,
) -> Clip:
    """A clip whose video frames carry stamps 0..frames-1 and whose audio is a 1 kHz beep for
    the first 100 ms (silence after), muxed in time order."""
    length = frames / fps
    pattern = PatternVideoTrack(width=320, height=240, fps=fps)
    tone = ToneAudioTrack(
        frequency=1000, amplitude=0.5, sample_rate=audio_rate, channels=2 if stereo else 1,
        beep_every_s=length, beep_s=_BEEP_S,
    )  # fmt: skip
    chunk = audio_rate // 50  # 20 ms
    with av.open(str(path), mode="w", format=container_format) as container:
        vstream: av.VideoStream | None = None
        astream: av.AudioStream | None = None
        events = []  # (time, kind, index) in time order
        if video is not None:
            vstream = cast(av.VideoStream, container.add_stream(video, rate=fps))
            vstream.width, vstream.height, vstream.pix_fmt = 320, 240, "yuv420p"
            if video == "libx264":
                vstream.codec_context.options = {"preset": "ultrafast"}
            events += [(n / fps, 0, n) for n in range(frames)]
        if audio is not None:
            astream = cast(av.AudioStream, container.add_stream(audio, rate=audio_rate))
            astream.layout = "stereo" if stereo else "mono"
            events += [(n * chunk / audio_rate, 1, n) for n in range(round(length * 50))]
        for _, kind, n in sorted(events):
            if kind == 0 and vstream is not None:
                frame = pattern.render(n, 1_000_000 + n)
                frame.pts = n
                frame.time_base = fractions.Fraction(1, fps)
                container.mux(vstream.encode(frame))
            elif astream is not None:
                container.mux(astream.encode(tone.render(n * chunk)))
        if vstream is not None:
            container.mux(vstream.encode(None))
        if astream is not None:
            container.mux(astream.encode(None))
    return Clip(path=path, frames=frames if video else 0, fps=fps)


async def make_clip(path: Path, **kwargs: object) -> Clip:
    return await asyncio.to_thread(write_clip, path, **kwargs)  # type: ignore[arg-type]


def _reader_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == THREAD_NAME]


def _no_other_tasks() -> bool:
    return not [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]


def _file_track(track: object) -> FileTrack:
    assert isinstance(track, FileTrack)
    return track


@dataclass(slots=True)
class Seen:
    """What a reader got: each frame's pts (seconds), stamp or audio, and when it arrived."""

    pts_s: list[float]
    at: list[float]  # time.monotonic() when recv returned, relative to t0
    stamps: list[int | None]
    pcm: list[np.ndarray]  # audio: channel 0 of each frame


async def read_video(track: FileTrack, t0: float, *, passes: int, clip: Clip) -> Seen:
    """Read until ``passes`` wraps of the stamps have been seen."""
    seen = Seen([], [], [], [])
    wraps = 0
    async with asyncio.timeout(30):
        while wraps < passes:
            frame = await track.recv()
            seen.at.append(time.monotonic() - t0)
            assert isinstance(frame, av.VideoFrame)
            assert frame.time_base == fractions.Fraction(1, 90000) and frame.pts is not None
            seen.pts_s.append(frame.pts / 90000)
            stamp = read_stamp(frame)
            assert stamp is not None
            number = stamp.frame_number
            if seen.stamps and number < seen.stamps[-1]:  # type: ignore[operator]
                wraps += 1
            seen.stamps.append(number)
    return seen


async def read_audio(track: FileTrack, t0: float, *, seconds: float, layout: str) -> Seen:
    seen = Seen([], [], [], [])
    async with asyncio.timeout(30):
        while not seen.pts_s or seen.pts_s[-1] < seconds:
            frame = await track.recv()
            seen.at.append(time.monotonic() - t0)
            assert isinstance(frame, av.AudioFrame)
            assert (frame.format.name, frame.layout.name) == ("s16", layout)
            assert (frame.sample_rate, frame.samples) == (48000, 960)
            assert frame.time_base == fractions.Fraction(1, 48000) and frame.pts is not None
            seen.pts_s.append(frame.pts / 48000)
            seen.pcm.append(frame.to_ndarray().reshape(960, -1)[:, 0])
    return seen


async def read_to_end(track: FileTrack) -> list[av.VideoFrame | av.AudioFrame]:
    """Every frame until the track ends (``MediaStreamError``); fails if it never does."""
    frames = []
    async with asyncio.timeout(30):
        while True:
            try:
                frames.append(await track.recv())
            except MediaStreamError:
                return frames


def assert_never_early(seen: Seen, *, steady: bool = True) -> None:
    """No frame before its media time (pts count from the first recv): never faster than the
    file. ``steady`` (the reader was never stalled): also the load-proof form of 'no burst',
    wall time >= 0.8 x media time delivered."""
    assert all(b > a for a, b in itertools.pairwise(seen.pts_s)), "pts must only increase"
    for pts, at in zip(seen.pts_s, seen.at, strict=True):
        assert at >= pts - _EPS, f"frame at media {pts:.3f} s handed out at {at:.3f} s"
    if steady:
        assert seen.at[-1] - seen.at[0] >= 0.8 * (seen.pts_s[-1] - seen.pts_s[0])


def assert_stamps_cycle(seen: Seen, clip: Clip, *, dropped: int, first: int = 0) -> list[float]:
    """Stamps run 0..N-1 in order on every pass; pts follow the stamps within a pass and move
    on by at least the clip's length between passes. Returns each pass's media offset."""
    passes: list[list[tuple[int, float]]] = [[]]
    for stamp, pts in zip(seen.stamps, seen.pts_s, strict=True):
        assert stamp is not None
        if passes[-1] and stamp < passes[-1][-1][0]:
            passes.append([])
        passes[-1].append((stamp, pts))
    assert len(passes) >= 3
    assert dropped or passes[0][0][0] == first
    offsets = []
    for i, one in enumerate(passes):
        numbers = [n for n, _ in one]
        assert numbers == sorted(set(numbers)), numbers
        if dropped == 0 and 0 < i < len(passes) - 1:  # a whole pass, in order
            assert numbers == list(range(clip.frames)), numbers
        shifts = [pts - n / clip.fps for n, pts in one]
        assert max(shifts) - min(shifts) < _EPS, shifts  # the file's own timestamps
        offsets.append(shifts[0])
    for a, b in itertools.pairwise(offsets):
        assert b - a >= clip.length_s - _EPS
    return offsets


def beep_onsets(seen: Seen) -> list[float]:
    """Media times (s, from each frame's pts) where a beep starts after 100 ms of silence."""
    onsets: list[float] = []
    last = -1.0
    for start, pcm in zip(seen.pts_s, seen.pcm, strict=True):
        for i in np.flatnonzero(np.abs(pcm.astype(np.int32)) > 0.15 * 32767).tolist():
            t = start + i / 48000
            if t - last > 0.1:
                onsets.append(t)
            last = t
    return onsets


@pytest.mark.parametrize(
    ("name", "video", "audio"),
    [("clip.mp4", "libx264", "aac"), ("clip.webm", "libvpx", "libopus")],
)
async def test_audio_and_video_loop_in_step(
    tmp_path: Path, name: str, video: str, audio: str
) -> None:
    clip = await make_clip(tmp_path / name, video=video, audio=audio)
    async with await FileSource.open(clip.path) as source:
        v, a = _file_track(source.video), _file_track(source.audio)
        t0 = time.monotonic()
        vseen, aseen = await asyncio.gather(
            read_video(v, t0, passes=3, clip=clip),
            read_audio(a, t0, seconds=3.5 * clip.length_s, layout="mono"),
        )
        assert_never_early(vseen)
        assert_never_early(aseen)
        offsets = assert_stamps_cycle(vseen, clip, dropped=v.dropped)
        # Audio is continuous (no gap, no overlap) across every loop boundary.
        gaps = [round((b - a) * 48000) - 960 for a, b in itertools.pairwise(aseen.pts_s)]
        assert sum(gaps) == 960 * a.dropped and min(gaps) >= 0
        # In step: each pass's beep starts with its frame 0, on every pass (unless a stalled
        # test skipped the very audio frame holding an onset).
        onsets = beep_onsets(aseen)
        assert len(onsets) >= 3
        if a.dropped == 0:
            for onset, offset in zip(onsets, offsets, strict=False):
                assert abs(onset - offset) < 0.005, (onsets, offsets)
    assert not _reader_threads()
    assert _no_other_tasks()


@pytest.mark.parametrize(
    ("name", "video", "container_format"),
    [("clip.mkv", "libvpx", None), ("clip.mp4", "libx264", None), ("clip.h264", "libx264", "h264")],
)
async def test_video_only_file_loops_at_its_own_pace(
    tmp_path: Path, name: str, video: str, container_format: str | None
) -> None:
    """Matroska, MP4, and a raw H.264 stream (no timestamps, cannot seek) loop alike."""
    clip = await make_clip(tmp_path / name, video=video, container_format=container_format)
    async with await FileSource.open(clip.path) as source:
        assert source.audio is None
        v = _file_track(source.video)
        t0 = time.monotonic()
        first = await v.recv()
        clip.path.unlink()  # the reader keeps its descriptor: a deleted file plays on
        seen = await read_video(v, t0, passes=3, clip=clip)
        assert first.pts == 0 and read_stamp(first) is not None  # type: ignore[arg-type]
        assert_never_early(seen)
        assert_stamps_cycle(seen, clip, dropped=v.dropped, first=1)
    assert not _reader_threads()


async def test_audio_only_file_is_resampled_and_loops(tmp_path: Path) -> None:
    clip = await make_clip(
        tmp_path / "clip.wav", video=None, audio="pcm_s16le", audio_rate=44100, stereo=True
    )
    length = 0.5  # 10 frames at 20 fps worth of audio
    async with await FileSource.open(clip.path) as source:
        assert source.video is None
        a = _file_track(source.audio)
        seen = await read_audio(a, time.monotonic(), seconds=3.2 * length, layout="stereo")
        assert_never_early(seen)
        gaps = [round((b - a_) * 48000) - 960 for a_, b in itertools.pairwise(seen.pts_s)]
        assert sum(gaps) == 960 * a.dropped and min(gaps) >= 0
        onsets = beep_onsets(seen)
        assert len(onsets) >= 3 and onsets[0] < 0.01
        for x, y in itertools.pairwise(onsets):
            assert abs(y - x - length) < 0.002, onsets  # one beep per pass, a pass apart
    assert not _reader_threads()


async def test_plays_once_then_ends(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="media._filereader")
    clip = await make_clip(tmp_path / "clip.mp4", audio="aac", frames=8)
    async with await FileSource.open(clip.path, loop=False) as source:
        v, a = _file_track(source.video), _file_track(source.audio)
        assert v.kind == "video" and a.kind == "audio"
        stamps = [read_stamp(f) for f in await read_to_end(v)]  # type: ignore[arg-type]
        numbers = [s.frame_number for s in stamps if s is not None]
        assert numbers == sorted(set(numbers)) and numbers[-1] == clip.frames - 1
        assert v.dropped or numbers == list(range(clip.frames))
        assert v.readyState == "ended"
        with pytest.raises(MediaStreamError):
            await v.recv()  # played once: the end is an error, as for any track
        last = (await read_to_end(a))[-1]
        assert last.pts is not None
        audio_end = (last.pts + 960) / 48000
        assert clip.length_s - 0.05 <= audio_end <= clip.length_s + 0.1
        with pytest.raises(MediaStreamError):
            await a.recv()
    assert [r.getMessage() for r in caplog.records if "played once" in r.getMessage()]
    assert not _reader_threads()
    assert _no_other_tasks()


async def test_a_track_nobody_reads_is_bounded_and_stalls_nothing(tmp_path: Path) -> None:
    clip = await make_clip(tmp_path / "clip.mp4", audio="aac")
    async with await FileSource.open(clip.path) as source:
        v, a = _file_track(source.video), _file_track(source.audio)
        t0 = time.monotonic()
        numbers: list[int] = []
        async with asyncio.timeout(30):
            while a.dropped == 0 or len(numbers) < 2 * clip.frames:
                frame = await v.recv()
                assert frame.pts is not None and time.monotonic() - t0 >= frame.pts / 90000 - _EPS
                stamp = read_stamp(frame)  # type: ignore[arg-type]
                assert stamp is not None
                numbers.append(stamp.frame_number)
                assert a.queued <= AUDIO_CAPACITY
        # The unread audio dropped its oldest frames; the video went on looping meanwhile.
        assert a.queued == AUDIO_CAPACITY
        assert _wraps(numbers) >= 1


async def test_a_stalled_event_loop_holds_no_more_than_the_capacity(tmp_path: Path) -> None:
    clip = await make_clip(tmp_path / "clip.mp4", audio="aac")
    async with await FileSource.open(clip.path) as source:
        v, a = _file_track(source.video), _file_track(source.audio)
        t0 = time.monotonic()
        await v.recv()
        time.sleep(1.5)  # noqa: ASYNC251 -- the point: the loop itself stalls, the thread goes on
        assert v.queued <= VIDEO_CAPACITY and a.queued <= AUDIO_CAPACITY
        assert a.dropped > 0  # 1.5 s of 20 ms frames cannot fit in 50
        seen = await read_video(v, t0, passes=2, clip=clip)
        assert_never_early(seen, steady=False)
        # The stale video was skipped, not replayed: at most STALE_S of it came in a burst.
        assert v.dropped > 0
        burst = [pts for pts, at in zip(seen.pts_s, seen.at, strict=True) if at < seen.at[0] + 0.05]
        assert burst[-1] - burst[0] <= STALE_S + 0.05 + 1 / clip.fps
        assert_stamps_cycle(seen, clip, dropped=v.dropped, first=seen.stamps[0] or 0)


async def test_a_file_that_turns_undecodable_ends_its_tracks(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clip = await make_clip(tmp_path / "clip.mp4", frames=40)
    data = bytearray(clip.path.read_bytes())
    rng = random.Random(1)
    lo, hi = len(data) // 3, 2 * len(data) // 3
    data[lo:hi] = rng.randbytes(hi - lo)  # the middle of the media data becomes garbage
    clip.path.write_bytes(bytes(data))
    async with await FileSource.open(clip.path) as source:  # its start still decodes
        v = _file_track(source.video)
        stamps = [read_stamp(f) for f in await read_to_end(v)]  # type: ignore[arg-type]
        numbers = [s.frame_number for s in stamps if s is not None]
        assert numbers and numbers == sorted(numbers) and max(numbers) < clip.frames - 1
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "cannot decode" in errors[0].getMessage()
    assert not _reader_threads()


async def test_stopping_both_tracks_stops_the_thread(tmp_path: Path) -> None:
    clip = await make_clip(tmp_path / "clip.mkv", video="libvpx", audio="libopus")
    source = await FileSource.open(clip.path)
    try:
        assert source.video is not None and source.audio is not None
        await source.video.recv()
        assert _reader_threads()
        pending = asyncio.create_task(source.audio.recv())
        await asyncio.sleep(0)
        source.video.stop()
        source.audio.stop()  # as a publisher does with its tracks: the reader quits alone
        with pytest.raises(MediaStreamError):
            await pending
        async with asyncio.timeout(10):
            while _reader_threads():
                await asyncio.sleep(0.02)
    finally:
        await source.aclose()
        await source.aclose()  # idempotent
    assert _no_other_tasks()


async def test_aclose_ends_a_waiting_recv_and_joins_the_thread(tmp_path: Path) -> None:
    clip = await make_clip(tmp_path / "clip.mp4")
    source = await FileSource.open(clip.path)
    assert source.video is not None
    await source.video.recv()
    pending = asyncio.create_task(source.video.recv())
    await asyncio.sleep(0)
    await source.aclose()
    with pytest.raises(MediaStreamError):
        await pending
    assert source.video.readyState == "ended"
    assert not _reader_threads()
    assert _no_other_tasks()


async def test_a_source_never_read_starts_no_thread(tmp_path: Path) -> None:
    clip = await make_clip(tmp_path / "clip.mp4")
    async with await FileSource.open(clip.path):
        assert not _reader_threads()


async def test_open_reports_errors(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="not found"):
        await FileSource.open(tmp_path / "missing.webm")


def test_construction_errors(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="not found"):
        FileSource(tmp_path / "missing.mp4")
    with pytest.raises(SourceError, match="not found"):
        FileSource(tmp_path)  # a directory is not a media file
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"\x00\x01not a media file" * 100)
    with pytest.raises(SourceError, match="cannot open"):
        FileSource(garbage)
    empty = tmp_path / "empty.mkv"
    empty.write_bytes(b"")
    with pytest.raises(SourceError, match="cannot open"):
        FileSource(empty)
    subtitles = tmp_path / "words.srt"
    subtitles.write_text("1\n00:00:00,000 --> 00:00:01,000\nhello\n")
    with pytest.raises(SourceError, match="no audio or video"):
        FileSource(subtitles)


# -- through a real call ----------------------------------------------------------------------


async def _next_video(p: Participant) -> RemoteTrack:
    async with asyncio.timeout(20):
        async for track in p.tracks():
            if track.kind == "video":
                return track
    raise AssertionError("participant closed before a track arrived")


def _wraps(numbers: Sequence[int]) -> int:
    return sum(1 for a, b in itertools.pairwise(numbers) if b < a)


async def test_a_looping_mp4_keeps_playing_through_a_real_call(
    relay: RunningServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An H.264 MP4 shorter than the observation window, published over VP8 (the default):
    the viewer keeps decoding new frames well past twice the clip's length."""
    caplog.set_level(logging.WARNING)
    clip = await make_clip(tmp_path / "clip.mp4", audio="aac", frames=15, fps=15)  # 1 s

    def config(name: str, *, receive: bool = True) -> ParticipantConfig:
        return ParticipantConfig(room="loop", server_url=relay.ws_url, name=name, receive=receive)

    async with (
        await FileSource.open(clip.path) as source,
        Participant(config("player", receive=False), video=source.video, audio=source.audio),
        Participant(config("viewer")) as viewer,
    ):
        video = await _next_video(viewer)
        numbers: list[int] = []
        first = None
        async with asyncio.timeout(40):
            while (
                first is None
                or time.monotonic() - first < 2.5 * clip.length_s
                or _wraps(numbers) < 2
            ):
                frame = await video.recv()
                first = first or time.monotonic()
                stamp = await asyncio.to_thread(read_stamp, frame)
                if stamp is not None:
                    numbers.append(stamp.frame_number)
        assert _wraps(numbers) >= 2, numbers  # looped at least twice, in order between wraps
        assert set(numbers) <= set(range(clip.frames)) and len(set(numbers)) >= clip.frames // 2
    sender_trouble = [r for r in caplog.records if r.name.startswith("aiortc")]
    assert not sender_trouble, [r.getMessage() for r in sender_trouble]
