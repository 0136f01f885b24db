"""The engine behind :class:`~media.FileSource`: a media file decoded in one owned thread and
played as live tracks, paced by the wall clock at the file's own timestamps, looping for ever.

Why not aiortc's ``MediaPlayer``: it loops only when decoding ends with ``StopIteration`` (with
PyAV 18 an H.264 MP4 ends with ``av.EOFError``, so it plays once and freezes), it restarts pts
at 0 on every pass (libvpx then refuses the frames and aiortc's sender dies), a pass restart
also resets its read-ahead throttle (thousands of frames a second), and its queues are
unbounded.

Here one thread demuxes and decodes; it never runs more than ``LEAD_S`` ahead of the wall clock
and hands each frame with its due time to its track on the event loop, whose ``recv`` waits
for that time. Each track keeps at most a fixed number of frames (dropping the oldest), so a
consumer that stops reading never grows memory. Each pass opens the container again on the
file descriptor held since the first read: exactly the first pass again, for every format,
even one that cannot seek. Every pass is re-based by the length of the passes before it, so
pts only increase and audio and video stay on one timeline. Audio comes out as the rest of
callbot makes it (``ToneAudioTrack``, the mixer, aiortc's Opus encoder): s16 at 48 kHz, mono
or stereo, 20 ms frames, pts counting samples, gaps filled with silence.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import fractions
import logging
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, cast

import av
import numpy as np
import numpy.typing as npt
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError
from av.container import InputContainer

from .errors import SourceError

logger = logging.getLogger(__name__)

VIDEO_CLOCK_RATE = 90000
VIDEO_TIME_BASE = fractions.Fraction(1, VIDEO_CLOCK_RATE)
AUDIO_RATE = 48000
AUDIO_SAMPLES = 960  # 20 ms, as ToneAudioTrack and aiortc's Opus encoder
AUDIO_TIME_BASE = fractions.Fraction(1, AUDIO_RATE)
LEAD_S = 0.2  # the thread decodes at most this far ahead of the wall clock
STARVED_S = 0.5  # decoding this late moves the timeline on: a pause, never a catch-up burst
STALE_S = 0.25  # a consumer this late skips frames (if a newer one is due): a gap, no burst
VIDEO_CAPACITY = 30  # frames a track holds for a consumer that does not read (oldest dropped)
AUDIO_CAPACITY = 50
MAX_BAD_PACKETS = 8  # consecutive undecodable packets: the file has become unreadable
PROBE_FRAMES = 500  # construction decodes this far at most to find each stream's first frame
THREAD_NAME = "callbot-file-reader"

Frame = av.VideoFrame | av.AudioFrame


class _Stopped(Exception):
    """The reader was asked to stop (internal control flow of the decode thread)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class FileLayout:
    """What construction learned about the file; the decode thread plays by it."""

    path: Path
    format_name: str  # the demuxer, so each pass opens the file the same way
    video_index: int | None
    audio_index: int | None
    audio_layout: str  # "mono" or "stereo" (more channels are mixed down)
    start_s: float  # the earliest first timestamp of the streams played: media time zero
    audio_start_s: float  # where the audio begins (silence before it)
    frame_interval_s: float  # a video frame's length when the file does not say


def _open(file: BinaryIO, format_name: str | None = None) -> InputContainer:
    """A container reading ``file`` from its start (the caller closes both, container first)."""
    file.seek(0)
    return av.open(file, mode="r", format=format_name)


def _streams(container: InputContainer, layout: FileLayout) -> list[av.stream.Stream]:
    return [container.streams[i] for i in (layout.video_index, layout.audio_index) if i is not None]


