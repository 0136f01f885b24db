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

Memory is bounded for a stream of any length: everything the summary reports is kept as running
aggregates (per-second bins for the series), duplicates are found in a sliding window of
``DEDUP_WINDOW`` frame numbers, latency percentiles come from exact values up to
``EXACT_LATENCIES`` frames and a fine histogram beyond, and only the latest ``MAX_RECORDS``
per-frame records are kept (flash records, one per flash, are kept for the whole run).
"""

from __future__ import annotations

import heapq
import itertools
import math
from array import array
from collections import deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import av
import cv2
import numpy as np
import numpy.typing as npt

from .sources import PatternVideoTrack
from .timecode import BAND, read_stamp

__all__ = [
    "DEDUP_WINDOW",
    "EXACT_LATENCIES",
    "MAX_RECORDS",
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

MAX_RECORDS = 5400
"""Per-frame records kept by default (the latest: 3 min at 30 fps, about 1.8 MB)."""
DEDUP_WINDOW = 1 << 16
"""Frame numbers below the highest seen that duplicate detection covers (36 min at 30 fps)."""
EXACT_LATENCIES = 1 << 15
"""Latencies kept exactly for the percentiles; beyond, a histogram with 0.1 % bins."""
_MAX_FREEZES = 10_000  # freeze_list keeps the latest; count, longest and total stay exact
_MAX_SECONDS = 7 * 86400  # 1-s series bins (64 B each): a week; later frames count, unbinned
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
        return PatternVideoTrack(**asdict(self))  # the fields are its keyword arguments

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
    """(s since the first frame when the freeze began, length ms): the latest 10 000."""
    flashes: int = 0
    analysis_dropped: int = 0
    """Frames the probe discarded because analysis fell behind (they also show as drops)."""
    quality_skipped: int = 0
    """Stamped frames whose PSNR/SSIM was skipped to keep up (probe only)."""
    span_s: float = 0.0
    latency_series: list[tuple[float, float, float, float]] = field(default_factory=list)
    """(window start, s since the first frame; mean, min, max latency ms) per 1-s window with
    a measured latency: the whole run, however long (the plots of a long run use it)."""
    psnr_series: list[tuple[float, float, float]] = field(default_factory=list)
    """(window start; mean, min PSNR dB) per 1-s window with a measured PSNR."""

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("freeze_list", "fps_series", "resolutions", "latency_series", "psnr_series"):
            out[key] = [list(item) for item in getattr(self, key)]
        return out


_HIST_STEP = 0.001  # histogram bin width in sign(v) * log1p(|v|): 0.1 % of (|v| + 1)
_HIST_HALF = math.ceil(math.log1p(1e7) / _HIST_STEP)  # bins per sign, up to 10^7 (ms: 2.8 h)
_HIST_CHUNK = 1024  # values buffered before they go into the histogram


class _Quantiles:
    """min / median / p95 / max of a stream of values in bounded memory.

    Exact (numpy's linear interpolation) for up to ``exact`` values. Beyond, the values go into
    a histogram on a log scale whose bins are 0.1 % of (|v| + 1) wide (260 KB), so the median
    and p95 are within 0.05 % of (|v| + 1); min and max stay exact.
    """

    def __init__(self, exact: int) -> None:
        self._exact = exact
        self._pending = array("d")
        self._hist: npt.NDArray[np.int64] | None = None
        self._count = 0
        self._min = math.inf
        self._max = -math.inf

    def add(self, value: float) -> None:
        self._pending.append(value)
        self._count += 1
        if value < self._min:
            self._min = value
        if value > self._max:
            self._max = value
        if len(self._pending) > (self._exact if self._hist is None else _HIST_CHUNK):
            self._flush()

    def _flush(self) -> None:
        if self._hist is None:
            self._hist = np.zeros(2 * _HIST_HALF, dtype=np.int64)
        values = np.array(self._pending, dtype=np.float64)
        self._pending = array("d")
        u = np.sign(values) * np.log1p(np.abs(values))
        bins = np.clip(np.floor(u / _HIST_STEP), -_HIST_HALF, _HIST_HALF - 1).astype(np.int64)
        np.add.at(self._hist, bins + _HIST_HALF, 1)

    def stats(self) -> dict[str, float] | None:
        if self._count == 0:
            return None
        if self._hist is None:
            arr = np.array(self._pending, dtype=np.float64)
            return {
                "min": float(arr.min()),
                "median": float(np.median(arr)),
                "p95": float(np.percentile(arr, 95)),
                "max": float(arr.max()),
            }
        if self._pending:
            self._flush()
        cum = np.cumsum(self._hist)
        return {
            "min": self._min,
            "median": self._percentile(cum, 50),
            "p95": self._percentile(cum, 95),
            "max": self._max,
        }

    def _percentile(self, cum: npt.NDArray[np.int64], q: float) -> float:
        """numpy's linear interpolation between ranks, each rank's value its bin's centre."""

        def at(rank: int) -> float:
            if rank <= 0:
                return self._min
            if rank >= self._count - 1:
                return self._max
            u = (int(np.searchsorted(cum, rank, side="right")) - _HIST_HALF + 0.5) * _HIST_STEP
            return min(self._max, max(self._min, math.copysign(math.expm1(abs(u)), u)))

        h = (self._count - 1) * q / 100.0
        lo = math.floor(h)
        low = at(lo)
        return low + (h - lo) * (at(lo + 1) - low) if h > lo else low


class _MeanMin:
    """Running mean (compensated sum) and minimum."""

    __slots__ = ("_comp", "_count", "_min", "_total")

    def __init__(self) -> None:
        self._count = 0
        self._total = 0.0
        self._comp = 0.0
        self._min = math.inf

    def add(self, value: float) -> None:
        total = self._total + value
        if abs(self._total) >= abs(value):
            self._comp += (self._total - total) + value
        else:
            self._comp += (value - total) + self._total
        self._total = total
        self._count += 1
        if value < self._min:
            self._min = value

    def stats(self) -> dict[str, float] | None:
        if self._count == 0:
            return None
        return {"mean": (self._total + self._comp) / self._count, "min": self._min}


class _FrameNumbers:
    """Duplicates, reordering and drops from frame numbers, in a sliding window.

    A ring of ``window`` flags marks which numbers in ``(highest - window, highest]`` were
    seen, so every count is exact as long as no frame arrives ``window`` or more numbers
    behind the highest seen (one that does is counted as a duplicate; a number below the
    lowest seen is always new). Drops are ``highest - lowest + 1 - distinct``.
    """

    def __init__(self, window: int) -> None:
        self._window = window
        self._ring = bytearray(window)
        self.lowest: int | None = None
        self.highest: int | None = None
        self.distinct = 0

    def add(self, number: int) -> tuple[bool, bool]:
        """(duplicate, reordered) of a frame number, which is then marked seen."""
        w = self._window
        if self.highest is None or self.lowest is None:
            self.lowest = self.highest = number
        elif number > self.highest:
            self._advance(number)
        elif number < self.lowest:
            self.lowest = number
            if self.highest - number >= w:  # new, but too old for the window to hold
                self.distinct += 1
                return False, True
        elif self.highest - number >= w or self._ring[number % w]:
            return True, False
        else:
            self._ring[number % w] = 1
            self.distinct += 1
            return False, True
        self._ring[number % w] = 1
        self.distinct += 1
        return False, number < self.highest

    def _advance(self, number: int) -> None:
        """Forget the numbers that fall out of the window as ``number`` becomes the highest."""
        assert self.highest is not None
        w, step = self._window, number - self.highest
        if step >= w:
            self._ring[:] = bytes(w)
        elif step == 1:
            self._ring[number % w] = 0
        else:
            start = (self.highest + 1) % w
            end = start + step
            self._ring[start : min(end, w)] = bytes(min(end, w) - start)
            if end > w:
                self._ring[: end - w] = bytes(end - w)
        self.highest = number

    @property
    def drops(self) -> int:
        if self.highest is None or self.lowest is None:
            return 0
        return self.highest - self.lowest + 1 - self.distinct


class _Seconds:
    """Per-second aggregates since the first frame: fps, latency and PSNR series (64 B/s)."""

    def __init__(self) -> None:
        self.new = array("d")
        self.lat_n, self.lat_sum = array("d"), array("d")
        self.lat_min, self.lat_max = array("d"), array("d")
        self.psnr_n, self.psnr_sum, self.psnr_min = array("d"), array("d"), array("d")
        self._columns = (
            self.new, self.lat_n, self.lat_sum, self.lat_min, self.lat_max,
            self.psnr_n, self.psnr_sum, self.psnr_min,
        )  # fmt: skip

    def _at(self, since: float) -> int:
        """The bin of ``since`` s after the first frame (grown as needed), -1 for none: before
        it, or more than ``_MAX_SECONDS`` after (a clock jump must not allocate gigabytes)."""
        index = int(since)  # truncates: (-1, 0) is in the first bin
        if not 0 <= index < _MAX_SECONDS:
            return -1
        missing = index + 1 - len(self.new)
        if missing > 0:
            zeros = bytes(8 * missing)
            for column in self._columns:
                column.frombytes(zeros)
        return index

    def add(self, since: float, *, new: bool, latency: float | None, psnr: float | None) -> None:
        """One frame ``since`` s after the first: a new one, its latency and PSNR if measured."""
        i = self._at(since)
        if i < 0:
            return
        if new:
            self.new[i] += 1
        if latency is not None:
            n = self.lat_n[i]
            if n == 0 or latency < self.lat_min[i]:
                self.lat_min[i] = latency
            if n == 0 or latency > self.lat_max[i]:
                self.lat_max[i] = latency
            self.lat_n[i] = n + 1
            self.lat_sum[i] += latency
        if psnr is not None:
            n = self.psnr_n[i]
            if n == 0 or psnr < self.psnr_min[i]:
                self.psnr_min[i] = psnr
            self.psnr_n[i] = n + 1
            self.psnr_sum[i] += psnr


class _FlashLog:
    """The first arrival of every flash frame of a run, in columns (~60 B per flash)."""

    def __init__(self) -> None:
        self._arrival, self._psnr, self._ssim = array("d"), array("d"), array("d")
        self._number, self._capture = array("q"), array("q")
        self._size, self._reordered = array("l"), array("b")

    def __len__(self) -> int:
        return len(self._arrival)

    def add(self, r: FrameRecord) -> None:
        assert r.frame_number is not None and r.capture_ms is not None
        self._arrival.append(r.arrival_s)
        self._number.append(r.frame_number)
        self._capture.append(r.capture_ms)
        self._size.extend((r.width, r.height))
        self._reordered.append(r.reordered)
        self._psnr.append(math.nan if r.psnr_db is None else r.psnr_db)
        self._ssim.append(math.nan if r.ssim is None else r.ssim)

    def __iter__(self) -> Iterator[FrameRecord]:
        for i, arrival in enumerate(self._arrival):
            capture, psnr, ssim = self._capture[i], self._psnr[i], self._ssim[i]
            yield FrameRecord(
                arrival,
                self._number[i],
                capture,
                arrival * 1000.0 - capture,
                self._size[2 * i],
                self._size[2 * i + 1],
                False,
                bool(self._reordered[i]),
                None if math.isnan(psnr) else psnr,
                None if math.isnan(ssim) else ssim,
                True,
            )


class VideoAnalyzer:
    """Synchronous and thread-confined: feed it frames in arrival order.

    ``quality_every`` computes PSNR (and SSIM) on every Nth stamped frame; ``ssim_every``
    computes SSIM on every Nth of those (SSIM costs ~2 ms at 480p, PSNR ~0.3 ms including the
    reference render). ``keep_worst`` keeps the K received frames with the lowest PSNR.
    ``max_records`` per-frame records are kept (the latest); the summary covers every frame
    whatever it is, in memory that does not grow with the number of frames.
    """

    def __init__(
        self,
        *,
        reference: PatternSpec | None = None,
        freeze_ms: float = 150.0,
        quality_every: int = 1,
        ssim_every: int = 1,
        keep_worst: int = 0,
        max_records: int = MAX_RECORDS,
    ) -> None:
        if freeze_ms <= 0:
            raise ValueError(f"freeze_ms must be positive, got {freeze_ms}")
        if quality_every < 1 or ssim_every < 1:
            raise ValueError("quality_every and ssim_every must be >= 1")
        if max_records < 0:
            raise ValueError(f"max_records must be >= 0, got {max_records}")
        self._reference = reference
        self._renderer = None if reference is None else reference.track()
        self._freeze_s = freeze_ms / 1000.0
        self._quality_every = quality_every
        self._ssim_every = ssim_every
        self._keep_worst = keep_worst
        self._worst: list[tuple[float, int, FrameRecord, av.VideoFrame]] = []
        self._seq = itertools.count()
        self._records: deque[FrameRecord] = deque(maxlen=max_records)
        self._flash_log = _FlashLog()
        self._numbers = _FrameNumbers(DEDUP_WINDOW)
        self._seconds = _Seconds()
        self._latency = _Quantiles(EXACT_LATENCIES)
        self._psnr = _MeanMin()
        self._ssim = _MeanMin()
        self._frames = 0
        self._first_arrival: float | None = None
        self._last_new: float | None = None
        self._new_count = 0
        self._freezes: deque[tuple[float, float]] = deque(maxlen=_MAX_FREEZES)
        self._freeze_count = 0
        self._freeze_max_ms = 0.0
        self._frozen_ms = 0.0
        self._resolutions: list[tuple[float, int, int]] = []
        self._stamped = 0
        self._quality_count = 0
        self._quality_skipped = 0
        self._dups = 0
        self._reordered = 0
        self._flashes = 0

    @property
    def records(self) -> list[FrameRecord]:
        """The latest ``max_records`` per-frame records, oldest first (a copy)."""
        return list(self._records)

    @property
    def flashes(self) -> list[FrameRecord]:
        """The first arrival of every flash frame of the whole run (for A/V pairing)."""
        return list(self._flash_log)

    def add(self, frame: av.VideoFrame, arrival_s: float, *, quality: bool = True) -> FrameRecord:
        """Analyse one frame; ``quality=False`` skips PSNR/SSIM (a probe that is behind)."""
        y = luma_of(frame)
        stamp = read_stamp(y)
        if stamp is None:
            return self._account(arrival_s, frame.width, frame.height)
        flash = is_flash_luma(y)
        psnr, ssim = self._quality(y, stamp.frame_number, stamp.capture_time_ms, flash, quality)
        record = self._account(
            arrival_s, frame.width, frame.height, stamp.frame_number, stamp.capture_time_ms,
            flash=flash, psnr_db=psnr, ssim=ssim,
        )  # fmt: skip
        if psnr is not None and self._keep_worst > 0:
            item = (-psnr, next(self._seq), record, frame)
            if len(self._worst) < self._keep_worst:
                heapq.heappush(self._worst, item)
            else:
                heapq.heappushpop(self._worst, item)
        return record

    def _quality(
        self, y: Luma, number: int, capture_ms: int, flash: bool, quality: bool
    ) -> tuple[float | None, float | None]:
        """PSNR and SSIM against the regenerated source, when due (None when not)."""
        if self._renderer is None or self._reference is None:
            return None, None
        due = self._quality_count % self._quality_every == 0
        self._quality_count += 1
        if not due:
            return None, None
        if not quality:
            self._quality_skipped += 1
            return None, None
        ref = luma_of(_render(self._renderer, self._reference, number, capture_ms, flash))
        if ref.shape != y.shape:
            ref = _resize(ref, (y.shape[1], y.shape[0]))
        psnr = luma_psnr(y, ref)
        ssim = None
        if (self._quality_count - 1) // self._quality_every % self._ssim_every == 0:
            ssim = luma_ssim(y, ref)
        return psnr, ssim

    def _account(
        self,
        arrival_s: float,
        width: int,
        height: int,
        number: int | None = None,
        capture_ms: int | None = None,
        *,
        flash: bool = False,
        psnr_db: float | None = None,
        ssim: float | None = None,
    ) -> FrameRecord:
        """Every count and aggregate of one frame whose stamp (if any) has been read.

        All the bookkeeping of :meth:`add` after decoding; tests feed it stamps directly.
        """
        self._frames += 1
        if self._first_arrival is None:
            self._first_arrival = arrival_s
        since = arrival_s - self._first_arrival
        if not self._resolutions or self._resolutions[-1][1:] != (width, height):
            self._resolutions.append((since, width, height))
        if number is None or capture_ms is None:
            record = FrameRecord(
                arrival_s, None, None, None, width, height, False, False, None, None
            )
            self._new_frame(arrival_s)
            self._seconds.add(since, new=True, latency=None, psnr=None)
            self._records.append(record)
            return record
        self._stamped += 1
        duplicate, reordered = self._numbers.add(number)
        self._dups += duplicate
        self._reordered += reordered
        self._flashes += flash and not duplicate
        latency = arrival_s * 1000.0 - capture_ms
        record = FrameRecord(
            arrival_s, number, capture_ms, latency, width, height, duplicate, reordered,
            psnr_db, ssim, flash,
        )  # fmt: skip
        if not duplicate:
            self._new_frame(arrival_s)
            self._latency.add(latency)
            if flash:
                self._flash_log.add(record)
        if psnr_db is not None:
            self._psnr.add(psnr_db)
        self._seconds.add(
            since, new=not duplicate, latency=None if duplicate else latency, psnr=psnr_db
        )
        if ssim is not None:
            self._ssim.add(ssim)
        self._records.append(record)
        return record

    def _new_frame(self, arrival_s: float) -> None:
        last = self._last_new
        if last is not None and arrival_s - last > self._freeze_s:
            assert self._first_arrival is not None
            self._add_freeze(last - self._first_arrival, arrival_s - last)
        self._last_new = arrival_s
        self._new_count += 1

    def _add_freeze(self, start_s: float, length_s: float) -> None:
        self._freezes.append((start_s, length_s))
        self._freeze_count += 1
        self._freeze_max_ms = max(self._freeze_max_ms, length_s * 1000.0)
        self._frozen_ms += length_s * 1000.0

    def worst_frames(self) -> list[tuple[FrameRecord, av.VideoFrame]]:
        """The ``keep_worst`` frames with the lowest PSNR, worst first."""
        return [(r, f) for _, _, r, f in sorted(self._worst, key=lambda i: (-i[0], i[1]))]

    def summary(self, *, end_s: float | None = None, analysis_dropped: int = 0) -> VideoSummary:
        """Summarise; ``end_s`` (wall clock) counts a freeze still going on at that time.

        Costs time in the number of seconds of stream (the series), not of frames.
        """
        freezes = list(self._freezes)
        count, longest_ms, frozen_ms = self._freeze_count, self._freeze_max_ms, self._frozen_ms
        last, first = self._last_new, self._first_arrival
        ongoing = end_s is not None and last is not None and end_s - last > self._freeze_s
        if ongoing and end_s is not None and last is not None and first is not None:
            freezes.append((last - first, end_s - last))
            count += 1
            longest_ms = max(longest_ms, (end_s - last) * 1000.0)
            frozen_ms += (end_s - last) * 1000.0
        span = 0.0
        if self._new_count > 1 and last is not None and first is not None:
            span = last - first  # the first frame is always a new one
        fps = (self._new_count - 1) / span if span > 0 else 0.0
        bins = self._seconds
        series: list[tuple[float, float]] = []
        if last is not None and first is not None:
            full = math.floor(last - first)
            series = [(float(i), bins.new[i]) for i in range(min(full, len(bins.new)))]
        latency_series = [
            (float(i), bins.lat_sum[i] / n, bins.lat_min[i], bins.lat_max[i])
            for i, n in enumerate(bins.lat_n)
            if n
        ]
        psnr_series = [
            (float(i), bins.psnr_sum[i] / n, bins.psnr_min[i])
            for i, n in enumerate(bins.psnr_n)
            if n
        ]
        return VideoSummary(
            frames=self._frames,
            stamped=self._stamped,
            drops=self._numbers.drops,
            duplicates=self._dups,
            reordered=self._reordered,
            freezes=count,
            max_freeze_ms=longest_ms,
            frozen_ms=frozen_ms,
            fps=fps,
            fps_series=series,
            latency_ms=self._latency.stats(),
            psnr_db=self._psnr.stats(),
            ssim=self._ssim.stats(),
            resolutions=list(self._resolutions),
            freeze_list=[(start, length * 1000.0) for start, length in freezes],
            flashes=self._flashes,
            analysis_dropped=analysis_dropped,
            quality_skipped=self._quality_skipped,
            span_s=span,
            latency_series=latency_series,
            psnr_series=psnr_series,
        )
