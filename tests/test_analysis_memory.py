"""VideoAnalyzer on long streams: memory stays bounded and every summary number stays exact.

The streams are synthetic stamps fed to ``VideoAnalyzer._account``, the bookkeeping that
``add`` runs on every frame once its stamp is read (decoding tens of thousands of frames would
only measure the decoder). Every number is checked against a brute-force computation of the
documented definitions over the whole event list, which is what the analyzer used to keep.
"""

from __future__ import annotations

import gc
import itertools
import math
import random
import tracemalloc
from dataclasses import dataclass

import numpy as np
import pytest

from media import analysis_video
from media.analysis import MAX_RECORDS, FrameRecord, VideoAnalyzer, VideoSummary
from media.report import StreamReport, _series

T0 = 1_700_000_000.0


@dataclass(frozen=True, slots=True)
class Event:
    arrival_s: float
    number: int | None  # None: an unstamped frame
    capture_ms: int = 0
    flash: bool = False
    psnr: float | None = None
    ssim: float | None = None


def stream(count: int, seed: int) -> list[Event]:
    """``count`` frames at ~30 fps with jitter, losses, duplicates (up to 100 frames back),
    swapped neighbours, stalls, unstamped frames, a flash every 30th and PSNR on every 2nd."""
    rng = random.Random(seed)
    events: list[Event] = []
    arrival = T0
    n = 0
    late: int | None = None  # a frame overtaken by the next one, sent after it
    while len(events) < count:
        arrival += 1 / 30 + rng.uniform(-0.004, 0.004)
        roll = rng.random()
        if roll < 0.002:
            arrival += rng.uniform(0.2, 0.6)  # a stall: a freeze
        if late is not None:
            number, late = late, None
        elif roll > 0.998:
            events.append(Event(arrival, None))
            continue
        elif roll < 0.005 and n > 0:
            number = rng.randint(max(0, n - 100), n - 1)  # a duplicate (or a very late frame)
        else:
            if roll < 0.015:
                n += rng.randint(1, 3)  # lost frames
            number = n
            if roll > 0.993:  # n + 1 overtakes n
                number, late = n + 1, n
            n += 2 if late is not None else 1
        quality = len(events) % 2 == 0
        events.append(
            Event(
                arrival,
                number,
                round(arrival * 1000 - rng.uniform(80.0, 120.0)),
                flash=number % 30 == 0,
                psnr=rng.uniform(30.0, 45.0) if quality else None,
                ssim=rng.uniform(0.8, 1.0) if quality and len(events) % 4 == 0 else None,
            )
        )
    return events


def feed(analyzer: VideoAnalyzer, events: list[Event]) -> None:
    for e in events:
        analyzer._account(
            e.arrival_s, 640, 480, e.number, e.capture_ms if e.number is not None else None,
            flash=e.flash, psnr_db=e.psnr, ssim=e.ssim,
        )  # fmt: skip


