"""Audio analysis of a received test tone: presence, level, silences, glitches, beep timing.

Works on a *stream sample index*: received samples in order, with any gap in the frames' pts
filled with zeros, so a lost packet is a silence in the right place whatever the arrival
jitter. Every quantity is computed streaming (bounded memory for any call length), with
``_CONTEXT`` of look-ahead, so windowed decisions are the same whatever the frame size.

* loud sample: ``|x|`` above ``silence_dbfs`` (peak; default -40 dBFS);
* silence: more than ``min_silence_s`` (50 ms) between two loud samples, where tone was expected:
  anywhere for a continuous tone; for beeps, the part inside the expected beep windows (their
  phase is fitted to the detected onsets);
* glitch: a discontinuity in the tone, i.e. the residual of the sinusoid recurrence
  ``x[n] - 2 cos(w) x[n-1] + x[n-2]`` above ``glitch_threshold`` times the local amplitude,
  away from the tone's own on/off edges; residual samples within 20 ms are one glitch;
* beep onset: first loud sample after at least half a beep period of quiet (or, after codec
  pre-echo, the first reaching half the beep's amplitude), kept if within 2 ms of the beep
  phase fitted to all onsets (else it is a cut beep resuming); its wall clock is the arrival
  of its frame plus its offset in the frame.
"""

from __future__ import annotations

import copy
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import av
import cv2
import numpy as np
import numpy.typing as npt

from .analysis_video import FrameRecord

__all__ = ["AudioAnalyzer", "AudioSummary"]

Samples = npt.NDArray[np.float32]

_CONTEXT_S = 0.012  # look-around for envelopes, edge guards and onset refinement
_ONSET_REFINE_S = 0.005
_GLITCH_MERGE_S = 0.02
_EDGE_GUARD_S = 0.003
_MAX_FILL_S = 10.0  # longest pts gap filled with zeros (beyond: the index just jumps)
_PRESENT_DBFS = -50.0
_FREQ_MIN_RUN_S = 0.05
_ON_TIME_S = 0.002  # an onset this far from the fitted beep phase is a cut beep resuming

_SCALE = {"u8": 128.0, "s16": 32768.0, "s32": 2147483648.0, "flt": 1.0, "dbl": 1.0}


def _to_mono(frame: av.AudioFrame) -> Samples:
    """Mono float32 in [-1, 1] from any sample format and layout."""
    fmt = frame.format.name.rstrip("p")
    data = frame.to_ndarray()
    channels = len(frame.layout.channels)
    if not frame.format.is_planar:
        data = data.reshape(-1, channels).T
    x = data.astype(np.float32)
    if fmt == "u8":
        x -= 128.0
    x /= _SCALE.get(fmt, 1.0)
    mono: Samples = x.mean(axis=0) if channels > 1 else x[0]
    return np.ascontiguousarray(mono, dtype=np.float32)


def _dbfs(value: float) -> float:
    return 20.0 * math.log10(value) if value > 0 else -math.inf


@dataclass(frozen=True, slots=True)
class AudioSummary:
    """What a received tone amounts to; ``as_dict`` is JSON-ready."""

    duration_s: float
    present: bool
    rms_dbfs: float
    silences: list[tuple[float, float]]
    """(start, length) in seconds of stream time since the first received sample."""
    glitches: int
    beeps: list[float]
    """Beep onsets, receiver wall clock."""
    latency_ms: dict[str, float] | None
    av_offset_ms: float | None
    """Median of beep onset minus its flash frame's arrival (+ = audio late)."""
    glitch_at: list[float] = field(default_factory=list)
    """Stream seconds of each glitch."""
    frequency: float | None = None
    """The tone frequency used for glitch detection (given or estimated)."""
    av_pairs: int = 0
    """Beep/flash pairs behind latency_ms and av_offset_ms."""
    analysis_dropped: int = 0

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["silences"] = [list(s) for s in self.silences]
        if math.isinf(self.rms_dbfs):
            out["rms_dbfs"] = None
        return out


@dataclass(slots=True)
class _State:
    """What the streaming scan carries from one block to the next."""

    last_loud: int | None = None
    gaps: list[tuple[int, int]] = field(default_factory=list)  # (start index, length)
    onsets: list[tuple[int, float]] = field(default_factory=list)  # (index, wall clock)
    glitch_idx: list[int] = field(default_factory=list)