def _decoded(
    container: InputContainer, streams: list[av.stream.Stream]
) -> Generator[Frame, None, None]:
    """Every frame of one pass; ``av.EOFError`` from a drained decoder is just its end.

    A few undecodable packets in a row are skipped (a damaged spot); more than
    ``MAX_BAD_PACKETS`` raise ``SourceError``. Demuxing errors other than the end propagate.
    Close the generator (``contextlib.closing``) before the container: PyAV's demuxer cleans
    up through the container and crashes if that is already closed.
    """
    bad = 0
    warned = False
    # A generator at run time (typed as an iterator): closed below.
    packets = cast("Generator[av.Packet[av.stream.Stream], None, None]", container.demux(*streams))
    try:
        for packet in packets:
            try:
                frames = packet.decode()
            except av.EOFError:
                continue
            except av.FFmpegError as exc:
                bad += 1
                if bad > MAX_BAD_PACKETS:
                    raise SourceError(f"{bad} undecodable packets in a row ({exc})") from exc
                if not warned:
                    warned = True
                    logger.warning("%s: skipping an undecodable packet (%s)", container.name, exc)
                continue
            bad = 0
            for frame in frames:
                if isinstance(frame, (av.VideoFrame, av.AudioFrame)):
                    yield frame
    finally:
        packets.close()  # its cleanup touches the container: run it before that closes


def _time(frame: Frame) -> float | None:
    if frame.pts is None or frame.time_base is None:
        return None
    return float(frame.pts * frame.time_base)


def _first_frames(
    container: InputContainer, streams: list[av.stream.Stream]
) -> tuple[dict[str, float | None], int, bool]:
    """The first timestamp of each kind, the audio's channels, and whether the file ended."""
    firsts: dict[str, float | None] = {}
    channels = 1
    with contextlib.closing(_decoded(container, streams)) as frames:
        for seen, frame in enumerate(frames):
            kind = "video" if isinstance(frame, av.VideoFrame) else "audio"
            if kind not in firsts:
                firsts[kind] = _time(frame)
                if isinstance(frame, av.AudioFrame):
                    channels = frame.layout.nb_channels
            if len(firsts) == len(streams) or seen >= PROBE_FRAMES:
                return firsts, channels, False
    return firsts, channels, True


def probe(path: Path) -> FileLayout:
    """Open the file and decode until each stream to play has shown a frame (blocking).

    Raises :class:`SourceError` for a missing, unreadable or non-media file, so that it fails
    where it is opened, not later inside a peer connection.
    """
    if not path.is_file():
        raise SourceError(f"media file not found: {path}")
    try:
        with path.open("rb") as file, _open(file) as container:
            video = container.streams.best("video")
            audio = container.streams.best("audio")
            chosen = [s for s in (video, audio) if s is not None]
            if not chosen:
                raise SourceError(f"no audio or video stream in {path}")
            format_name = container.format.name.split(",")[0]
            video_index = None if video is None else video.index
            audio_index = None if audio is None else audio.index
            rate = None if video is None else video.guessed_rate
            try:
                firsts, channels, whole = _first_frames(container, chosen)
            except SourceError as exc:
                raise SourceError(f"cannot decode media file {path}: {exc}") from exc
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise SourceError(f"cannot open media file {path}: {exc}") from exc
    if not firsts:
        raise SourceError(f"no decodable audio or video in {path}")
    # Decoded to the end: a stream without a frame by then has none.
    if video_index is not None and "video" not in firsts and whole:
        logger.warning("%s: its video stream has no decodable frame; playing audio only", path)
        video_index = None
    if audio_index is not None and "audio" not in firsts and whole:
        logger.warning("%s: its audio stream has no decodable frame; playing video only", path)
        audio_index = None
    start = min((t for t in firsts.values() if t is not None), default=0.0)
    audio_first = firsts.get("audio")
    return FileLayout(
        path=path,
        format_name=format_name,
        video_index=video_index,
        audio_index=audio_index,
        audio_layout="mono" if channels == 1 else "stereo",
        start_s=start,
        audio_start_s=start if audio_first is None else audio_first,
        frame_interval_s=1 / float(rate) if rate and 0 < rate <= 1000 else 1 / 30,
    )