def brute_force(events: list[Event]) -> dict[str, object]:
    """The documented definitions over the whole list (what the analyzer kept per frame);
    freezes: more than the default 150 ms between new frames."""
    seen: set[int] = set()
    highest: int | None = None
    dups = reordered = 0
    new: list[float] = []
    latencies: list[float] = []
    flashes: list[tuple[float, int]] = []
    lat_bins: dict[int, list[float]] = {}
    psnr_bins: dict[int, list[float]] = {}
    first = events[0].arrival_s
    for e in events:
        since = int(e.arrival_s - first)
        if e.number is None:
            new.append(e.arrival_s)
            continue
        duplicate = e.number in seen
        dups += duplicate
        reordered += not duplicate and highest is not None and e.number < highest
        seen.add(e.number)
        highest = e.number if highest is None else max(highest, e.number)
        if not duplicate:
            new.append(e.arrival_s)
            latency = e.arrival_s * 1000.0 - e.capture_ms
            latencies.append(latency)
            lat_bins.setdefault(since, []).append(latency)
            if e.flash:
                flashes.append((e.arrival_s, e.number))
        if e.psnr is not None:
            psnr_bins.setdefault(since, []).append(e.psnr)
    freezes = [(a - first, (b - a) * 1000) for a, b in itertools.pairwise(new) if b - a > 0.15]
    offsets = np.asarray(new) - first
    counts = np.bincount(offsets.astype(np.int64))
    psnrs = [e.psnr for e in events if e.psnr is not None]
    ssims = [e.ssim for e in events if e.ssim is not None]
    lat = np.asarray(latencies)
    return {
        "frames": len(events),
        "stamped": sum(e.number is not None for e in events),
        "drops": max(seen) - min(seen) + 1 - len(seen),
        "duplicates": dups,
        "reordered": reordered,
        "freeze_list": freezes,
        "fps": (len(new) - 1) / (new[-1] - new[0]),
        "fps_series": [(float(i), float(counts[i])) for i in range(math.floor(offsets[-1]))],
        "latency": {
            "min": float(lat.min()),
            "median": float(np.median(lat)),
            "p95": float(np.percentile(lat, 95)),
            "max": float(lat.max()),
        },
        "psnr": {"mean": float(np.mean(psnrs)), "min": min(psnrs)},
        "ssim": {"mean": float(np.mean(ssims)), "min": min(ssims)},
        "flashes": flashes,
        "latency_series": [
            (float(i), float(np.mean(v)), min(v), max(v)) for i, v in sorted(lat_bins.items())
        ],
        "psnr_series": [
            (float(i), float(np.mean(v)), min(v)) for i, v in sorted(psnr_bins.items())
        ],
    }


def check_exact(
    summary: VideoSummary, flashes: list[FrameRecord], want: dict[str, object], *, exact: bool
) -> None:
    """Counts exact; latency percentiles exact, or within half a 0.1 % histogram bin."""
    assert summary.frames == want["frames"] and summary.stamped == want["stamped"]
    assert (summary.drops, summary.duplicates, summary.reordered) == (
        want["drops"], want["duplicates"], want["reordered"],
    )  # fmt: skip
    freezes = want["freeze_list"]
    assert isinstance(freezes, list) and freezes
    assert summary.freezes == len(freezes)
    assert summary.max_freeze_ms == pytest.approx(max(f[1] for f in freezes), rel=1e-12)
    assert summary.frozen_ms == pytest.approx(sum(f[1] for f in freezes), rel=1e-9)
    kept = len(summary.freeze_list)
    assert_close(summary.freeze_list, freezes[-kept:])
    assert summary.fps == pytest.approx(want["fps"], rel=1e-12)
    assert summary.fps_series == want["fps_series"]
    assert summary.flashes == len(flashes)
    assert [(r.arrival_s, r.frame_number) for r in flashes] == want["flashes"]
    assert all(r.flash and not r.duplicate and r.latency_ms is not None for r in flashes)
    latency = want["latency"]
    assert isinstance(latency, dict) and summary.latency_ms is not None
    assert (summary.latency_ms["min"], summary.latency_ms["max"]) == (
        latency["min"],
        latency["max"],
    )
    for key in ("median", "p95"):
        if exact:
            assert summary.latency_ms[key] == latency[key]
        else:
            assert summary.latency_ms[key] == pytest.approx(
                latency[key], abs=0.0005 * (abs(latency[key]) + 1)
            )
    assert summary.psnr_db == pytest.approx(want["psnr"], rel=1e-12)
    assert summary.ssim == pytest.approx(want["ssim"], rel=1e-12)
    assert_close(summary.latency_series, want["latency_series"])
    assert_close(summary.psnr_series, want["psnr_series"])


def assert_close(got: object, want: object) -> None:
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-9)


def traced_now() -> int:
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


