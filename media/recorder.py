"""Record live tracks to a file: readers on the loop, one writer thread that encodes and muxes.

Why it is built this way:

* Encoding and muxing are CPU-bound and blocking, so one owned thread does all of it; the loop
  only moves frames into a bounded queue (drop-oldest: a stalled disk loses frames, not memory).
  Video waits there at most ``MAX_LAG_S`` (audio, cheap to write, twice that): a writer
  starved of CPU skips stale video, keeping ~2 fps, instead of falling seconds behind, all of
  which a crash would lose.
* Files are written to survive a crash (SIGKILL, power loss of the process): packets are
  flushed to the OS as they are muxed, Matroska clusters close every second, MP4 is fragmented
  at keyframes, which come at least every second of media. A killed recording decodes up to
  about 2 s before the kill (the queue's lag, one cluster or fragment, the interleaver's half
  second), usually within ~1 s.
* Timestamps come from the frames' own pts, so the file plays at real speed across gaps; the
  muxer only ever sees strictly increasing video pts and gap-filled, contiguous audio.
* A/V sync: given the :class:`~media.clock.MediaClock` the tracks were paced by, a frame's
  place in the file is its pts minus the recording's start, for every track, so a track that
  is delivered late (a slow compositor, a jittery mixer) stays in sync. Without a clock the
  tracks' timestamps are unrelated (remote WebRTC tracks): each track is pinned to the arrival
  of its first frame and follows its own pts from there.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import av
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from . import _yuv
from ._writer import FLUSH_S, OFFSET_TAG, Item, Kind, Profile, Writer, open_container
from .clock import MediaClock
from .errors import RecorderError

__all__ = [
    "AUDIO_ONLY_EXTENSIONS",
    "MAX_LAG_S",
    "OFFSET_TAG",
    "SUPPORTED_EXTENSIONS",
    "Recorder",
    "RecordingInfo",
    "VideoCodec",
]

logger = logging.getLogger(__name__)

_MATROSKA_OPTS = {"cluster_time_limit": str(FLUSH_S * 1000)}
_FRAG_MP4_OPTS = {
    "movflags": "frag_keyframe+empty_moov+default_base_moof",
    "frag_duration": str(FLUSH_S * 1_000_000),
}
VideoCodec = Literal["h264", "vp8"]
_ENCODERS: dict[str, str] = {"h264": "libx264", "vp8": "libvpx"}
# Per extension: the profile with its default video codec ("" = audio only), and the video
# codecs the container can carry.
_PROFILES: dict[str, tuple[Profile, tuple[VideoCodec, ...]]] = {
    ".mkv": (Profile("matroska", "libx264", "libopus", _MATROSKA_OPTS), ("h264", "vp8")),
    ".mka": (Profile("matroska", "", "libopus", _MATROSKA_OPTS), ()),
    ".mp4": (Profile("mp4", "libx264", "aac", _FRAG_MP4_OPTS), ("h264",)),
    ".mov": (Profile("mov", "libx264", "aac", _FRAG_MP4_OPTS), ("h264",)),
    ".webm": (Profile("webm", "libvpx", "libopus", _MATROSKA_OPTS), ("vp8",)),
}
SUPPORTED_EXTENSIONS = tuple(_PROFILES)
AUDIO_ONLY_EXTENSIONS = (".mka",)
MAX_LAG_S = 0.5  # video older than this in the queue is dropped: bounds what a crash loses


def profile_for(path: Path, video_codec: VideoCodec | None = None, *, video: bool) -> Profile:
    """Container and codecs for ``path``'s extension; RecorderError if it cannot hold them."""
    suffix = path.suffix.lower()
    if suffix not in _PROFILES:
        raise RecorderError(
            f"unsupported recording extension {path.suffix!r} for {path}; "
            f"use one of {', '.join(SUPPORTED_EXTENSIONS)}"
        )
    profile, codecs = _PROFILES[suffix]
    if video_codec is not None and video_codec not in _ENCODERS:
        raise ValueError(f"video_codec must be one of {', '.join(_ENCODERS)}, got {video_codec!r}")
    if video and not codecs:
        raise RecorderError(f"{suffix} is audio-only; record video to .mkv, .mp4 or .webm")
    if video_codec is not None and video_codec not in codecs:
        raise RecorderError(
            f"{suffix} cannot carry {video_codec}; use .mkv (h264 or vp8), .webm (vp8) or "
            ".mp4 (h264)"
        )
    if video_codec is not None:
        profile = dataclasses.replace(profile, video_codec=_ENCODERS[video_codec])
    return profile


