"""Record live tracks to a file: readers on the loop, one writer thread that encodes and muxes.

Why it is built this way:

* Encoding and muxing are CPU-bound and blocking, so one owned thread does all of it; the loop
  only moves frames into a bounded queue (drop-oldest: a stalled disk loses frames, not memory).
* Files are written to survive a crash (SIGKILL, power loss of the process): packets are
  flushed to the OS as they are muxed, Matroska clusters close every second, MP4 is fragmented
  with a keyframe every second. A killed recording decodes up to roughly its last second.
* Timestamps come from the frames' own pts (rebased to the first frame of the recording,
  tracks aligned by arrival time), so the file plays at real speed across gaps; the muxer only
  ever sees strictly increasing video pts and gap-filled, contiguous audio.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import av
import numpy as np
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError
from av.video.reformatter import VideoReformatter

from . import _yuv
from .errors import RecorderError
from .layout import Rect, fit

__all__ = ["SUPPORTED_EXTENSIONS", "Recorder", "RecordingInfo"]

logger = logging.getLogger(__name__)

_VIDEO_TB = fractions.Fraction(1, 90000)
_MIN_VIDEO_STEP = 90  # 1 ms in 1/90000: keeps pts strictly increasing after rescale to 1/1000
_AUDIO_RATE = 48000
_AUDIO_TB = fractions.Fraction(1, _AUDIO_RATE)
_HEADER_TIMEOUT_S = 2.0  # how long to wait for every track's first frame before writing headers
_FALLBACK_SIZE = (640, 480)
_RESYNC_S = 2.0  # a track whose pts disagree with arrival time by more is re-anchored
_AUDIO_GAP_S = 0.1  # audio gaps longer than this are filled with silence
_AUDIO_AHEAD_S = 0.5  # audio arriving this far behind what was written is dropped
_FLUSH_S = 1  # cluster / fragment length, the amount of media a crash may lose

_Kind = Literal["video", "audio"]


@dataclass(frozen=True, slots=True)
class _Profile:
    format: str
    video_codec: str
    audio_codec: str
    options: dict[str, str] = field(default_factory=dict)


_MATROSKA_OPTS = {"cluster_time_limit": str(_FLUSH_S * 1000)}
_FRAG_MP4_OPTS = {
    "movflags": "frag_keyframe+empty_moov+default_base_moof",
    "frag_duration": str(_FLUSH_S * 1_000_000),
}
_PROFILES = {
    ".mkv": _Profile("matroska", "libx264", "libopus", _MATROSKA_OPTS),
    ".mp4": _Profile("mp4", "libx264", "aac", _FRAG_MP4_OPTS),
    ".mov": _Profile("mov", "libx264", "aac", _FRAG_MP4_OPTS),
    ".webm": _Profile("webm", "libvpx", "libopus", _MATROSKA_OPTS),
}
SUPPORTED_EXTENSIONS = tuple(_PROFILES)


@dataclass(frozen=True, slots=True)
class RecordingInfo:
    """What ended up in the file."""

    path: Path
    video_frames: int
    audio_frames: int
    duration_s: float
    dropped_frames: int = 0
    """Frames lost because the writer fell behind (the bounded queue dropped the oldest)."""


_Item = tuple[_Kind, av.VideoFrame | av.AudioFrame | None, float]


class _TrackClock:
    """Maps one track's frame timestamps onto the recording timeline (seconds)."""

    def __init__(self) -> None:
        self._anchor: tuple[float, float] | None = None  # (recording time, frame time)

    def time_of(self, frame: av.VideoFrame | av.AudioFrame, arrival: float) -> float:
        if frame.pts is None or frame.time_base is None:
            return arrival
        media = float(frame.pts * frame.time_base)
        if self._anchor is None or abs(self._anchor[0] + media - self._anchor[1] - arrival) > (
            _RESYNC_S
        ):
            # First frame, or a timestamp jump (source loop, RTP reset): trust arrival time.
            self._anchor = (arrival, media)
        return self._anchor[0] + media - self._anchor[1]