class FileTrack(MediaStreamTrack):
    """One kind of a file's media, fed by the decode thread; ``recv`` returns each frame at its
    due time. The end of the file (``loop=False``) or a decode failure ends the track:
    ``recv`` then raises ``MediaStreamError``, as for any ended track.

    The thread puts frames straight into a locked queue of at most ``capacity`` and only
    posts wake-ups to the event loop, so even a stalled loop holds no more frames than that.
    """

    def __init__(self, kind: str, reader: FileReader, capacity: int) -> None:
        super().__init__()
        self.kind = kind
        self._reader = reader
        self._capacity = capacity
        self._lock = threading.Lock()  # guards _queue, _dropped and _stopped
        self._queue: collections.deque[tuple[Frame, float]] = collections.deque()
        self._dropped = 0
        self._stopped = False
        self._ready = asyncio.Event()
        self._finished = False

    @property
    def dropped(self) -> int:
        """Frames thrown away because the consumer fell behind (the queue was full, or they
        were overdue by more than ``STALE_S``)."""
        return self._dropped

    @property
    def queued(self) -> int:
        """Frames decoded and waiting for ``recv`` (at most ``capacity``)."""
        return len(self._queue)

    @property
    def stopped(self) -> bool:
        """``stop()`` was called (read by the decode thread: it then skips this kind)."""
        return self._stopped

    def put(self, frame: Frame, due: float) -> bool:
        """From the decode thread: queue a frame (dropping the oldest when full); whether the
        track still takes frames."""
        with self._lock:
            if self._stopped:
                return False
            self._queue.append((frame, due))
            if len(self._queue) > self._capacity:
                self._queue.popleft()
                self._dropped += 1
            return True

    def _take(self) -> tuple[Frame, float] | None:
        """The next frame; after a stalled consumer, frames more than ``STALE_S`` overdue are
        skipped while a newer one is due too: a stall costs a gap, never a catch-up burst."""
        with self._lock:
            queue = self._queue
            now = time.monotonic()
            while len(queue) > 1 and now - queue[0][1] > STALE_S and queue[1][1] <= now:
                queue.popleft()
                self._dropped += 1
            return queue.popleft() if queue else None

    def _wake(self) -> None:  # on the event loop
        self._ready.set()

    def _finish(self) -> None:  # on the event loop, after the last put: nothing more will come
        self._finished = True
        self._ready.set()

    async def recv(self) -> Frame:
        if self.readyState != "live":
            raise MediaStreamError
        self._reader.start(asyncio.get_running_loop())
        while True:
            self._ready.clear()
            item = self._take()
            if item is not None:
                break
            if self._finished:
                self.stop()
                raise MediaStreamError
            await self._ready.wait()
            if self.readyState != "live":
                raise MediaStreamError
        frame, due = item
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
            if self.readyState != "live":  # stopped while waiting for the frame's time
                raise MediaStreamError
        return frame

    def stop(self) -> None:
        super().stop()
        with self._lock:
            self._stopped = True
            self._queue.clear()
        self._ready.set()
        self._reader.track_stopped()


