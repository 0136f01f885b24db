"""Record live tracks to a file: readers on the loop, one writer thread that encodes and muxes.

Why it is built this way:

* Encoding and muxing are CPU-bound and blocking, so one owned thread does all of it; the loop
  only moves frames into a bounded queue (drop-oldest: a stalled disk loses frames, not memory).
* Files are written to survive a crash (SIGKILL, power loss of the process): packets are
  flushed to the OS as they are muxed, Matroska clusters close every second, MP4 is fragmented
  with a keyframe every second. A killed recording decodes up to roughly its last second.
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
import os
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import av
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from . import _yuv
from ._writer import FLUSH_S, Item, Kind, Profile, Writer, open_container
from .clock import MediaClock
from .errors import RecorderError

__all__ = [
    "AUDIO_ONLY_EXTENSIONS",
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


class Recorder:
    """Records a video and/or an audio track to ``path``; the container follows the extension.

    ``.mkv`` (H.264 or, with ``video_codec="vp8"``, VP8; Opus; recommended), ``.mp4``/``.mov``
    (fragmented MP4, H.264 + AAC), ``.webm`` (VP8 + Opus), ``.mka`` (Opus, audio only). The
    output size is ``width`` x ``height`` if given, else the first video frame's; later frames
    of another size are scaled (letterboxed if the aspect ratio differs). ``fps`` sets the
    keyframe interval and the nominal rate; actual timing follows the frames.

    ``clock``: the :class:`~media.clock.MediaClock` both tracks' pts are counted on (sources,
    compositor and mixer built with it). Then A/V sync comes from the timestamps alone: each
    frame lands at its pts minus the recording's start, however late it is delivered. Leave it
    ``None`` for tracks with unrelated timestamps (remote WebRTC tracks); each track is then
    pinned to the arrival of its first frame. Tracks are borrowed, never stopped.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        video: MediaStreamTrack | None,
        audio: MediaStreamTrack | None = None,
        fps: float = 30.0,
        width: int | None = None,
        height: int | None = None,
        video_codec: VideoCodec | None = None,
        clock: MediaClock | None = None,
    ) -> None:
        self._path = Path(path)
        profile = profile_for(self._path, video_codec, video=video is not None)
        if video is None and audio is None:
            raise RecorderError("nothing to record: pass a video and/or an audio track")
        if video is not None and video.kind != "video":
            raise ValueError(f"video track has kind {video.kind!r}")
        if audio is not None and audio.kind != "audio":
            raise ValueError(f"audio track has kind {audio.kind!r}")
        if not 0 < fps <= 120:
            raise ValueError(f"fps must be in (0, 120], got {fps}")
        if (width is None) != (height is None):
            raise ValueError("give both width and height, or neither")
        if width is not None and height is not None:
            _yuv.check_size(width, height)
        self._profile = profile
        self._video = video
        self._audio = audio
        self._fps = float(fps)
        self._size = (width, height) if width is not None and height is not None else None
        self._clock = clock
        capacity = (int(self._fps * 2) if video else 0) + (100 if audio else 0)
        self._items: queue.Queue[Item | None] = queue.Queue(maxsize=capacity)
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
    def video_frames(self) -> int:
        """Video frames encoded so far."""
        return self._writer.video_frames if self._writer else 0

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
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Open the file (failing with RecorderError if it cannot be written) and start."""
        if self._started:
            raise RecorderError("recorder already started")
        self._started = True
        try:
            container = await asyncio.to_thread(self._open)
        except (OSError, av.FFmpegError, ValueError) as exc:
            raise RecorderError(f"cannot record to {self._path}: {exc}") from exc
        self._writer = Writer(
            container,
            self._profile,
            want_video=self._video is not None,
            want_audio=self._audio is not None,
            fps=self._fps,
            size=self._size,
            items=self._items,
            clock=self._clock,
        )
        self._thread = threading.Thread(
            target=self._writer.run, name=f"recorder-{self._path.name}", daemon=True
        )
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
        try:
            self._items.put_nowait(item)
        except queue.Full:
            with contextlib.suppress(queue.Empty):
                oldest = self._items.get_nowait()
                if oldest is not None and oldest[1] is not None:
                    self._dropped[oldest[0]] += 1
            self._items.put_nowait(item)

    async def aclose(self) -> RecordingInfo:
        """Stop reading, flush encoders, finalise the file, join the writer. Idempotent.

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
