"""The resize kernel alone: ``media._scale.resize_into`` per tile against swscale, same run.

The compositor's cost is mostly this kernel, but ``bench.compositor`` also times the canvas
around it (fills, bars, the tile thread). This isolates the kernel. For the grid's three
shrink factors of 640x480 inputs on a 1280x720 canvas (4 / 9 / 16 tiles: 1.33x / 2x / 2.67x)
it times one tile, i.e. the Y, U and V planes, each way:

* callbot: ``resize_into`` of each plane into its view of a canvas-sized plane (the C
  resampler, ``media._resample``);
* opencv_chain: ``media._scale_cv.resize_into``, the OpenCV chain ``resize_into`` falls back
  to when the extension is not built (``sharpen=False`` on chroma, as the canvas asks);
* swscale: ``VideoReformatter.reformat`` of the frame to the tile size with bicubic, what
  FFmpeg's ``scale`` filter does by default (it includes allocating the output frame, as the
  filter does), with swscale's own slice threads (``threads=0``, auto) and with one thread;
* ``cv2.INTER_AREA`` and ``cv2.INTER_LINEAR`` per plane: what a single OpenCV call costs
  (neither is good enough: see ``media._scale``).

Inputs are the benchmark's x264-decoded pattern frames, 48 distinct ones cycled so every call
reads a plane that is not in cache, as in a real composite. All sides run interleaved in
rounds and the medians are reported, with ``swscale_over_callbot_N`` and
``swscale_1_thread_over_callbot_N`` (> 1: callbot faster) and the luma PSNR of callbot against
swscale over all inputs.

Usage: python -m bench.scale [--json] [--frames N] [--cv2-threads N]
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import av
import cv2
import numpy as np
from av.video.reformatter import VideoReformatter

from bench import _report
from bench.compositor import CANVAS_H, CANVAS_W, SRC_H, SRC_W, decoded_inputs
from media._scale import resize_into
from media._scale_cv import resize_into as opencv_resize_into
from media._yuv import Plane, planes_of
from media.layout import fit, grid

TILE_COUNTS = (4, 9, 16)
_INPUTS = 16  # inputs per set; decoded_inputs makes 3 sets of distinct frames


def _per_tile(frames: list[av.VideoFrame], w: int, h: int) -> dict[str, Callable[[int], None]]:
    """One callable per side; each paints or scales the tile of frame ``k``."""
    canvas = [np.zeros((CANVAS_H, CANVAS_W), np.uint8)] + [
        np.zeros((CANVAS_H // 2, CANVAS_W // 2), np.uint8) for _ in range(2)
    ]
    views = [canvas[0][:h, 8 : 8 + w]] + [c[: h // 2, 4 : 4 + w // 2] for c in canvas[1:]]
    planes = [planes_of(f) for f in frames]

    def each_plane(resize: Callable[[Plane, Plane], None]) -> Callable[[int], None]:
        def paint(k: int) -> None:
            for src, dst in zip(planes[k % len(planes)], views, strict=True):
                resize(src, dst)

        return paint

    def opencv_chain(k: int) -> None:
        y, u, v = planes[k % len(planes)]
        opencv_resize_into(y, views[0])
        opencv_resize_into(u, views[1], sharpen=False)
        opencv_resize_into(v, views[2], sharpen=False)

    def cv2_call(interpolation: int) -> Callable[[Plane, Plane], None]:
        def resize(src: Plane, dst: Plane) -> None:
            cv2.resize(src, (dst.shape[1], dst.shape[0]), dst=dst, interpolation=interpolation)

        return resize

    def swscale(threads: int) -> Callable[[int], None]:
        scaler = VideoReformatter()

        def scale(k: int) -> None:
            frame = frames[k % len(frames)]
            scaler.reformat(frame, width=w, height=h, interpolation="BICUBIC", threads=threads)

        return scale

    return {
        "callbot": each_plane(resize_into),
        "opencv_chain": opencv_chain,
        "swscale": swscale(0),
        "swscale_1_thread": swscale(1),
        "cv2_area": each_plane(cv2_call(cv2.INTER_AREA)),
        "cv2_linear": each_plane(cv2_call(cv2.INTER_LINEAR)),
    }


def _luma_psnr(frames: list[av.VideoFrame], w: int, h: int) -> float:
    """callbot vs swscale over all inputs (one MSE), in dB."""
    errors = []
    for frame in frames:
        reference = planes_of(frame.reformat(width=w, height=h, interpolation="BICUBIC"))[0]
        ours = np.empty((h, w), np.uint8)
        resize_into(planes_of(frame)[0], ours)
        errors.append(np.mean((ours.astype(np.float64) - reference) ** 2))
    mse = float(np.mean(errors))
    return 99.0 if mse == 0 else 10 * float(np.log10(255.0**2 / mse))


def measure(n: int, frames: list[av.VideoFrame], rounds: int) -> dict[str, float]:
    """Medians (us per tile) for the tile size of an ``n``-tile grid; see the module docstring."""
    tile = fit(SRC_W, SRC_H, grid(n, CANVAS_W, CANVAS_H)[0])
    sides = _per_tile(frames, tile.w, tile.h)
    for paint in sides.values():  # warm up filter design, scratch planes, swscale contexts
        for k in range(3):
            paint(k)
    costs: dict[str, list[float]] = {name: [] for name in sides}
    for r in range(rounds):
        names = list(sides)
        names = names[r % len(names) :] + names[: r % len(names)]
        for name in names:
            t0 = time.perf_counter()
            for k in range(len(frames)):
                sides[name](k)
            costs[name].append((time.perf_counter() - t0) / len(frames) * 1e6)
    result = {f"{name}_us_{n}": statistics.median(c) for name, c in costs.items()}
    for name in ("swscale", "swscale_1_thread"):
        result[f"{name}_over_callbot_{n}"] = result[f"{name}_us_{n}"] / result[f"callbot_us_{n}"]
    result[f"psnr_db_{n}"] = _luma_psnr(frames, tile.w, tile.h)
    return result


def run(frames: int = 20, cv2_threads: int | None = None) -> dict[str, float]:
    """One flat JSON-able dict; ``frames`` is the number of timed rounds (48 tiles each)."""
    inputs = [f for group in decoded_inputs(_INPUTS) for f in group]
    with _report.cv2_threads(cv2_threads) as threads:
        result: dict[str, float] = {"cv2_threads": float(threads)}
        for n in TILE_COUNTS:
            result.update(measure(n, inputs, max(1, frames)))
    return result


def main(argv: list[str] | None = None) -> int:
    return _report.main(
        __doc__, run, argv, frames=20, frames_help="timed rounds of 48 tiles", with_cv2_threads=True
    )


if __name__ == "__main__":
    raise SystemExit(main())