@dataclass(frozen=True, slots=True)
class RecordingInfo:
    """What ended up in the file."""

    path: Path
    video_frames: int
    audio_frames: int
    duration_s: float
    dropped_video_frames: int = 0
    """Video frames not in the file: the writer fell behind (the bounded queue dropped the
    oldest), or, with a shared clock, they were made before the recording started."""
    dropped_audio_frames: int = 0
    """Audio frames not in the file, for the same reasons or because they only repeated
    time already written."""

    @property
    def dropped_frames(self) -> int:
        """Both kinds together."""
        return self.dropped_video_frames + self.dropped_audio_frames

    @property
    def empty(self) -> bool:
        """No frame was recorded; then no file is left (a container without media in it
        cannot be opened)."""
        return self.video_frames == 0 and self.audio_frames == 0


class _LiveQueue(queue.Queue[Item | None]):
    """The writer's feed: never blocks the producer, drops the oldest when full, and bounds
    how far the writer lags behind (which is what a crash loses).

    Video that has waited over ``max_lag_s`` is dropped, but for the first frame of every
    ``max_lag_s`` slice of arrival time (a starved writer still shows ~2 fps rather than none);
    audio, cheap to write, is dropped only past twice that.
    """

    def __init__(self, maxsize: int, max_lag_s: float) -> None:
        super().__init__(maxsize)
        self._max_lag = max_lag_s

    def put_live(self, item: Item) -> list[Kind]:
        """Queue ``item``; return the kinds of the frames dropped to make room for it."""
        dropped: list[Kind] = []
        with self.mutex:
            q = self.queue
            now = item[2]
            if q and q[0] is not None and q[0][2] < now - self._max_lag:  # oldest first
                kept: list[Item | None] = []
                slices: set[int] = set()
                for old in q:
                    if old is not None and old[1] is not None and self._stale(old, now, slices):
                        dropped.append(old[0])
                    else:
                        kept.append(old)
                q.clear()
                q.extend(kept)
            while self.maxsize > 0 and len(q) >= self.maxsize:
                oldest = q.popleft()
                if oldest is not None and oldest[1] is not None:
                    dropped.append(oldest[0])
            q.append(item)
            self.unfinished_tasks += 1
            self.not_empty.notify()
        return dropped

    def _stale(self, item: Item, now: float, slices: set[int]) -> bool:
        kind, _, arrival = item
        if kind == "audio":
            return now - arrival > 2 * self._max_lag
        first_of_slice = (n := math.floor(arrival / self._max_lag)) not in slices
        slices.add(n)
        return now - arrival > self._max_lag and not first_of_slice