def test_memory_stays_bounded_on_a_long_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every cap reached early (small caps, same code), then 16 000 more frames: the analyzer
    grows by the per-second series and flash records only, ~4.5 B per 30-fps frame (it
    kept ~310 B per frame before), and every number still matches the brute force."""
    monkeypatch.setattr(analysis_video, "EXACT_LATENCIES", 2000)
    monkeypatch.setattr(analysis_video, "DEDUP_WINDOW", 1024)
    monkeypatch.setattr(analysis_video, "_MAX_FREEZES", 20)
    events = stream(24_000, seed=7)
    first, rest = events[:8000], events[8000:]
    tracemalloc.start()
    try:
        analyzer = VideoAnalyzer(max_records=500)
        feed(analyzer, first)
        analyzer.summary()  # reaches the histogram and the summary's own allocations
        before = traced_now()
        tracemalloc.reset_peak()
        feed(analyzer, rest)
        peak = tracemalloc.get_traced_memory()[1]
        after = traced_now()
    finally:
        tracemalloc.stop()
    per_frame = (after - before) / len(rest)
    assert per_frame < 8.0, f"{per_frame:.1f} B per frame"
    assert peak - before < 200_000, f"peak {peak - before} B above the start"
    records = analyzer.records
    assert len(records) == 500 and records[-1].arrival_s == events[-1].arrival_s
    summary = analyzer.summary()
    assert len(summary.freeze_list) == 20 < summary.freezes
    check_exact(summary, analyzer.flashes, brute_force(events), exact=False)


def test_long_stream_counts_are_exact_with_the_default_caps() -> None:
    """Beyond MAX_RECORDS and, later, EXACT_LATENCIES: exact until then, and counts after."""
    events = stream(36_000, seed=11)
    split = analysis_video.EXACT_LATENCIES - 500  # below the latency cap: all exact
    analyzer = VideoAnalyzer()
    feed(analyzer, events[:split])
    check_exact(analyzer.summary(), analyzer.flashes, brute_force(events[:split]), exact=True)
    assert len(analyzer.records) == MAX_RECORDS
    feed(analyzer, events[split:])
    check_exact(analyzer.summary(), analyzer.flashes, brute_force(events), exact=False)


def test_frame_numbers_match_a_set_while_arrivals_stay_in_the_window() -> None:
    """Jumps past the window, wrap-around, late and duplicate numbers within it."""
    window = 64
    numbers = analysis_video._FrameNumbers(window)
    rng = random.Random(3)
    highest = 1000
    assert numbers.add(highest) == (False, False)
    seen = {highest}
    for _ in range(20_000):
        if rng.random() < 0.3:
            number = highest + rng.choice((1, 1, 2, 5, 40, 63, 64, 65, 200))
        else:
            number = highest - rng.randint(0, window - 1)
        want = (number in seen, number not in seen and number < highest)
        assert numbers.add(number) == want, number
        seen.add(number)
        highest = max(highest, number)
    assert numbers.drops == max(seen) - min(seen) + 1 - len(seen)


def test_frame_numbers_outside_the_window() -> None:
    numbers = analysis_video._FrameNumbers(16)
    for n in range(10, 40):
        numbers.add(n)
    assert numbers.add(12) == (True, False)  # 28 behind: cannot tell, counted as a duplicate
    assert numbers.add(5) == (False, True)  # below everything seen: new
    assert numbers.add(38) == (True, False)
    assert numbers.drops == 39 - 5 + 1 - 31


def test_report_plots_every_frame_or_the_whole_run_in_1s_means() -> None:
    """Records that cover the run are plotted per frame; trimmed ones give way to the summary's
    1-s series, so the plot of a long run still spans all of it."""
    events = stream(3000, seed=5)  # 100 s
    short = VideoAnalyzer()
    feed(short, events)
    long = VideoAnalyzer(max_records=300)
    feed(long, events)
    got = _series(
        [
            StreamReport(label="all", video=short.summary(), records=short.records),
            StreamReport(label="long", video=long.summary(), records=long.records),
        ]
    )
    (label, xs, _), (long_label, long_xs, long_ys) = got["latency"]
    assert label == "all" and len(xs) == sum(e.number is not None for e in events)
    assert long_label == "long (1-s means)"
    summary = long.summary()
    assert long_xs == [t + 0.5 for t, *_ in summary.latency_series]
    assert long_ys == [mean for _, mean, _, _ in summary.latency_series]
    assert long_xs[0] == 0.5 and abs(long_xs[-1] - xs[-1]) < 1.0  # the whole run
    assert [item[0] for item in got["psnr"]] == ["all", "long (1-s means)"]