class FileReader:
    """Owns the decode thread of one file and the tracks it feeds.

    The thread starts on the first ``recv`` of either track (media time zero is then), and
    stops on :meth:`aclose`, once every track is stopped, at the end of a pass with
    ``loop=False``, or when the file cannot be decoded any more (logged once, tracks end).
    """

    def __init__(self, layout: FileLayout, *, loop: bool) -> None:
        self._layout = layout
        self._loop_playback = loop
        self.video = (
            None if layout.video_index is None else FileTrack("video", self, VIDEO_CAPACITY)
        )
        self.audio = (
            None if layout.audio_index is None else FileTrack("audio", self, AUDIO_CAPACITY)
        )
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._event_loop: asyncio.AbstractEventLoop | None = None
        # Owned by the decode thread once it runs:
        self._anchor = 0.0  # time.monotonic() of media time zero (moves on after starvation)
        self._last_video_pts = -1
        self._last_video: tuple[float, float] | None = None  # this pass: (time, duration)
        self._video_end = 0.0  # this pass: where its video ends, from media time zero
        self._pcm: npt.NDArray[np.int16] = np.zeros(0, dtype=np.int16)  # pending interleaved
        self._audio_cursor = 0  # samples handed out or pending, from media time zero
        self._audio_pts = 0  # pts of the next audio frame handed out

    @property
    def tracks(self) -> tuple[FileTrack, ...]:
        return tuple(t for t in (self.video, self.audio) if t is not None)

    def start(self, event_loop: asyncio.AbstractEventLoop) -> None:
        """Start decoding (once); frames go to the tracks on ``event_loop``."""
        if self._thread is not None or self._stop.is_set():
            return
        self._event_loop = event_loop
        self._thread = threading.Thread(target=self._run, name=THREAD_NAME, daemon=True)
        self._thread.start()

    def track_stopped(self) -> None:
        if all(t.stopped for t in self.tracks):
            self._stop.set()

    async def aclose(self) -> None:
        """Stop the tracks and the thread, and wait for it (it closes the file). Idempotent."""
        self._stop.set()
        for track in self.tracks:
            if track.readyState == "live":
                track.stop()
        thread = self._thread
        if thread is not None and thread.is_alive():
            await asyncio.to_thread(thread.join)

    # -- the decode thread -------------------------------------------------------------------

    def _run(self) -> None:
        path = self._layout.path
        try:
            # One descriptor for every pass: a file deleted or renamed meanwhile plays on.
            with path.open("rb") as file:
                self._anchor = time.monotonic()
                offset = 0.0
                while True:
                    # Each pass opens the container afresh rather than seeking: FFmpeg's seek
                    # to 0 lands on the first video keyframe and drops the audio packets
                    # before it (MP4's AAC priming packet, Opus's first packet in WebM), so
                    # every later pass would start with muted or missing audio.
                    with _open(file, self._layout.format_name) as container:
                        length, frames = self._play_pass(container, offset)
                    if frames == 0:
                        raise SourceError("a pass from the start gave no frames")
                    if not self._loop_playback:
                        self._flush_audio()
                        logger.info("%s: played once; its tracks end", path)
                        return
                    offset += length
        except _Stopped:
            pass
        except (SourceError, av.FFmpegError, OSError, ValueError) as exc:
            logger.error("cannot decode %s any more (%s); its tracks end", path, exc)
        finally:
            for track in self.tracks:
                with contextlib.suppress(_Stopped):
                    self._post(track._finish)

    def _play_pass(self, container: InputContainer, offset: float) -> tuple[float, int]:
        """Play the file once from ``offset`` seconds of media time; its length and frames."""
        layout = self._layout
        resampler = None
        if layout.audio_index is not None:
            resampler = av.AudioResampler(format="s16", layout=layout.audio_layout, rate=AUDIO_RATE)
            # Silence up to where this pass's audio starts keeps the audio continuous.
            self._pad_audio(round((offset + layout.audio_start_s - layout.start_s) * AUDIO_RATE))
        frames = 0
        self._video_end = 0.0
        self._last_video = None
        with contextlib.closing(_decoded(container, _streams(container, layout))) as decoded:
            for frame in decoded:
                if self._stop.is_set():
                    raise _Stopped
                frames += 1
                if isinstance(frame, av.VideoFrame):
                    self._add_video(frame, offset)
                elif resampler is not None:
                    for out in resampler.resample(frame):
                        self._add_audio(out)
        if resampler is not None:
            for out in resampler.resample(None):
                self._add_audio(out)
        length = max(self._video_end, self._audio_cursor / AUDIO_RATE - offset)
        return (length if length > 0 else layout.frame_interval_s), frames

    def _add_video(self, frame: av.VideoFrame, offset: float) -> None:
        """Re-stamp a decoded frame onto the timeline (90 kHz, strictly increasing), play it."""
        layout = self._layout
        ts = _time(frame)
        last = self._last_video
        if ts is None:  # no timestamps (a raw stream): one frame after the last
            ts = layout.start_s if last is None else last[0] + last[1]
        duration = layout.frame_interval_s
        if frame.duration and frame.time_base is not None:
            duration = float(frame.duration * frame.time_base)
        elif last is not None and ts > last[0]:
            duration = ts - last[0]
        self._last_video = (ts, duration)
        rel = ts - layout.start_s
        self._video_end = max(self._video_end, rel + duration)
        pts = max(round((offset + rel) * VIDEO_CLOCK_RATE), self._last_video_pts + 1)
        self._last_video_pts = pts
        frame.pts = pts
        frame.time_base = VIDEO_TIME_BASE
        if self.video is not None:
            self._emit(self.video, frame, pts / VIDEO_CLOCK_RATE)

    def _pad_audio(self, until_sample: int) -> None:
        gap = until_sample - self._audio_cursor
        if gap > 0:
            channels = 1 if self._layout.audio_layout == "mono" else 2
            self._queue_pcm(np.zeros(gap * channels, dtype=np.int16), gap)

    def _add_audio(self, frame: av.AudioFrame) -> None:
        self._queue_pcm(frame.to_ndarray().reshape(-1).astype(np.int16, copy=False), frame.samples)

    def _queue_pcm(self, pcm: npt.NDArray[np.int16], samples: int) -> None:
        self._pcm = np.concatenate((self._pcm, pcm))
        self._audio_cursor += samples
        channels = 1 if self._layout.audio_layout == "mono" else 2
        size = AUDIO_SAMPLES * channels
        while len(self._pcm) >= size:
            chunk, self._pcm = self._pcm[:size], self._pcm[size:]
            self._emit_audio(chunk)

    def _flush_audio(self) -> None:
        """The last partial 20 ms of a file played once, padded with silence."""
        if len(self._pcm) and self.audio is not None:
            channels = 1 if self._layout.audio_layout == "mono" else 2
            chunk = np.zeros(AUDIO_SAMPLES * channels, dtype=np.int16)
            chunk[: len(self._pcm)] = self._pcm
            self._pcm = self._pcm[:0]
            self._emit_audio(chunk)

    def _emit_audio(self, chunk: npt.NDArray[np.int16]) -> None:
        frame = av.AudioFrame.from_ndarray(
            chunk.reshape(1, -1), format="s16", layout=self._layout.audio_layout
        )
        frame.sample_rate = AUDIO_RATE
        frame.pts = self._audio_pts
        frame.time_base = AUDIO_TIME_BASE
        self._audio_pts += AUDIO_SAMPLES
        if self.audio is not None:
            self._emit(self.audio, frame, frame.pts / AUDIO_RATE)

    def _emit(self, track: FileTrack, frame: Frame, media_s: float) -> None:
        """Wait until ``media_s`` is at most ``LEAD_S`` away, then hand the frame over."""
        if track.stopped:
            return
        due = self._anchor + media_s
        late = time.monotonic() - due
        if late > STARVED_S:  # decoding fell behind (a starved machine): pause, don't burst
            self._anchor += late
            due += late
        elif -late > LEAD_S and self._stop.wait(-late - LEAD_S):
            raise _Stopped
        if self._stop.is_set():
            raise _Stopped
        if track.put(frame, due):
            self._post(track._wake)

    def _post(self, callback: Callable[[], None]) -> None:
        event_loop = self._event_loop
        if event_loop is None:
            return
        try:
            event_loop.call_soon_threadsafe(callback)
        except RuntimeError:  # the loop is closed: nobody is left to read
            self._stop.set()
            raise _Stopped from None
