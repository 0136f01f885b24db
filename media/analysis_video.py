"""Per-frame video analysis of a stamped test pattern: timing, loss, order, freezes, quality.

Why it can be exact: every frame of :class:`~media.sources.PatternVideoTrack` carries its frame
number and capture wall-clock ms in the luma (:mod:`~media.timecode`), and its picture is a pure
function of those two numbers (plus whether it is a flash frame). So the receiver counts drops,
duplicates and reordering from the numbers, gets latency from the clock, and regenerates the
exact source frame for full-reference PSNR/SSIM without any stored copy of the source.

Definitions (see ``docs/analysis.md``):

* drop: a frame number missing from ``[min seen, max seen]`` at summary time, so a frame that
  arrives late after a later one is *reordered*, never dropped and then un-dropped;
* duplicate: a frame number seen before; reordered: new but lower than the highest seen;
* freeze: more than ``freeze_ms`` between two *new* frames (duplicates do not count as new;
  frames without a readable stamp do, as nothing says they repeat);
* latency: arrival wall clock minus the stamp's capture wall clock (same-host clocks).
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import av
import cv2
import numpy as np
import numpy.typing as npt

from .sources import PatternVideoTrack
from .timecode import BAND, read_stamp

__all__ = [
    "FrameRecord",
    "PatternSpec",
    "VideoAnalyzer",
    "VideoSummary",
    "luma_psnr",
    "luma_ssim",
]

Luma = npt.NDArray[np.uint8]

PSNR_CAP_DB = 99.0
"""PSNR reported for identical pictures (and the ceiling for nearly identical ones)."""

_FLASH_MEAN = 200.0  # flash frames are luma 235 below the band; the pattern averages ~95
_SSIM_C1 = (0.01 * 255) ** 2
_SSIM_C2 = (0.03 * 255) ** 2

_LUMA_FIRST = frozenset(
    {"yuv420p", "yuvj420p", "yuv422p", "yuvj422p", "yuv444p", "yuvj444p", "nv12", "nv21", "gray"}
)


def luma_of(frame: av.VideoFrame) -> Luma:
    """The luma plane as an H x W uint8 view (a copy only for non-planar formats)."""
    if frame.format.name not in _LUMA_FIRST:
        frame = frame.reformat(format="gray")
    plane = frame.planes[0]
    data = np.frombuffer(memoryview(plane), dtype=np.uint8, count=plane.line_size * frame.height)
    return data.reshape(frame.height, plane.line_size)[:, : frame.width]


def _resize(img: Luma, size: tuple[int, int]) -> Luma:
    """INTER_AREA resize to (w, h): the right filter for shrinking, harmless for growing."""
    out: Luma = np.asarray(cv2.resize(img, size, interpolation=cv2.INTER_AREA), dtype=np.uint8)
    return out


def luma_psnr(a: Luma, b: Luma) -> float:
    """PSNR in dB of two equal-size luma planes, capped at :data:`PSNR_CAP_DB`."""
    mse = float(cv2.norm(a, b, cv2.NORM_L2SQR)) / a.size
    if mse <= 0.0:
        return PSNR_CAP_DB
    return min(PSNR_CAP_DB, 10.0 * math.log10(255.0**2 / mse))


def luma_ssim(a: Luma, b: Luma) -> float:
    """Mean SSIM (Wang et al. 2004) of two equal-size luma planes.

    11x11 Gaussian window, sigma 1.5, K1 = 0.01, K2 = 0.03, and the reference implementation's
    (``ssim.m``) automatic downsampling by ``F = max(1, round(min(h, w) / 256))`` with an F x F
    average first: 2x for 480p, which is also what makes it cheap enough to run live.
    """
    f = max(1, round(min(a.shape) / 256))
    if f > 1:
        size = (a.shape[1] // f, a.shape[0] // f)
        a, b = _resize(a, size), _resize(b, size)
    x = a.astype(np.float32)
    y = b.astype(np.float32)

    def blur(img: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        return np.asarray(cv2.GaussianBlur(img, (11, 11), 1.5), dtype=np.float32)

    mx, my = blur(x), blur(y)
    mxy = mx * my
    m2 = mx * mx + my * my
    var_sum = blur(x * x + y * y) - m2  # only sigma_x^2 + sigma_y^2 is needed: one blur less
    cov = blur(x * y) - mxy
    num = (2 * mxy + _SSIM_C1) * (2 * cov + _SSIM_C2)
    den = (m2 + _SSIM_C1) * (var_sum + _SSIM_C2)
    return float(np.mean(num / den))


def is_flash_luma(y: Luma) -> bool:
    """Whether a received picture is a flash frame (white below the stamp band)."""
    top = math.ceil(y.shape[0] * (BAND + 0.03))
    return float(np.mean(y[top::4, ::4])) > _FLASH_MEAN


@dataclass(frozen=True, slots=True, kw_only=True)
class PatternSpec:
    """How the sender's PatternVideoTrack was built: enough to regenerate any of its frames."""

    width: int = 640
    height: int = 480
    fps: float = 30.0
    label: str = ""
    seed: int = 0
    flash_every_s: float | None = None

    @classmethod
    def of(cls, track: PatternVideoTrack) -> PatternSpec:
        """The spec of an existing track (to regenerate its frames at the receiver)."""
        return cls(
            width=track.width,
            height=track.height,
            fps=track.fps,
            label=track.label,
            seed=track.seed,
            flash_every_s=track.flash_every_s,
        )

    def track(self) -> PatternVideoTrack:
        """A fresh (unstarted) track with this spec: the renderer, reusable for many frames."""
        return PatternVideoTrack(
            width=self.width,
            height=self.height,
            fps=self.fps,
            label=self.label,
            seed=self.seed,
            flash_every_s=self.flash_every_s,
        )

    def is_flash(self, frame_number: int) -> bool:
        """Flash by media time ``frame_number / fps``: right for a track without a clock that
        never stalled (with a MediaClock or after a stall, pts slots and frame numbers differ,
        which is why :class:`VideoAnalyzer` looks at the received picture instead)."""
        return self.track().is_flash(frame_number / self.fps)

    def render(
        self, frame_number: int, capture_ms: int, *, flash: bool | None = None
    ) -> av.VideoFrame:
        """The exact source frame (yuv420p, pts unset); ``flash`` None = :meth:`is_flash`.

        Builds a track per call (~1 ms with a label); loops should keep :meth:`track`.
        """
        return _render(self.track(), self, frame_number, capture_ms, flash)