class AudioAnalyzer:
    """Synchronous and thread-confined: feed it frames in arrival order.

    ``frequency`` None estimates the tone from the first 50 ms of contiguous tone (glitches
    before that are not checked). ``beep_every_s`` None means a continuous tone.
    """

    def __init__(
        self,
        *,
        frequency: float | None = None,
        beep_every_s: float | None = None,
        beep_s: float = 0.1,
        silence_dbfs: float = -40.0,
        min_silence_s: float = 0.05,
        glitch_threshold: float = 0.25,
    ) -> None:
        if beep_every_s is not None and not 0 < beep_s < beep_every_s:
            raise ValueError(f"need 0 < beep_s < beep_every_s, got {beep_s}, {beep_every_s}")
        self._frequency = frequency
        self._beep_every = beep_every_s
        self._beep_s = beep_s
        self._loud = 10.0 ** (silence_dbfs / 20.0)
        self._min_silence_s = min_silence_s
        self._glitch_threshold = glitch_threshold
        self._rate: int | None = None
        self._next_pts_s: float | None = None
        self._buf: Samples = np.zeros(0, dtype=np.float32)
        self._buf_start = 0  # stream index of _buf[0]
        self._done = 0  # stream index up to which the scan is committed
        self._frames: deque[tuple[int, int, float]] = deque()  # (start, length, arrival)
        self._state = _State()
        self._sum_sq = 0.0
        self._received = 0
        self._max_frame_rms = 0.0
        self._est: list[Samples] = []  # samples kept until the frequency is estimated

    @property
    def _end(self) -> int:
        return self._buf_start + len(self._buf)

    def add(self, frame: av.AudioFrame, arrival_s: float) -> None:
        """Analyse one frame (any format, layout and rate)."""
        x = _to_mono(frame)
        rate = int(frame.sample_rate)
        if self._rate is None:
            self._rate = rate
        elif rate != self._rate:  # rare: resample linearly onto the first frame's rate
            count = round(len(x) * self._rate / rate)
            x = np.interp(np.arange(count) * rate / self._rate, np.arange(len(x)), x).astype(
                np.float32
            )
        if frame.pts is not None and frame.time_base is not None:
            pts_s = float(frame.pts * frame.time_base)
            if self._next_pts_s is not None:
                missing = round((pts_s - self._next_pts_s) * self._rate)
                if missing > round(_MAX_FILL_S * self._rate):  # commit all, jump the index
                    self._scan(self._state, self._end, final=True)
                    self._done = self._buf_start = self._end + missing
                    self._buf = np.zeros(0, dtype=np.float32)
                    self._frames.clear()
                elif missing > 0:
                    self._append(np.zeros(missing, dtype=np.float32))
            self._next_pts_s = pts_s + len(x) / self._rate
        if len(x):
            rms = float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))
            self._max_frame_rms = max(self._max_frame_rms, rms)
            self._sum_sq += float(np.dot(x.astype(np.float64), x))
            self._received += len(x)
        self._frames.append((self._end, len(x), arrival_s))
        self._append(x)
        context = round(_CONTEXT_S * self._rate)
        if self._end - self._done >= 2 * context:
            self._scan(self._state, self._end - context, final=False)
            keep = self._done - context - self._buf_start
            if keep > 0:
                self._buf = self._buf[keep:]
                self._buf_start += keep
            while self._frames and self._frames[0][0] + self._frames[0][1] <= self._buf_start:
                self._frames.popleft()

    def _append(self, x: Samples) -> None:
        self._buf = np.concatenate((self._buf, x)) if len(self._buf) else x

    def _wall(self, index: int) -> float:
        assert self._rate is not None
        for start, length, arrival in reversed(self._frames):
            if start <= index < start + length:
                return arrival + (index - start) / self._rate
        raise AssertionError("onset outside the kept frames")

    def _scan(self, state: _State, hi: int, *, final: bool) -> None:
        """Commit samples [done, hi) into ``state`` (``final``: no look-ahead is coming)."""
        rate = self._rate
        lo = self._done
        if rate is None or hi <= lo:
            return
        context = round(_CONTEXT_S * rate)
        g0 = max(self._buf_start, lo - context)
        g1 = self._end if final else min(self._end, hi + context)
        x = self._buf[g0 - self._buf_start : g1 - self._buf_start]
        mag = np.abs(x)
        loud = np.flatnonzero(mag[lo - g0 : hi - g0] > self._loud) + lo
        self._track_gaps(state, loud, x, g0)
        if self._frequency is None:
            self._estimate_from(x[lo - g0 : hi - g0])
        if self._frequency is not None and len(x) >= 3:
            self._find_glitches(state, x, mag, g0, lo, hi, final=final)
        if not final:
            self._done = hi

    def _track_gaps(self, state: _State, loud: npt.NDArray[np.intp], x: Samples, g0: int) -> None:
        assert self._rate is not None
        if not len(loud):
            return
        prev = np.concatenate(([-1 if state.last_loud is None else state.last_loud], loud[:-1]))
        quiet = loud - prev - 1
        min_gap = self._min_silence_s * self._rate
        for i in np.flatnonzero(quiet > min_gap):
            state.gaps.append((int(prev[i]) + 1, int(quiet[i])))
        if self._beep_every is not None:
            onset_gap = 0.5 * (self._beep_every - self._beep_s) * self._rate
            for i in np.flatnonzero(quiet >= onset_gap):
                state.onsets.append(self._refine_onset(int(loud[i]), x, g0))
        state.last_loud = int(loud[-1])

    def _refine_onset(self, candidate: int, x: Samples, g0: int) -> tuple[int, float]:
        """First sample at half the beep's early amplitude: robust to codec pre-echo."""
        assert self._rate is not None
        window = x[candidate - g0 : candidate - g0 + round(_ONSET_REFINE_S * self._rate)]
        peak = float(np.max(np.abs(window)))
        onset = candidate + int(np.argmax(np.abs(window) >= 0.5 * peak))
        # From any phase a sine reaches half its peak within 1/12 period of starting: a first
        # loud sample that close is the true start; an earlier one is pre-echo.
        if self._frequency is not None and onset - candidate <= self._rate / self._frequency / 4:
            onset = candidate
        return onset, self._wall(onset)

    def _estimate_from(self, block: Samples) -> None:
        """Collect committed samples until a 50-ms run of tone gives the frequency."""
        assert self._rate is not None
        self._est.append(block)
        joined = np.concatenate(self._est)
        if len(joined) < 2 * _FREQ_MIN_RUN_S * self._rate:
            return
        self._frequency = self._estimate_frequency(joined, np.abs(joined))
        self._est = [] if self._frequency is not None else [joined[-self._rate // 2 :]]

    def _estimate_frequency(self, x: Samples, mag: Samples) -> float | None:
        """From interpolated rising zero crossings over a run of tone at least 50 ms long."""
        assert self._rate is not None
        period_max = round(self._rate / 50)  # tones down to 50 Hz
        env = cv2.dilate(mag.reshape(1, -1), np.ones((1, period_max), np.uint8)).ravel()
        tone = np.concatenate(([False], env > self._loud, [False]))
        edges = np.flatnonzero(np.diff(tone.astype(np.int8)))
        for start, stop in zip(edges[::2], edges[1::2], strict=True):
            if stop - start < _FREQ_MIN_RUN_S * self._rate:
                continue
            seg = x[start + period_max : stop - period_max].astype(np.float64)
            rising = np.flatnonzero((seg[:-1] < 0) & (seg[1:] >= 0))
            if len(rising) < 3:
                continue
            t = rising + seg[rising] / (seg[rising] - seg[rising + 1])
            return float((len(t) - 1) / (t[-1] - t[0]) * self._rate)
        return None

    def _find_glitches(
        self, state: _State, x: Samples, mag: Samples, g0: int, lo: int, hi: int, *, final: bool
    ) -> None:
        assert self._rate is not None and self._frequency is not None
        period = max(3, math.ceil(self._rate / self._frequency) + 1)
        env = cv2.dilate(mag.reshape(1, -1), np.ones((1, period), np.uint8)).ravel()
        c = 2.0 * math.cos(2.0 * math.pi * self._frequency / self._rate)
        resid = np.zeros_like(x)
        resid[2:] = np.abs(x[2:] - c * x[1:-1] + x[:-2])
        tone = (env > 2 * self._loud).astype(np.uint8)
        guard = period + round(_EDGE_GUARD_S * self._rate)
        steady = cv2.erode(tone.reshape(1, -1), np.ones((1, 2 * guard + 1), np.uint8)).ravel()
        steady[:2] = 0  # no history before the first two samples of the block
        if g0 == 0:
            steady[:guard] = 0
        if final:  # the stream's end cuts the tone: an edge, not a glitch
            steady[-guard:] = 0
        bad = np.flatnonzero((resid > self._glitch_threshold * env) & (steady > 0)) + g0
        bad = bad[(bad >= lo) & (bad < hi)]
        merge = _GLITCH_MERGE_S * self._rate
        for index in bad:
            if not state.glitch_idx or index - state.glitch_idx[-1] > merge:
                state.glitch_idx.append(int(index))

    def summary(
        self, *, flashes: Sequence[FrameRecord] = (), analysis_dropped: int = 0
    ) -> AudioSummary:
        """Summarise what was received so far (does not disturb the streaming state).

        ``flashes``: video records (any; those with ``flash`` set are used, first arrival of
        each frame number). Each pairs with the beep onset within half a beep period of its
        arrival: latency = onset - flash capture time (flash k and beep k share a capture time
        when both tracks ran on one MediaClock with ``flash_every_s == beep_every_s``), A/V
        offset = onset - flash arrival.
        """
        rate = self._rate
        if rate is None:
            return AudioSummary(
                duration_s=0.0,
                present=False,
                rms_dbfs=-math.inf,
                silences=[],
                glitches=0,
                beeps=[],
                latency_ms=None,
                av_offset_ms=None,
                analysis_dropped=analysis_dropped,
            )
        state = copy.deepcopy(self._state)
        saved = self._done, self._frequency, list(self._est)
        self._scan(state, self._end, final=True)
        self._done, self._frequency, self._est = saved  # the tail scan is provisional
        total = self._end
        gaps = list(state.gaps)
        last = state.last_loud
        tail = total - (last + 1 if last is not None else 0)
        if tail > self._min_silence_s * rate:
            gaps.append((total - tail, tail))
        phase = self._beep_phase([i for i, _ in state.onsets])
        silences = self._expected_silences(gaps, phase, total)
        beeps = [wall for i, wall in state.onsets if self._on_time(i, phase)]
        latency, offset, pairs = _pair(beeps, flashes, self._beep_every)
        rms = math.sqrt(self._sum_sq / self._received) if self._received else 0.0
        return AudioSummary(
            duration_s=total / rate,
            present=_dbfs(self._max_frame_rms) > _PRESENT_DBFS,
            rms_dbfs=_dbfs(rms),
            silences=[(start / rate, length / rate) for start, length in silences],
            glitches=len(state.glitch_idx),
            beeps=beeps,
            latency_ms=latency,
            av_offset_ms=offset,
            glitch_at=[i / rate for i in state.glitch_idx],
            frequency=self._frequency,
            av_pairs=pairs,
            analysis_dropped=analysis_dropped,
        )

    def _beep_phase(self, onsets: list[int]) -> float | None:
        """Stream index (mod the period) where beeps start: the median of the onsets'."""
        if self._beep_every is None or not onsets or self._rate is None:
            return None
        period = self._beep_every * self._rate
        ref = onsets[0]
        spread = [(o - ref + period / 2) % period - period / 2 for o in onsets]
        return (ref + float(np.median(spread))) % period

    def _on_time(self, index: int, phase: float | None) -> bool:
        """Whether an onset is where a beep starts, not the resumption of a cut one."""
        if phase is None or self._beep_every is None or self._rate is None:
            return True
        period = self._beep_every * self._rate
        return abs((index - phase + period / 2) % period - period / 2) <= _ON_TIME_S * self._rate

    def _expected_silences(
        self, gaps: list[tuple[int, int]], phase: float | None, total: int
    ) -> list[tuple[int, int]]:
        assert self._rate is not None
        if self._beep_every is None:
            return gaps
        if phase is None:  # no beep at all: the whole stream, if nothing was loud either
            return gaps[:1] if gaps and gaps[0] == (0, total) else []
        period = self._beep_every * self._rate
        length = self._beep_s * self._rate
        out: list[tuple[int, int]] = []
        min_len = self._min_silence_s * self._rate
        for start, size in gaps:
            k = math.floor((start - phase) / period)
            while phase + k * period < start + size:
                w0, w1 = phase + k * period, phase + k * period + length
                a, b = max(start, w0), min(start + size, w1)
                if b - a > min_len:
                    out.append((round(a), round(b - a)))
                k += 1
        return out


def _pair(
    beeps: list[float], flashes: Sequence[FrameRecord], every: float | None
) -> tuple[dict[str, float] | None, float | None, int]:
    first: dict[int, FrameRecord] = {}
    for r in flashes:
        if r.flash and r.frame_number is not None and r.frame_number not in first:
            first[r.frame_number] = r
    if not beeps or not first:
        return None, None, 0
    window = (every if every is not None else 1.0) / 2
    onsets = np.asarray(beeps)
    latencies: list[float] = []
    offsets: list[float] = []
    for r in first.values():
        i = int(np.argmin(np.abs(onsets - r.arrival_s)))
        if abs(onsets[i] - r.arrival_s) < window and r.capture_ms is not None:
            latencies.append((onsets[i] - r.capture_ms / 1000.0) * 1000.0)
            offsets.append((onsets[i] - r.arrival_s) * 1000.0)
    if not latencies:
        return None, None, 0
    arr = np.asarray(latencies)
    stats = {
        "min": float(arr.min()),
        "median": float(np.median(arr)),
        "p95": float(np.percentile(arr, 95)),
        "max": float(arr.max()),
    }
    return stats, float(np.median(offsets)), len(latencies)
