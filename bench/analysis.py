"""Analysis cost: can one core keep up with 16 received 640x480 streams at 30 fps?

Two measurements, side by side with the real-time budget (16 x 30 = 480 frames per second):

* ``*_cpu_s_per_s``: thread CPU seconds that ``VideoAnalyzer.add`` (what a probe's worker does
  per frame: luma view, stamp, latency, flash check, reference render, PSNR, SSIM) needs per
  second of 16x30 frames, for three settings: ``stamps`` (no reference), ``default`` (the
  probe's default: PSNR every frame, SSIM every 4th) and ``full`` (PSNR and SSIM every frame).
  ``*_budget_ratio`` = 1 / that (how many times over one core could carry it; >= 1 is needed).
  The frames are rendered outside the timed region; best of three rounds.
* ``live_*``: 16 real ``TrackProbe``s on 16 PatternVideoTracks (30 fps, real time) for
  ``--frames`` / 30 seconds: process CPU per wall second with probes (``live_cores``), minus
  the same tracks read with no analysis (``live_baseline_cores``, rendering them), and whether
  any probe fell behind (``live_quality_skipped``, ``live_analysis_dropped``).

``target_met``: the default setting costs at most one core in both measurements.

Usage: python -m bench.analysis [--json] [--frames N] [--cv2-threads N]
"""

from __future__ import annotations

import asyncio
import time

from aiortc import MediaStreamTrack

from bench import _report
from media.analysis import PatternSpec, TrackProbe, VideoAnalyzer

STREAMS, FPS, WIDTH, HEIGHT = 16, 30, 640, 480
_ROUNDS = 3
_SETTINGS = {"stamps": None, "default": 4, "full": 1}  # ssim_every; None = no reference


def _specs() -> list[PatternSpec]:
    return [PatternSpec(label=f"bot {i}", seed=i, flash_every_s=1.0) for i in range(STREAMS)]


def _cpu_per_frame(spec: PatternSpec, ssim_every: int | None, frames: int) -> float:
    """Thread CPU seconds per frame of one analyzer (rendering not timed)."""
    analyzer = VideoAnalyzer(
        reference=None if ssim_every is None else spec, ssim_every=ssim_every or 1
    )
    source = spec.track()
    spent = 0.0
    for n in range(frames):
        frame = source.render(n, 1_000_000 + n * 33, media_time_s=n / FPS)
        start = time.thread_time()
        analyzer.add(frame, 1000.0 + n / FPS)
        spent += time.thread_time() - start
    if analyzer.summary().stamped != frames:
        raise RuntimeError("stamps were not read back")
    return spent / frames


def _offline(frames: int) -> dict[str, float]:
    out: dict[str, float] = {}
    specs = _specs()
    for name, ssim_every in _SETTINGS.items():
        per_frame = min(
            sum(_cpu_per_frame(spec, ssim_every, frames) for spec in specs[:4]) / 4
            for _ in range(_ROUNDS)
        )
        cpu_s_per_s = per_frame * STREAMS * FPS
        out[f"{name}_ms_per_frame"] = per_frame * 1000
        out[f"{name}_cpu_s_per_s"] = cpu_s_per_s
        out[f"{name}_budget_ratio"] = 1.0 / cpu_s_per_s
    return out


async def _live_once(frames: int, analyse: bool) -> tuple[float, int, int]:
    """(process CPU s per wall s, quality skipped, analysis dropped) of one live run."""
    specs = _specs()
    tracks = [spec.track() for spec in specs]  # real paced sources; the baseline has them too
    cpu0, wall0 = time.process_time(), time.monotonic()
    skipped = dropped = 0
    if analyse:
        probes = [
            TrackProbe(t, reference=s, label=s.label) for t, s in zip(tracks, specs, strict=True)
        ]
        for probe in probes:
            probe.start()
        for probe in probes:
            await probe.wait_frames(frames, timeout_s=frames / FPS + 30)
        for probe in probes:
            await probe.aclose()
        for track in tracks:
            track.stop()
        for probe in probes:
            summary = probe.video_summary()
            skipped += summary.quality_skipped
            dropped += summary.analysis_dropped
    else:

        async def drain(track: MediaStreamTrack) -> None:
            for _ in range(frames):
                await track.recv()
            track.stop()

        async with asyncio.TaskGroup() as group:
            for track in tracks:
                group.create_task(drain(track))
    cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
    return cpu / wall, skipped, dropped


def run(frames: int = 90, cv2_threads: int | None = 1) -> dict[str, float | bool]:
    frames = max(frames, FPS)
    with _report.cv2_threads(1 if cv2_threads is None else cv2_threads):  # one core means one
        result: dict[str, float | bool] = dict(_offline(frames))
        baseline, _, _ = asyncio.run(_live_once(frames, analyse=False))
        cores, skipped, dropped = asyncio.run(_live_once(frames, analyse=True))
    result["live_baseline_cores"] = baseline
    result["live_cores"] = cores - baseline
    result["live_quality_skipped"] = skipped
    result["live_analysis_dropped"] = dropped
    result["target_met"] = (
        float(result["default_cpu_s_per_s"]) <= 1.0 and cores - baseline <= 1.0 and dropped == 0
    )
    return result


def main(argv: list[str] | None = None) -> int:
    return _report.main(
        __doc__,
        run,
        argv,
        frames=90,
        frames_help="frames per stream (30 = 1 s)",
        with_cv2_threads=True,
    )


if __name__ == "__main__":
    raise SystemExit(main())