class Recorder:
    """Records a video and/or an audio track to ``path``; the container follows the extension.

    ``.mkv`` (H.264 or, with ``video_codec="vp8"``, VP8; Opus; recommended), ``.mp4``/``.mov``
    (fragmented MP4, H.264 + AAC), ``.webm`` (VP8 + Opus), ``.mka`` (Opus, audio only). The
    output size is ``width`` x ``height`` if given, else the first video frame's; later frames
    of another size are scaled (letterboxed if the aspect ratio differs). ``fps`` is the
    nominal rate the file declares (a keyframe comes every ``fps`` frames, or every second of
    media if that is sooner); actual timing follows the frames. ``fps=None`` (a track of
    unknown rate, e.g. a remote one): the rate is measured on the first second of video.

    ``clock``: the :class:`~media.clock.MediaClock` both tracks' pts are counted on (sources,
    compositor and mixer built with it). Then A/V sync comes from the timestamps alone: each
    frame lands at its pts minus the recording's start, however late it is delivered. Leave it
    ``None`` for tracks with unrelated timestamps (remote WebRTC tracks); each track is then
    pinned to the arrival of its first frame. Tracks are borrowed, never stopped.

    ``timeline``: returns the ``time.monotonic()`` instant that is 0 s of a longer recording
    this file is part of (e.g. ``lambda: room.origin`` of the room's recorder), or None while
    unknown. The header then carries where this file starts on it (``OFFSET_TAG``, seconds),
    and ``callbot composite`` places the file there.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        video: MediaStreamTrack | None,
        audio: MediaStreamTrack | None = None,
        fps: float | None = 30.0,
        width: int | None = None,
        height: int | None = None,
        video_codec: VideoCodec | None = None,
        clock: MediaClock | None = None,
        timeline: Callable[[], float | None] | None = None,
    ) -> None:
        self._path = Path(path)
        profile = profile_for(self._path, video_codec, video=video is not None)
        if video is None and audio is None:
            raise RecorderError("nothing to record: pass a video and/or an audio track")
        if video is not None and video.kind != "video":
            raise ValueError(f"video track has kind {video.kind!r}")
        if audio is not None and audio.kind != "audio":
            raise ValueError(f"audio track has kind {audio.kind!r}")
        if fps is not None and not 0 < fps <= 120:
            raise ValueError(f"fps must be in (0, 120], got {fps}")
        if (width is None) != (height is None):
            raise ValueError("give both width and height, or neither")
        if width is not None and height is not None:
            _yuv.check_size(width, height)
        self._profile = profile
        self._video = video
        self._audio = audio
        self._fps = None if fps is None else float(fps)
        self._size = (width, height) if width is not None and height is not None else None
        self._clock = clock
        self._timeline = timeline
        # Memory bound (the time bound is MAX_LAG_S, for video): 1 s of video, 1 s of audio.
        capacity = (max(5, int(self._fps or 30.0)) if video else 0) + (50 if audio else 0)
        self._items = _LiveQueue(capacity, MAX_LAG_S)
        self._writer: Writer | None = None
        self._thread: threading.Thread | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._dropped = {"video": 0, "audio": 0}  # by the queue
        self._started = False
        self._info: RecordingInfo | None = None
        self._closing: asyncio.Future[RecordingInfo] | None = None

    @property
    def path(self) -> Path:
        return self._path

    @property
    def origin(self) -> float | None:
        """The ``time.monotonic()`` instant that is 0 s in the file; None until it is known
        (the writer settles it with the first frames)."""
        return self._writer.origin if self._writer else None

    @property
    def video_frames(self) -> int:
        """Video frames encoded so far."""
        return self._writer.video_frames if self._writer else 0

    @property
    def video_time_s(self) -> float:
        """Where the newest encoded video frame lies in the file, in seconds."""
        return self._writer.video_time_s if self._writer else 0.0

    @property
    def audio_frames(self) -> int:
        """Audio frames (as received) encoded so far."""
        return self._writer.audio_frames if self._writer else 0

    @property
    def dropped_video_frames(self) -> int:
        """Video frames that will not be in the file (see ``RecordingInfo``)."""
        return self._dropped["video"] + (self._writer.dropped_video if self._writer else 0)

    @property
    def dropped_audio_frames(self) -> int:
        """Audio frames that will not be in the file (see ``RecordingInfo``)."""
        return self._dropped["audio"] + (self._writer.dropped_audio if self._writer else 0)

    @property
    def dropped_frames(self) -> int:
        return self.dropped_video_frames + self.dropped_audio_frames

    @property
    def duration_s(self) -> float:
        """Seconds of media encoded so far (the file holds this, minus what a crash loses)."""
        return self._writer.duration_s if self._writer else 0.0

    async def __aenter__(self) -> Recorder:
        try:
            await self.start()
        except BaseException:
            # ``async with`` runs no __aexit__ when entering fails: a start cancelled after it
            # opened the file has a writer and readers running that only aclose stops.
            with contextlib.suppress(Exception):  # the start's own error is the one to see
                await asyncio.shield(self.aclose())
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Open the file (failing with RecorderError if it cannot be written) and start.

        Cancelled while the file is being opened, it still finishes opening and starts the
        writer before re-raising, so ``aclose()`` leaves a valid (maybe empty) file rather
        than a truncated 0-byte one.
        """
        if self._started:
            raise RecorderError("recorder already started")
        self._started = True
        opening = asyncio.ensure_future(asyncio.to_thread(self._open))
        cancelled = False
        while not opening.done():
            try:
                await asyncio.wait({opening})
            except asyncio.CancelledError:
                cancelled = True
        error = opening.exception()
        if error is None:
            self._begin(opening.result())
        if cancelled:
            raise asyncio.CancelledError
        if isinstance(error, OSError | av.FFmpegError | ValueError):
            raise RecorderError(f"cannot record to {self._path}: {error}") from error
        if error is not None:
            raise error

    def _begin(self, container: av.container.OutputContainer) -> None:
        self._writer = Writer(
            container,
            self._profile,
            want_video=self._video is not None,
            want_audio=self._audio is not None,
            fps=self._fps,
            size=self._size,
            items=self._items,
            clock=self._clock,
            timeline=self._timeline,
        )
        # Not a daemon: exit waits for a writer that is finalising (see media._writer).
        self._thread = threading.Thread(target=self._writer.run, name=f"recorder-{self._path.name}")
        self._thread.start()
        loop = asyncio.get_running_loop()
        if self._video is not None:
            self._tasks.append(loop.create_task(self._read("video", self._video)))
        if self._audio is not None:
            self._tasks.append(loop.create_task(self._read("audio", self._audio)))

    def _open(self) -> av.container.OutputContainer:
        return open_container(self._path, self._profile)

    async def _read(self, kind: Kind, track: MediaStreamTrack) -> None:
        try:
            while True:
                frame = await track.recv()
                if not isinstance(frame, av.VideoFrame | av.AudioFrame):
                    raise RecorderError(
                        f"{kind} track yielded {type(frame).__name__}; only decoded frames "
                        "can be recorded"
                    )
                self._enqueue((kind, frame, time.monotonic()))
        except MediaStreamError:
            logger.debug("recorder %s track ended", kind)
            self._enqueue((kind, None, time.monotonic()))
        except Exception:
            logger.exception("recorder %s reader failed; aclose() will raise", kind)
            self._enqueue((kind, None, time.monotonic()))
            raise

    def _enqueue(self, item: Item) -> None:
        for kind in self._items.put_live(item):
            self._dropped[kind] += 1

    async def aclose(self) -> RecordingInfo:
        """Stop reading, flush encoders, finalise the file, join the writer. Idempotent.

        A recording that got no frame at all (stopped as it started) leaves no file.
        Raises RecorderError if the writer failed (the file is closed either way).
        """
        if self._closing is None:
            self._closing = asyncio.get_running_loop().create_future()
            try:
                info = await self._shutdown()
            except asyncio.CancelledError:
                self._closing.cancel()
                raise
            except Exception as exc:
                self._closing.set_exception(exc)
                self._closing.exception()  # mark retrieved: this caller gets it raised
                raise
            self._closing.set_result(info)
            return info
        return await asyncio.shield(self._closing)

    async def _shutdown(self) -> RecordingInfo:
        for task in self._tasks:
            task.cancel()
        results = await asyncio.gather(*self._tasks, return_exceptions=True)
        reader_errors = [r for r in results if isinstance(r, Exception)]
        writer, thread = self._writer, self._thread
        if writer is not None and thread is not None:
            await asyncio.to_thread(self._items.put, None)
            await asyncio.to_thread(thread.join)
            if writer.error is None and writer.video_frames == writer.audio_frames == 0:
                # Headers and no media: players (and composite) cannot open that. Say so by
                # leaving no file rather than an unreadable one.
                await asyncio.to_thread(self._path.unlink, missing_ok=True)
        info = RecordingInfo(
            path=self._path,
            video_frames=writer.video_frames if writer else 0,
            audio_frames=writer.audio_frames if writer else 0,
            duration_s=writer.duration_s if writer else 0.0,
            dropped_video_frames=self.dropped_video_frames,
            dropped_audio_frames=self.dropped_audio_frames,
        )
        if reader_errors:
            raise RecorderError(
                f"reading a track for {self._path} failed: {reader_errors[0]}"
            ) from (reader_errors[0])
        if writer is not None and writer.error is not None:
            raise RecorderError(f"recording to {self._path} failed: {writer.error}") from (
                writer.error
            )
        return info