def _render(
    track: PatternVideoTrack,
    spec: PatternSpec,
    frame_number: int,
    capture_ms: int,
    flash: bool | None,
) -> av.VideoFrame:
    if flash is None:
        flash = spec.is_flash(frame_number)
    # Media time 0 is inside a flash window; no media time never flashes. A source without
    # flashes has no white frames to regenerate: a white frame from it is just wrong.
    media_time = 0.0 if flash and spec.flash_every_s is not None else None
    return track.render(frame_number, capture_ms, media_time_s=media_time)


@dataclass(frozen=True, slots=True)
class FrameRecord:
    """One received video frame."""

    arrival_s: float
    """Receiver wall clock (``time.time()``) when it was received."""
    frame_number: int | None
    """From the stamp; None if unreadable."""
    capture_ms: int | None
    latency_ms: float | None
    """Arrival minus capture (same-host clocks)."""
    width: int
    height: int
    duplicate: bool
    reordered: bool
    psnr_db: float | None
    """Luma PSNR vs the regenerated source (None: no reference, unstamped, or skipped)."""
    ssim: float | None
    flash: bool = False
    """A flash frame (white below the band): the video half of the A/V sync mark."""


@dataclass(frozen=True, slots=True)
class VideoSummary:
    """What a stream of received frames amounts to; ``as_dict`` is JSON-ready."""

    frames: int
    stamped: int
    drops: int
    duplicates: int
    reordered: int
    freezes: int
    max_freeze_ms: float
    frozen_ms: float
    fps: float
    """New frames per second over the span from the first to the last frame."""
    fps_series: list[tuple[float, float]]
    """(window start, s since the first frame; new frames in that full 1-s window)."""
    latency_ms: dict[str, float] | None
    psnr_db: dict[str, float] | None
    ssim: dict[str, float] | None
    resolutions: list[tuple[float, int, int]]
    """(s since the first frame, w, h): the first frame's size, then each change."""
    freeze_list: list[tuple[float, float]] = field(default_factory=list)
    """(s since the first frame when the freeze began, length ms)."""
    flashes: int = 0
    analysis_dropped: int = 0
    """Frames the probe discarded because analysis fell behind (they also show as drops)."""
    quality_skipped: int = 0
    """Stamped frames whose PSNR/SSIM was skipped to keep up (probe only)."""
    span_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["freeze_list"] = [list(f) for f in self.freeze_list]
        out["fps_series"] = [list(p) for p in self.fps_series]
        out["resolutions"] = [list(r) for r in self.resolutions]
        return out


