"""The recorder's writer thread: turns queued live frames into a crash-safe file.

Everything in :class:`Writer` except ``__init__`` runs in the one thread the recorder owns, so
encoders, scaler and container are only ever touched from there.

Where a frame lands in the file (its "recording time") comes from its own pts, by one of two
anchorings (see :class:`_TrackClock`):

* arrival (no clock): each track is pinned to the arrival time of its first frame, then
  follows its own pts. Needed when tracks' timestamps are unrelated (remote WebRTC tracks).
* shared clock: every track's pts are seconds since one :class:`~media.clock.MediaClock`
  epoch, so recording time is simply pts minus the recording's origin, the same for all
  tracks; a track that arrives late or jittery is not shifted.

Both keep the safeguards: a track whose pts step back or stray from arrival by more than
``_RESYNC_S`` is re-anchored to its arrival, video pts are strictly increasing, audio is
contiguous (gaps filled with silence, overlaps trimmed).

A file may belong to a longer timeline (a participant's own file next to the room recording):
given ``timeline``, the header carries where the file's 0 s lies on it, in seconds, as the
``CALLBOT_OFFSET`` tag, which ``callbot composite`` honours.

The thread is not a daemon: process exit waits for a writer that is finalising. A writer
whose owner never closed it finalises by itself once the main thread has ended (so a file is
never left unfinished by a forgotten ``aclose()``, and exit never hangs on it).
"""

from __future__ import annotations

import contextlib
import fractions
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import av
import numpy as np
from av.video.frame import PictureType
from av.video.reformatter import VideoReformatter

from . import _yuv
from .clock import MediaClock
from .layout import Rect, fit

logger = logging.getLogger(__name__)

_VIDEO_TB = fractions.Fraction(1, 90000)
_MIN_VIDEO_STEP = 90  # 1 ms in 1/90000: keeps pts strictly increasing after rescale to 1/1000
_AUDIO_RATE = 48000
_AUDIO_TB = fractions.Fraction(1, _AUDIO_RATE)
_HEADER_TIMEOUT_S = 2.0  # how long to wait for every track's first frame before writing headers
_FALLBACK_SIZE = (640, 480)
_RESYNC_S = 2.0  # a track whose pts disagree with arrival time by more is re-anchored
_AUDIO_SLACK_S = 0.01  # audio gaps (overlaps) longer than this are filled (trimmed)
FLUSH_S = 1  # cluster / fragment length, the amount of media a crash may lose
_KEY_EVERY = round(FLUSH_S / _VIDEO_TB)  # longest stretch of video pts without a keyframe
OFFSET_TAG = "CALLBOT_OFFSET"  # where the file's 0 s lies on its timeline, in seconds
_RATE_WINDOW_S = 1.0  # video of unknown rate: how much to look at before declaring one
_FALLBACK_FPS = 30.0  # ... and what to declare when too few frames came to tell
_IDLE_CHECK_S = 0.5  # how often an idle writer checks whether the process is exiting

Kind = Literal["video", "audio"]
Item = tuple[Kind, av.VideoFrame | av.AudioFrame | None, float]


@dataclass(frozen=True, slots=True)
class Profile:
    """Container format, codecs and muxer options chosen by the file extension."""

    format: str
    video_codec: str
    audio_codec: str
    options: dict[str, str] = field(default_factory=dict)


def configure_video(
    cc: av.video.codeccontext.VideoCodecContext, width: int, height: int, fps: float
) -> None:
    """Live-recording encoder settings: fast, no lookahead, a keyframe every ``FLUSH_S``."""
    cc.width, cc.height = width, height
    cc.pix_fmt = "yuv420p"
    cc.time_base = _VIDEO_TB
    cc.gop_size = max(1, round(fps * FLUSH_S))
    # One encoder thread: the writer is the one owned thread per recording, and codec thread
    # pools spin badly on a contended CPU (libvpx measured ~70x slower per frame with automatic
    # threads under load, dropping most frames).
    cc.thread_count = 1
    if cc.name == "libx264":
        cc.options = {"preset": "ultrafast", "tune": "zerolatency"}
    else:
        cc.bit_rate = max(500_000, int(0.1 * width * height * fps))
        cc.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"}