class _Writer:
    """Everything here runs in the writer thread, except ``__init__``."""

    def __init__(
        self,
        container: av.container.OutputContainer,
        profile: _Profile,
        *,
        want_video: bool,
        want_audio: bool,
        fps: float,
        size: tuple[int, int] | None,
        items: queue.Queue[_Item | None],
    ) -> None:
        self.container = container
        self.profile = profile
        self.want_video = want_video
        self.want_audio = want_audio
        self.fps = fps
        self.size = size
        self.items = items
        self.error: BaseException | None = None
        self.video_frames = 0
        self.audio_frames = 0
        self.dropped = 0
        self._vstream: av.video.stream.VideoStream | None = None
        self._astream: av.audio.stream.AudioStream | None = None
        self._resampler: av.AudioResampler | None = None
        self._reformatter = VideoReformatter()  # reused: building a scaler costs ~1 ms
        self._t0: float | None = None
        self._clocks = {"video": _TrackClock(), "audio": _TrackClock()}
        self._last_vpts: int | None = None
        self._audio_written = 0  # samples at 48 kHz handed to the encoder
        self._pending: list[_Item] = []
        self._seen: set[_Kind] = set()
        self._started_at = time.monotonic()
        self._headers = False

    # -- thread body -------------------------------------------------------------------------

    def run(self) -> None:
        while True:
            try:
                item = self.items.get(timeout=None if self._headers else 0.1)
            except queue.Empty:  # still waiting for first frames: check the header deadline
                self._guard(self._maybe_start)
                continue
            if item is None:
                break
            self._guard(self._handle, item)
        self._guard(self._finish)
        with contextlib.suppress(av.FFmpegError, OSError):
            self.container.close()

    def _guard(self, step: Callable[..., None], *args: object) -> None:
        """Run one step; after the first failure only drain, so the loop never blocks on us."""
        if self.error is not None:
            return
        try:
            step(*args)
        except Exception as exc:  # reported by Recorder.aclose as RecorderError
            logger.exception("recorder writer failed")
            self.error = exc

    # -- header ------------------------------------------------------------------------------

    def _handle(self, item: _Item) -> None:
        if self._headers:
            self._write(item)
            return
        kind, frame, _ = item
        self._seen.add(kind)
        if frame is not None:
            self._pending.append(item)
            if len(self._pending) > 500:
                self._pending.pop(0)
                self.dropped += 1
        self._maybe_start()

    def _maybe_start(self) -> None:
        waiting = (self.want_video and "video" not in self._seen) or (
            self.want_audio and "audio" not in self._seen
        )
        if waiting and time.monotonic() - self._started_at < _HEADER_TIMEOUT_S:
            return
        self._open_streams()
        pending, self._pending = self._pending, []
        for item in pending:
            self._write(item)

    def _first_video(self) -> av.VideoFrame | None:
        return next((f for _, f, _ in self._pending if isinstance(f, av.VideoFrame)), None)

    def _first_audio(self) -> av.AudioFrame | None:
        return next((f for _, f, _ in self._pending if isinstance(f, av.AudioFrame)), None)

    def _open_streams(self) -> None:
        self._headers = True
        if self.want_video:
            first = self._first_video()
            if self.size is not None:
                width, height = self.size
            elif first is not None:
                width, height = first.width & ~1, first.height & ~1
            else:
                width, height = _FALLBACK_SIZE
            rate = fractions.Fraction(self.fps).limit_denominator(1001)
            vs = self.container.add_stream(self.profile.video_codec, rate=rate)
            assert isinstance(vs, av.video.stream.VideoStream)
            cc = vs.codec_context
            cc.width, cc.height = width, height
            cc.pix_fmt = "yuv420p"
            cc.time_base = _VIDEO_TB
            cc.gop_size = max(1, round(self.fps * _FLUSH_S))
            if self.profile.video_codec == "libx264":
                cc.options = {"preset": "ultrafast", "tune": "zerolatency"}
            else:
                cc.bit_rate = max(500_000, int(0.1 * width * height * self.fps))
                cc.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"}
            self._vstream = vs
        if self.want_audio:
            first_audio = self._first_audio()
            mono = first_audio is not None and first_audio.layout.nb_channels == 1
            layout = "mono" if mono else "stereo"
            astream = self.container.add_stream(self.profile.audio_codec, rate=_AUDIO_RATE)
            assert isinstance(astream, av.audio.stream.AudioStream)
            astream.codec_context.layout = layout
            astream.codec_context.time_base = _AUDIO_TB
            self._astream = astream
            self._resampler = av.AudioResampler(
                format="s16", layout=layout, rate=_AUDIO_RATE, frame_size=960
            )
        self.container.start_encoding()

    # -- media -------------------------------------------------------------------------------

    def _write(self, item: _Item) -> None:
        kind, frame, arrival = item
        if frame is None:
            return
        if self._t0 is None:
            self._t0 = arrival
        at = self._clocks[kind].time_of(frame, arrival - self._t0)
        if isinstance(frame, av.VideoFrame) and self._vstream is not None:
            self._write_video(frame, at)
        elif isinstance(frame, av.AudioFrame) and self._astream is not None:
            self._write_audio(frame, at)

    def _write_video(self, frame: av.VideoFrame, at: float) -> None:
        stream = self._vstream
        assert stream is not None
        out = self._fit(frame, stream.codec_context.width, stream.codec_context.height)
        pts = max(0, round(at / _VIDEO_TB))
        if self._last_vpts is not None and pts < self._last_vpts + _MIN_VIDEO_STEP:
            pts = self._last_vpts + _MIN_VIDEO_STEP
        self._last_vpts = pts
        out.pts = pts
        out.time_base = _VIDEO_TB
        self.container.mux(stream.encode(out))
        self.video_frames += 1

    def _fit(self, frame: av.VideoFrame, width: int, height: int) -> av.VideoFrame:
        """A new yuv420p frame of the output size; another aspect ratio is letterboxed."""
        rect = fit(frame.width, frame.height, Rect(0, 0, width, height))
        if (rect.w, rect.h) == (width, height) or rect.w < 2 or rect.h < 2:
            out = self._reformatter.reformat(frame, width=width, height=height, format="yuv420p")
            if out is not frame:
                return out
            # Never set pts on a frame other consumers may share: copy it.
            buf = np.concatenate([p.reshape(-1) for p in _yuv.planes_of(frame)])
            return _yuv.to_frame(buf, width, height)
        scaled = self._reformatter.reformat(frame, width=rect.w, height=rect.h, format="yuv420p")
        buf = _yuv.alloc(width, height)
        y, u, v = _yuv.views(buf, width, height)
        sy, su, sv = _yuv.planes_of(scaled)
        y[rect.y : rect.bottom, rect.x : rect.right] = sy
        u[rect.y // 2 : rect.bottom // 2, rect.x // 2 : rect.right // 2] = su
        v[rect.y // 2 : rect.bottom // 2, rect.x // 2 : rect.right // 2] = sv
        return _yuv.to_frame(buf, width, height)

    def _write_audio(self, frame: av.AudioFrame, at: float) -> None:
        stream, resampler = self._astream, self._resampler
        assert stream is not None and resampler is not None
        written = self._audio_written / _AUDIO_RATE
        if at - written > _AUDIO_GAP_S:
            self._encode_audio(self._resample(_silence_like(frame, at - written)))
        elif written - at > _AUDIO_AHEAD_S:
            self.dropped += 1
            return
        self._encode_audio(self._resample(frame))
        self.audio_frames += 1

    def _resample(self, frame: av.AudioFrame) -> list[av.AudioFrame]:
        assert self._resampler is not None
        try:
            out: list[av.AudioFrame] = self._resampler.resample(frame)
        except ValueError:  # input format changed mid-stream
            layout = self._resampler.layout
            self._resampler = av.AudioResampler(
                format="s16", layout=layout, rate=_AUDIO_RATE, frame_size=960
            )
            out = self._resampler.resample(frame)
        return out

    def _encode_audio(self, frames: list[av.AudioFrame]) -> None:
        assert self._astream is not None
        for out in frames:
            out.pts = self._audio_written
            out.time_base = _AUDIO_TB
            self._audio_written += out.samples
            self.container.mux(self._astream.encode(out))

    def _finish(self) -> None:
        if not self._headers:
            self._open_streams()
            for item in self._pending:
                self._write(item)
            self._pending = []
        if self._resampler is not None and self._astream is not None:
            self._encode_audio(self._resampler.resample(None))
        for stream in (self._vstream, self._astream):
            if stream is not None:
                self.container.mux(stream.encode(None))

    @property
    def duration_s(self) -> float:
        video = 0.0
        if self._last_vpts is not None:
            video = float(self._last_vpts * _VIDEO_TB) + 1 / self.fps
        return max(video, self._audio_written / _AUDIO_RATE)


def _silence_like(frame: av.AudioFrame, seconds: float) -> av.AudioFrame:
    samples = max(1, int(seconds * frame.sample_rate))
    silent = av.AudioFrame(format=frame.format.name, layout=frame.layout.name, samples=samples)
    for plane in silent.planes:
        plane.update(bytes(plane.buffer_size))
    silent.sample_rate = frame.sample_rate
    return silent


class Recorder:
    """Records a video and/or an audio track to ``path``; the container follows the extension.

    ``.mkv`` (H.264 + Opus, recommended), ``.mp4``/``.mov`` (fragmented MP4, H.264 + AAC),
    ``.webm`` (VP8 + Opus). The output size is ``width`` x ``height`` if given, else the first
    video frame's; later frames of another size are scaled (letterboxed if the aspect ratio
    differs). ``fps`` sets the keyframe interval
    and the nominal rate; actual timing follows the frames. Tracks are borrowed, never stopped.
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
    ) -> None:
        self._path = Path(path)
        profile = _PROFILES.get(self._path.suffix.lower())
        if profile is None:
            raise RecorderError(
                f"unsupported recording extension {self._path.suffix!r} for {self._path}; "
                f"use one of {', '.join(SUPPORTED_EXTENSIONS)}"
            )
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
        capacity = (int(self._fps * 2) if video else 0) + (100 if audio else 0)
        self._items: queue.Queue[_Item | None] = queue.Queue(maxsize=capacity)
        self._writer: _Writer | None = None
        self._thread: threading.Thread | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._dropped = 0
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
    def dropped_frames(self) -> int:
        return self._dropped + (self._writer.dropped if self._writer else 0)

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
        self._writer = _Writer(
            container,
            self._profile,
            want_video=self._video is not None,
            want_audio=self._audio is not None,
            fps=self._fps,
            size=self._size,
            items=self._items,
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
        # av only creates the file when the header is written; fail here instead.
        with open(self._path, "wb"):
            pass
        options = {
            "flush_packets": "1",
            # The interleaver waits for every stream; if one stalls (a muted or ended track)
            # it would hold the others back for its default 10 s. Cap that at one flush period.
            "max_interleave_delta": str(_FLUSH_S * 1_000_000),
            **self._profile.options,
        }
        container: av.container.OutputContainer = av.open(
            str(self._path), mode="w", format=self._profile.format, container_options=options
        )
        return container

    async def _read(self, kind: _Kind, track: MediaStreamTrack) -> None:
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

    def _enqueue(self, item: _Item) -> None:
        try:
            self._items.put_nowait(item)
        except queue.Full:
            with contextlib.suppress(queue.Empty):
                self._items.get_nowait()
                self._dropped += 1
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
            dropped_frames=self.dropped_frames,
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
