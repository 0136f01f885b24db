"""TrackProbe: analyse a live track without doing CPU work on the event loop.

One owned task reads the track and stamps each frame with ``time.time()`` at ``recv`` (the
arrival clock must be read there, not later in the worker). One owned thread analyses frames
from a bounded queue. Keeping up is decided per frame: when more than ``_BEHIND`` frames wait,
the (costly) PSNR/SSIM of that frame is skipped but its stamp is still read, so drops,
latency and freezes stay exact; only if the queue (``queue_size``) overflows is the oldest
frame discarded and counted in ``analysis_dropped`` (it then also shows as a drop).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence

import av
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from ._tasks import OwnedTasks
from .analysis_audio import AudioAnalyzer, AudioSummary
from .analysis_video import MAX_RECORDS, FrameRecord, PatternSpec, VideoAnalyzer, VideoSummary
from .errors import MediaError

__all__ = ["TrackProbe"]

_BEHIND = 3  # frames waiting beyond which quality is skipped


class TrackProbe:
    """Reads one track and analyses every frame; results stay readable after ``aclose``.

    For video: ``reference`` enables PSNR/SSIM (``quality_every``, ``ssim_every``: see
    :class:`VideoAnalyzer`; by default SSIM runs on every 4th frame to stay well under a core
    for 16 streams, PSNR on every frame; ``max_records``: per-frame records kept, the latest).
    For audio: ``frequency``, ``beep_every_s`` and ``beep_s`` as in :class:`AudioAnalyzer`;
    ``sync_flashes`` (e.g. ``lambda: video_probe.flashes``) is where ``audio_summary()`` finds
    the sender's flash frames when called without them, for latency and A/V offset.
    Memory stays bounded for a track of any length: for video about 2 MB (the latest records,
    the latency histogram) plus about 130 B per second for the 1-s series and flash records.
    """

    def __init__(
        self,
        track: MediaStreamTrack,
        *,
        reference: PatternSpec | None = None,
        freeze_ms: float = 150.0,
        frequency: float | None = None,
        beep_every_s: float | None = None,
        label: str = "",
        beep_s: float = 0.1,
        quality_every: int = 1,
        ssim_every: int = 4,
        keep_worst: int = 0,
        queue_size: int = 90,
        max_records: int = MAX_RECORDS,
        sync_flashes: Callable[[], Sequence[FrameRecord]] | None = None,
    ) -> None:
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size}")
        self.kind: str = track.kind
        self.label = label
        self._sync_flashes = sync_flashes
        self._track = track
        self._video: VideoAnalyzer | None = None
        self._audio: AudioAnalyzer | None = None
        if track.kind == "video":
            self._video = VideoAnalyzer(
                reference=reference,
                freeze_ms=freeze_ms,
                quality_every=quality_every,
                ssim_every=ssim_every,
                keep_worst=keep_worst,
                max_records=max_records,
            )
        else:
            self._audio = AudioAnalyzer(
                frequency=frequency, beep_every_s=beep_every_s, beep_s=beep_s
            )
        self._queue: deque[tuple[object, float]] = deque()
        self._queue_size = queue_size
        self._cond = threading.Condition()
        self._lock = threading.Lock()  # guards the analyzers (worker adds, loop summarises)
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._tasks = OwnedTasks("track probe reader")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._progress = asyncio.Event()
        self._received = 0
        self._analysed = 0
        self._dropped = 0
        self._ended = False  # the track itself ended (MediaStreamError)
        self._closed_at: float | None = None
        self._started = False
        self._closed = False
        self._error: BaseException | None = None  # what killed the analysis thread

    @property
    def frames_received(self) -> int:
        return self._received

    @property
    def frames_analysed(self) -> int:
        return self._analysed

    @property
    def analysis_dropped(self) -> int:
        return self._dropped

    @property
    def ended(self) -> bool:
        """Whether the track ended (as opposed to the probe being closed)."""
        return self._ended

    def start(self) -> None:
        """Start reading (idempotent); needs a running loop."""
        if self._started or self._closed:
            return
        self._started = True
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(
            target=self._work, name=f"probe-{self.kind}-{self.label}", daemon=True
        )
        self._thread.start()
        self._tasks.start(self._read(), name=f"probe-read-{self.kind}-{self.label}")

    async def __aenter__(self) -> TrackProbe:
        self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def _read(self) -> None:
        try:
            while True:
                frame = await self._track.recv()
                arrival = time.time()
                self._received += 1
                with self._cond:
                    if len(self._queue) >= self._queue_size:
                        self._queue.popleft()
                        self._dropped += 1
                    self._queue.append((frame, arrival))
                    self._cond.notify()
        except MediaStreamError:
            self._ended = True
            self._signal()

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if not self._queue:
                    return
                frame, arrival = self._queue.popleft()
                behind = len(self._queue) > _BEHIND
            try:
                with self._lock:
                    if self._video is not None and isinstance(frame, av.VideoFrame):
                        self._video.add(frame, arrival, quality=not behind)
                    elif self._audio is not None and isinstance(frame, av.AudioFrame):
                        self._audio.add(frame, arrival)
                    self._analysed += 1
            except Exception as exc:  # kept, and raised to whoever waits or asks for results
                self._error = exc
                self._signal()
                return
            self._signal()

    def _raise_error(self) -> None:
        if self._error is not None:
            raise MediaError(
                f"{self.kind} probe {self.label!r}: analysis failed: "
                f"{type(self._error).__name__}: {self._error}"
            ) from self._error

    def _signal(self) -> None:
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
            loop.call_soon_threadsafe(self._progress.set)

    async def wait_frames(self, count: int, *, timeout_s: float = 30.0) -> None:
        """Wait until ``count`` frames have been analysed.

        TimeoutError after ``timeout_s``, or at once if the track ends or the probe closes
        with fewer (the message says how many arrived).
        """
        self.start()
        try:
            async with asyncio.timeout(timeout_s):
                while self._analysed < count:
                    self._raise_error()
                    finished = self._closed or self._ended
                    if finished and self._analysed >= self._received - self._dropped:
                        why = "closed" if self._closed else "ended"
                        raise TimeoutError(
                            f"{self.kind} probe {self.label!r}: {why} after {self._analysed} "
                            f"of {count} frames"
                        )
                    self._progress.clear()
                    await self._progress.wait()
        except TimeoutError as exc:
            if exc.args:
                raise
            raise TimeoutError(
                f"{self.kind} probe {self.label!r}: {self._analysed} of {count} frames "
                f"after {timeout_s:g} s"
            ) from None

    async def aclose(self) -> None:
        """Stop reading, finish analysing what was queued, keep results (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._closed_at = time.time()
        await self._tasks.aclose()
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)
        self._progress.set()

    def video_summary(self) -> VideoSummary:
        """Video results so far; a freeze still going on (live track) is counted."""
        if self._video is None:
            raise ValueError(f"{self.kind} probe {self.label!r} has no video summary")
        self._raise_error()
        end = None if self._ended else (self._closed_at or time.time())
        with self._lock:
            return self._video.summary(end_s=end, analysis_dropped=self._dropped)

    def audio_summary(self, flashes: Sequence[FrameRecord] = ()) -> AudioSummary:
        """Audio results so far; ``flashes``: the video probe's :attr:`flashes` (for latency and
        A/V offset; any records will do, only flash frames are used), by default those of
        ``sync_flashes``."""
        if self._audio is None:
            raise ValueError(f"{self.kind} probe {self.label!r} has no audio summary")
        self._raise_error()
        if not flashes and self._sync_flashes is not None:
            flashes = self._sync_flashes()  # outside our lock: it takes the video probe's
        with self._lock:
            return self._audio.summary(flashes=flashes, analysis_dropped=self._dropped)

    @property
    def records(self) -> list[FrameRecord]:
        """A copy of the latest ``max_records`` per-frame video records (empty for audio)."""
        if self._video is None:
            return []
        with self._lock:
            return self._video.records

    @property
    def flashes(self) -> list[FrameRecord]:
        """The flash frames of the whole track (first arrival each): what
        :meth:`audio_summary` of the same sender's audio probe pairs beeps with."""
        if self._video is None:
            return []
        with self._lock:
            return self._video.flashes

    def worst_frames(self) -> list[tuple[FrameRecord, av.VideoFrame]]:
        """The ``keep_worst`` lowest-PSNR frames, worst first (video with a reference)."""
        if self._video is None:
            return []
        with self._lock:
            return self._video.worst_frames()