def _stats(values: Sequence[float], *, full: bool) -> dict[str, float] | None:
    if not values:
        return None
    arr = np.asarray(values, dtype=np.float64)
    if not full:
        return {"mean": float(arr.mean()), "min": float(arr.min())}
    return {
        "min": float(arr.min()),
        "median": float(np.median(arr)),
        "p95": float(np.percentile(arr, 95)),
        "max": float(arr.max()),
    }


class VideoAnalyzer:
    """Synchronous and thread-confined: feed it frames in arrival order.

    ``quality_every`` computes PSNR (and SSIM) on every Nth stamped frame; ``ssim_every``
    computes SSIM on every Nth of those (SSIM costs ~2 ms at 480p, PSNR ~0.3 ms including the
    reference render). ``keep_worst`` keeps the K received frames with the lowest PSNR.
    """

    def __init__(
        self,
        *,
        reference: PatternSpec | None = None,
        freeze_ms: float = 150.0,
        quality_every: int = 1,
        ssim_every: int = 1,
        keep_worst: int = 0,
    ) -> None:
        if freeze_ms <= 0:
            raise ValueError(f"freeze_ms must be positive, got {freeze_ms}")
        if quality_every < 1 or ssim_every < 1:
            raise ValueError("quality_every and ssim_every must be >= 1")
        self._reference = reference
        self._renderer = None if reference is None else reference.track()
        self._freeze_s = freeze_ms / 1000.0
        self._quality_every = quality_every
        self._ssim_every = ssim_every
        self._keep_worst = keep_worst
        self._worst: list[tuple[float, int, FrameRecord, av.VideoFrame]] = []
        self._seq = itertools.count()
        self._records: list[FrameRecord] = []
        self._seen: set[int] = set()
        self._max_seen: int | None = None
        self._first_arrival: float | None = None
        self._last_new: float | None = None
        self._new_arrivals: list[float] = []
        self._freezes: list[tuple[float, float]] = []
        self._resolutions: list[tuple[float, int, int]] = []
        self._stamped = 0
        self._quality_count = 0
        self._quality_skipped = 0
        self._dups = 0
        self._reordered = 0
        self._flashes = 0

    @property
    def records(self) -> list[FrameRecord]:
        return self._records

    def add(self, frame: av.VideoFrame, arrival_s: float, *, quality: bool = True) -> FrameRecord:
        """Analyse one frame; ``quality=False`` skips PSNR/SSIM (a probe that is behind)."""
        y = luma_of(frame)
        width, height = frame.width, frame.height
        if self._first_arrival is None:
            self._first_arrival = arrival_s
        since = arrival_s - self._first_arrival
        if not self._resolutions or self._resolutions[-1][1:] != (width, height):
            self._resolutions.append((since, width, height))
        stamp = read_stamp(y)
        if stamp is None:
            record = FrameRecord(
                arrival_s, None, None, None, width, height, False, False, None, None
            )
            self._new_frame(arrival_s)
            self._records.append(record)
            return record
        self._stamped += 1
        number = stamp.frame_number
        duplicate = number in self._seen
        reordered = not duplicate and self._max_seen is not None and number < self._max_seen
        self._seen.add(number)
        self._max_seen = number if self._max_seen is None else max(self._max_seen, number)
        self._dups += duplicate
        self._reordered += reordered
        flash = is_flash_luma(y)
        self._flashes += flash and not duplicate
        psnr = ssim = None
        if self._renderer is not None and self._reference is not None:
            due = self._quality_count % self._quality_every == 0
            self._quality_count += 1
            if due and not quality:
                self._quality_skipped += 1
            elif due:
                ref = luma_of(
                    _render(self._renderer, self._reference, number, stamp.capture_time_ms, flash)
                )
                if ref.shape != y.shape:
                    ref = _resize(ref, (width, height))
                psnr = luma_psnr(y, ref)
                if (self._quality_count - 1) // self._quality_every % self._ssim_every == 0:
                    ssim = luma_ssim(y, ref)
        record = FrameRecord(
            arrival_s,
            number,
            stamp.capture_time_ms,
            arrival_s * 1000.0 - stamp.capture_time_ms,
            width,
            height,
            duplicate,
            reordered,
            psnr,
            ssim,
            flash,
        )
        if not duplicate:
            self._new_frame(arrival_s)
        if psnr is not None and self._keep_worst > 0:
            item = (-psnr, next(self._seq), record, frame)
            if len(self._worst) < self._keep_worst:
                heapq.heappush(self._worst, item)
            else:
                heapq.heappushpop(self._worst, item)
        self._records.append(record)
        return record

    def _new_frame(self, arrival_s: float) -> None:
        if self._last_new is not None and arrival_s - self._last_new > self._freeze_s:
            assert self._first_arrival is not None
            self._freezes.append((self._last_new - self._first_arrival, arrival_s - self._last_new))
        self._last_new = arrival_s
        self._new_arrivals.append(arrival_s)

    def worst_frames(self) -> list[tuple[FrameRecord, av.VideoFrame]]:
        """The ``keep_worst`` frames with the lowest PSNR, worst first."""
        return [(r, f) for _, _, r, f in sorted(self._worst, key=lambda i: (-i[0], i[1]))]

    def summary(self, *, end_s: float | None = None, analysis_dropped: int = 0) -> VideoSummary:
        """Summarise; ``end_s`` (wall clock) counts a freeze still going on at that time."""
        freezes = list(self._freezes)
        last, first = self._last_new, self._first_arrival
        ongoing = end_s is not None and last is not None and end_s - last > self._freeze_s
        if ongoing and end_s is not None and last is not None and first is not None:
            freezes.append((last - first, end_s - last))
        lengths_ms = [length * 1000.0 for _, length in freezes]
        new = self._new_arrivals
        span = new[-1] - new[0] if len(new) > 1 else 0.0
        fps = (len(new) - 1) / span if span > 0 else 0.0
        series: list[tuple[float, float]] = []
        if new and self._first_arrival is not None:
            offsets = np.asarray(new) - self._first_arrival
            full = math.floor(offsets[-1])
            counts = np.bincount(offsets.astype(np.int64), minlength=full + 1)
            series = [(float(i), float(counts[i])) for i in range(full)]
        drops = 0
        if self._seen:
            drops = max(self._seen) - min(self._seen) + 1 - len(self._seen)
        latencies = [
            r.latency_ms for r in self._records if r.latency_ms is not None and not r.duplicate
        ]
        psnrs = [r.psnr_db for r in self._records if r.psnr_db is not None]
        ssims = [r.ssim for r in self._records if r.ssim is not None]
        return VideoSummary(
            frames=len(self._records),
            stamped=self._stamped,
            drops=drops,
            duplicates=self._dups,
            reordered=self._reordered,
            freezes=len(freezes),
            max_freeze_ms=max(lengths_ms, default=0.0),
            frozen_ms=sum(lengths_ms),
            fps=fps,
            fps_series=series,
            latency_ms=_stats(latencies, full=True),
            psnr_db=_stats(psnrs, full=False),
            ssim=_stats(ssims, full=False),
            resolutions=list(self._resolutions),
            freeze_list=[(start, length * 1000.0) for start, length in freezes],
            flashes=self._flashes,
            analysis_dropped=analysis_dropped,
            quality_skipped=self._quality_skipped,
            span_s=span,
        )