def open_container(path: Path, profile: Profile) -> av.container.OutputContainer:
    """Open ``path`` for writing with the crash-safe muxer options (blocking: run in a thread)."""
    # av only creates the file when the header is written; fail here instead.
    with open(path, "wb"):
        pass
    options = {
        "flush_packets": "1",
        # The interleaver waits for every stream; if one stalls (a muted or ended track, or
        # video behind on a starved machine) it would hold the others back for its default
        # 10 s, all lost in a crash. Cap that at half a flush period.
        "max_interleave_delta": str(FLUSH_S * 500_000),
        **profile.options,
    }
    container: av.container.OutputContainer = av.open(
        str(path), mode="w", format=profile.format, container_options=options
    )
    return container


class _TrackClock:
    """Maps one track's frame timestamps onto the recording timeline (seconds).

    ``arrival`` is the recording time the frame reached the recorder. With ``origin`` set
    (shared-clock mode: the media time that is recording time 0) the first anchor is the
    origin itself, so the track's frames land at ``pts - origin`` however late they arrive.
    """

    def __init__(self) -> None:
        self.origin: float | None = None
        self._anchor: tuple[float, float] | None = None  # (recording time, frame time)
        self._last_media: float | None = None
        self._last_time: float | None = None  # where the previous frame landed
        self._last_step = 0.0  # the gap before it: the track's frame interval, roughly

    def anchor(self, time_s: float, media: float) -> None:
        """Place the frame with pts ``media`` at ``time_s`` (and the others from there)."""
        self._anchor = (time_s, media)

    def time_of(self, frame: av.VideoFrame | av.AudioFrame, arrival: float) -> float:
        if frame.pts is None or frame.time_base is None:
            return arrival
        media = float(frame.pts * frame.time_base)
        went_back = self._last_media is not None and media < self._last_media
        self._last_media = media
        if self._anchor is None and self.origin is not None:
            self._anchor = (0.0, self.origin)
        if (
            self._anchor is None
            or went_back  # one track's time never runs backwards: any step back is a reset
            or abs(self._anchor[0] + media - self._anchor[1] - arrival) > _RESYNC_S
        ):
            # First frame, or a timestamp jump (source loop, RTP reset): start again from the
            # arrival time, but never before the frame that came before (that would squash the
            # following frames together).
            start = arrival
            if self._last_time is not None:
                start = max(arrival, self._last_time + self._last_step)
            self._anchor = (start, media)
        time_s = self._anchor[0] + media - self._anchor[1]
        if self._last_time is not None and time_s > self._last_time:
            self._last_step = time_s - self._last_time
        self._last_time = time_s
        return time_s


