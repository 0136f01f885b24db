"""Per-frame cost of the media hot paths, each against a naive reference measured in the same run.

* pattern: ``PatternVideoTrack.render`` at 640x480 vs building the same frame with
  ``VideoFrame.from_ndarray`` (the obvious way, which copies through a slow path).
* compose: ``GridCompositor.snapshot`` of three fresh 640x480 inputs on a 1280x720 canvas
  (scaling, pasting, labels and the thread hop) vs one plain 640x480 -> 1280x720 ``reformat``.

Usage: python -m bench.compositor [--json] [--frames N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections.abc import Callable

import av

from media import GridCompositor, PatternVideoTrack


def _median_ms(fn: Callable[[], object], n: int) -> float:
    for _ in range(min(10, n)):
        fn()
    costs = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        costs.append(time.perf_counter() - t0)
    return statistics.median(costs) * 1000


async def _compose_ms(n: int) -> tuple[float, float]:
    bots = [PatternVideoTrack(width=640, height=480, seed=i, label=f"bot {i}") for i in range(3)]
    async with GridCompositor(width=1280, height=720, fps=30) as comp:
        for i, bot in enumerate(bots):
            comp.add_track(bot, label=f"bot {i}")
        await asyncio.sleep(0.2)
        for _ in range(5):
            await comp.snapshot()
        costs = []
        for _ in range(n):
            await asyncio.sleep(1 / 30)  # let every input deliver a new frame: no cache hits
            t0 = time.perf_counter()
            await comp.snapshot()
            costs.append(time.perf_counter() - t0)
    for bot in bots:
        bot.stop()
    frame = bots[0].render(0)
    reference = _median_ms(lambda: frame.reformat(width=1280, height=720), n)
    return statistics.median(costs) * 1000, reference


def run(frames: int = 100) -> dict[str, float]:
    track = PatternVideoTrack(width=640, height=480, label="bench")
    counter = iter(range(1 << 30))
    pattern = _median_ms(lambda: track.render(next(counter)), frames)
    planes = track.render(0).to_ndarray()
    naive = _median_ms(lambda: av.VideoFrame.from_ndarray(planes, format="yuv420p"), frames)
    compose, reference = asyncio.run(_compose_ms(frames))
    return {
        "pattern_640x480_ms": pattern,
        "pattern_reference_from_ndarray_ms": naive,
        "pattern_ratio": pattern / naive,
        "compose_3_to_1280x720_ms": compose,
        "compose_reference_reformat_ms": reference,
        "compose_ratio": compose / reference,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--frames", type=int, default=100)
    args = parser.parse_args(argv)
    result = run(args.frames)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:40s} {value:8.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