class Writer:
    """Everything here runs in the writer thread, except ``__init__``."""

    def __init__(
        self,
        container: av.container.OutputContainer,
        profile: Profile,
        *,
        want_video: bool,
        want_audio: bool,
        fps: float | None,
        size: tuple[int, int] | None,
        items: queue.Queue[Item | None],
        clock: MediaClock | None = None,
        timeline: Callable[[], float | None] | None = None,
    ) -> None:
        self.container = container
        self.profile = profile
        self.want_video = want_video
        self.want_audio = want_audio
        # None: the video's rate is unknown (a remote track); declared from its first second.
        self.fps: float | None = fps
        self.size = size
        self.items = items
        self.clock = clock
        self.timeline = timeline
        self.error: BaseException | None = None
        self.video_frames = 0
        self.audio_frames = 0
        self.dropped_video = 0  # lost or refused here (the queue's drops are the recorder's)
        self.dropped_audio = 0
        self._vstream: av.video.stream.VideoStream | None = None
        self._astream: av.audio.stream.AudioStream | None = None
        self._resampler: av.AudioResampler | None = None
        self._reformatter = VideoReformatter()  # reused: building a scaler costs ~1 ms
        self._t0: float | None = None
        self._clocks = {"video": _TrackClock(), "audio": _TrackClock()}
        self._last_vpts: int | None = None
        self._last_key: int | None = None  # pts of the last keyframe encoded
        self._audio_written = 0  # samples at 48 kHz handed to the encoder
        self._audio_end = 0.0  # recording time where the audio handed to the resampler ends
        self._pending: list[Item] = []
        self._seen: set[Kind] = set()
        self._started_at = time.monotonic()
        self._headers = False

    # -- thread body -------------------------------------------------------------------------

    @property
    def origin(self) -> float | None:
        """The ``time.monotonic()`` instant that is 0 s in the file, once known."""
        return self._t0 if self._headers else None

    @property
    def video_time_s(self) -> float:
        """Where the last video frame written lies in the file (0 before the first)."""
        return 0.0 if self._last_vpts is None else float(self._last_vpts * _VIDEO_TB)

    def run(self) -> None:
        while True:
            try:
                item = self.items.get(timeout=_IDLE_CHECK_S if self._headers else 0.1)
            except queue.Empty:
                if not threading.main_thread().is_alive():
                    break  # the process is exiting and nobody closed us: finalise the file
                if not self._headers:  # still waiting for first frames: check the deadline
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

    def _handle(self, item: Item) -> None:
        if self._headers:
            self._write(item)
            return
        kind, frame, _ = item
        self._seen.add(kind)
        if frame is not None:
            self._pending.append(item)
            if len(self._pending) > 500:
                self._count_drop(self._pending.pop(0)[0])
        self._maybe_start()

    def _count_drop(self, kind: Kind) -> None:
        if kind == "video":
            self.dropped_video += 1
        else:
            self.dropped_audio += 1

    def _maybe_start(self) -> None:
        waiting = (
            (self.want_video and "video" not in self._seen)
            or (self.want_audio and "audio" not in self._seen)
            or (self.want_video and self.fps is None and self._video_rate(final=False) is None)
            or (self.timeline is not None and self.timeline() is None)
            # On a timeline without a clock: a second of frames to tell when the first was due.
            or (self.timeline is not None and self.clock is None and self._span() < 1.0)
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

    def _span(self) -> float:
        arrivals = [arrival for _, frame, arrival in self._pending if frame is not None]
        return arrivals[-1] - arrivals[0] if arrivals else 0.0

    def _video_rate(self, *, final: bool) -> float | None:
        """The pending video's frame rate once it spans ``_RATE_WINDOW_S`` (or ``final``).

        What the file declares as its nominal rate when the track's own is unknown: a remote
        track runs at whatever the sender manages, not at the canvas rate.
        """
        videos = [(f, a) for _, f, a in self._pending if isinstance(f, av.VideoFrame)]
        stamped = [t for f, _ in videos if (t := _media_time(f)) is not None]
        times = stamped if len(stamped) == len(videos) else [a for _, a in videos]
        span = times[-1] - times[0] if len(times) >= 2 else 0.0
        if span >= _RATE_WINDOW_S or (final and span > 0):
            # The median step: the first frames of a call come slowly (keyframe requests).
            step = float(np.median(np.diff(times)))
            return float(min(120, max(1, round(1 / step)))) if step > 0 else _FALLBACK_FPS
        return _FALLBACK_FPS if final else None

    def _pin_origin(self) -> None:
        """Shared-clock mode: recording time 0 is the earliest pending pts on the clock.

        Only frames whose pts agree with their arrival (within ``_RESYNC_S``) vote, so one
        track with unrelated timestamps cannot throw the file's start far away.
        """
        assert self.clock is not None
        epoch = self.clock.epoch
        on_clock = [
            media
            for _, frame, arrival in self._pending
            if (media := _media_time(frame)) is not None
            and abs(media - (arrival - epoch)) <= _RESYNC_S
        ]
        if on_clock:
            origin = min(on_clock)
        elif self._pending:
            origin = min(arrival for _, _, arrival in self._pending) - epoch
        else:
            origin = self.clock.now()
        self._t0 = epoch + origin
        for track_clock in self._clocks.values():
            track_clock.origin = origin

    def _pin_on_time(self) -> None:
        """Arrival mode, on a timeline: 0 s is when the first frame was due, not when it came.

        The first frames of a call often come late (decoder start, a starved machine) and
        the next ones catch up. Anchored to the first arrival, the whole file would sit that
        much too late on the timeline (up to ``_RESYNC_S``). Each track's first frame is
        placed instead where the promptest pending frame says it was due: its arrival minus
        how far its pts are past the first frame's.
        """
        due: dict[Kind, tuple[float, float]] = {}  # kind -> (due time, pts) of its first frame
        for kind in ("video", "audio"):
            timed = [
                (arrival, media)
                for k, frame, arrival in self._pending
                if k == kind and (media := _media_time(frame)) is not None
            ]
            if timed:
                first = timed[0][1]
                due[kind] = (min(a - max(0.0, m - first) for a, m in timed), first)
        arrivals = [arrival for _, _, arrival in self._pending]
        if not due:
            self._t0 = min(arrivals) if arrivals else time.monotonic()
            return
        self._t0 = min(at for at, _ in due.values())
        for kind, (at, first) in due.items():
            self._clocks[kind].anchor(at - self._t0, first)

    def _open_streams(self) -> None:
        self._headers = True
        if self.clock is not None:
            self._pin_origin()
        elif self.timeline is not None:
            # Pinned now, not at the first write: the offset tag must hold for the whole file.
            self._pin_on_time()
        if self.timeline is not None and self._t0 is not None:
            zero = self.timeline()
            if zero is not None:
                self.container.metadata[OFFSET_TAG] = f"{self._t0 - zero:.3f}"
        fps = self.fps
        if fps is None:
            fps = self._video_rate(final=True) if self.want_video else None
            self.fps = fps = fps or _FALLBACK_FPS
        if self.want_video:
            first = self._first_video()
            if self.size is not None:
                width, height = self.size
            elif first is not None:
                width, height = first.width & ~1, first.height & ~1
            else:
                width, height = _FALLBACK_SIZE
            rate = fractions.Fraction(fps).limit_denominator(1001)
            vs = self.container.add_stream(self.profile.video_codec, rate=rate)
            assert isinstance(vs, av.video.stream.VideoStream)
            configure_video(vs.codec_context, width, height, fps)
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

    def _write(self, item: Item) -> None:
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
        if at < 0:  # shared clock: made before the recording's start, by a late-joining track
            self.dropped_video += 1
            return
        out = self._fit(frame, stream.codec_context.width, stream.codec_context.height)
        pts = max(0, round(at / _VIDEO_TB))
        if self._last_vpts is not None and pts < self._last_vpts + _MIN_VIDEO_STEP:
            pts = self._last_vpts + _MIN_VIDEO_STEP
        self._last_vpts = pts
        out.pts = pts
        out.time_base = _VIDEO_TB
        if self._last_key is None or pts - self._last_key >= _KEY_EVERY:
            # A keyframe every FLUSH_S of media, not only every gop_size frames: a slow source
            # (or a starved compositor) would otherwise stretch MP4 fragments, and with them
            # what a crash loses, to many seconds.
            out.pict_type = PictureType.I
        packets = stream.encode(out)
        for packet in packets:
            if packet.is_keyframe and packet.pts is not None:
                self._last_key = packet.pts
        self.container.mux(packets)
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
        gap = at - self._audio_end
        if gap > _AUDIO_SLACK_S:
            self._submit_audio(_silence_like(frame, gap))
        elif gap < -_AUDIO_SLACK_S:  # overlaps what was written: keep only the new part
            skip = round(-gap * frame.sample_rate)
            if skip >= frame.samples:
                self.dropped_audio += 1
                return
            frame = _trim_front(frame, skip)
        self._submit_audio(frame)
        self.audio_frames += 1

    def _submit_audio(self, frame: av.AudioFrame) -> None:
        self._audio_end += frame.samples / frame.sample_rate
        self._encode_audio(self._resample(frame))

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
            video = float(self._last_vpts * _VIDEO_TB) + 1 / (self.fps or _FALLBACK_FPS)
        return max(video, self._audio_written / _AUDIO_RATE)


def _media_time(frame: av.VideoFrame | av.AudioFrame | None) -> float | None:
    if frame is None or frame.pts is None or frame.time_base is None:
        return None
    return float(frame.pts * frame.time_base)


def _trim_front(frame: av.AudioFrame, skip: int) -> av.AudioFrame:
    """A copy of ``frame`` without its first ``skip`` samples."""
    data: Any = frame.to_ndarray()  # dtype follows the frame's format, which from_ndarray takes
    if not frame.format.is_planar:
        skip *= frame.layout.nb_channels  # packed: one row, channels interleaved
    out = av.AudioFrame.from_ndarray(
        np.ascontiguousarray(data[:, skip:]), format=frame.format.name, layout=frame.layout.name
    )
    out.sample_rate = frame.sample_rate
    return out


def _silence_like(frame: av.AudioFrame, seconds: float) -> av.AudioFrame:
    samples = max(1, int(seconds * frame.sample_rate))
    silent = av.AudioFrame(format=frame.format.name, layout=frame.layout.name, samples=samples)
    for plane in silent.planes:
        plane.update(bytes(plane.buffer_size))
    silent.sample_rate = frame.sample_rate
    return silent
