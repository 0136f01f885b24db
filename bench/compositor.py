"""callbot's compositor core against FFmpeg's own filter graph, same inputs, same run.

For n in (4, 9, 16) decoded 640x480 yuv420p inputs are composed on a 1280x720 yuv420p grid:

* callbot: ``media.canvas.Canvas.compose`` (each plane resized straight into its canvas view,
  no RGB round trip; one C call per tile for its bars and three planes), labels off; the canvas
  paints disjoint tiles on its two threads, so the ratio depends on whether the machine's
  second core is free (on a 2-vCPU machine at load average ~2-3, 16 tiles gave 2.15-2.82x
  between runs, median 2.56x, at 59.8 dB; FFmpeg's side slows more than ours under load, so
  the ratio moves with it).
* FFmpeg: one ``av.filter.Graph``: per input ``buffer`` -> ``scale`` to the fitted size from
  ``media.layout.fit`` (default swscale flags, i.e. bicubic: what anyone gets from
  ``ffmpeg -filter_complex``) -> ``pad`` to its cell -> ``xstack`` (same cells, black fill) ->
  ``buffersink``; one composite is n pushes and one pull. It is timed twice, with PyAV's
  default graph threading and with ``threads=1``; the ratio is against the faster of the two
  (on a small machine the slice threads cost more than they save at these frame sizes).

Both sides produce the same geometry, so the luma PSNR of callbot's canvas against the graph's
(whole canvas, bars included) says how close callbot's resize is to swscale's. Inputs are
``PatternVideoTrack`` frames round-tripped through libx264 at setup (natural-ish decoded content
with coding noise), distinct per input; each iteration uses a different set of frame objects so
the canvas never reuses a cell it scaled before. All sides run interleaved in one loop, order
rotating, and the medians are reported.

The memcpy bound is the composite rate a machine could reach if composing were nothing but
moving bytes: the bytes of one composite are the n input frames read (640x480x1.5 each) plus
the canvas written (1280x720x1.5); memory traffic is measured as bytes read plus bytes written
by ``numpy.copyto`` of a 64 MiB buffer.

``cv2`` keeps its configured thread pool (the setting is process-global); ``--cv2-threads N``
runs the same measurement under ``cv2.setNumThreads(N)`` and restores it afterwards. The resize
kernel alone, against swscale per tile, is ``python -m bench.scale``.

Usage: python -m bench.compositor [--json] [--frames N] [--cv2-threads N]
"""

from __future__ import annotations

import fractions
import statistics
import time
from collections.abc import Sequence

import av
import numpy as np
import numpy.typing as npt

from bench import _report
from media import PatternVideoTrack
from media._yuv import planes_of
from media.canvas import Canvas, Tile
from media.layout import Rect, fit, grid

SRC_W, SRC_H = 640, 480
CANVAS_W, CANVAS_H = 1280, 720
TILE_COUNTS = (4, 9, 16)
SETS = 3  # distinct frame objects per input, cycled so no iteration repeats the previous one
TARGET_RATIO = 2.0
TARGET_PSNR_DB = 45.0
_TIME_BASE = fractions.Fraction(1, 30)


def decoded_inputs(n: int, sets: int = SETS) -> list[list[av.VideoFrame]]:
    """``sets`` lists of ``n`` distinct 640x480 frames that went through libx264 and back."""
    per_input: list[list[av.VideoFrame]] = []
    for i in range(n):
        track = PatternVideoTrack(width=SRC_W, height=SRC_H, seed=i, label=f"in {i}")
        enc = av.CodecContext.create("libx264", "w")
        assert isinstance(enc, av.VideoCodecContext)
        enc.width, enc.height, enc.pix_fmt = SRC_W, SRC_H, "yuv420p"
        enc.time_base = _TIME_BASE
        enc.options = {"preset": "veryfast", "crf": "23", "tune": "zerolatency"}
        dec = av.CodecContext.create("h264", "r")
        frames: list[av.VideoFrame] = []
        for k in range(sets):
            frame = track.render(11 * k + 5 * i, capture_time_ms=1000 + 33 * k)
            frame.pts = k
            for packet in enc.encode(frame):
                frames += dec.decode(packet)
        for packet in enc.encode(None):
            frames += dec.decode(packet)
        frames += dec.decode(None)
        if len(frames) != sets:
            raise RuntimeError(f"decoded {len(frames)} frames, expected {sets}")
        per_input.append(frames)
    return [[per_input[i][k] for i in range(n)] for k in range(sets)]


class FFmpegGrid:
    """buffer x n -> scale -> pad -> xstack -> buffersink, configured once.

    ``threads=None`` keeps PyAV's default graph threading (slice threads); 1 runs it on the
    calling thread, which is faster for frames this small on a small machine.
    """

    def __init__(self, cells: Sequence[Rect], threads: int | None = None) -> None:
        self.graph = av.filter.Graph()
        if threads is not None:
            self.graph.threads = threads
        self.threads = self.graph.threads
        layout = "|".join(f"{c.x}_{c.y}" for c in cells)
        xstack = self.graph.add("xstack", f"inputs={len(cells)}:layout={layout}:fill=black")
        self.sources = []
        for i, cell in enumerate(cells):
            r = fit(SRC_W, SRC_H, cell)
            src = self.graph.add_buffer(
                width=SRC_W,
                height=SRC_H,
                format=av.VideoFormat("yuv420p"),
                time_base=_TIME_BASE,
                name=f"in{i}",
            )
            scale = self.graph.add("scale", f"{r.w}:{r.h}")
            pad = self.graph.add("pad", f"{cell.w}:{cell.h}:{r.x - cell.x}:{r.y - cell.y}:black")
            src.link_to(scale)
            scale.link_to(pad)
            pad.link_to(xstack, 0, i)
            self.sources.append(src)
        self.sink = self.graph.add("buffersink")
        xstack.link_to(self.sink)
        self.graph.configure()
        self._pts = 0

    def compose(self, frames: Sequence[av.VideoFrame]) -> av.VideoFrame:
        for src, frame in zip(self.sources, frames, strict=True):
            frame.pts = self._pts
            frame.time_base = _TIME_BASE
            src.push(frame)
        self._pts += 1
        out = self.sink.pull()
        assert isinstance(out, av.VideoFrame)
        return out


def luma_psnr(a: av.VideoFrame, b: av.VideoFrame) -> float:
    """PSNR (dB) of two frames' luma planes; 99 when identical."""
    ya = planes_of(a)[0].astype(np.float64)
    yb = planes_of(b)[0].astype(np.float64)
    mse = float(np.mean((ya - yb) ** 2))
    return 99.0 if mse == 0 else 10 * float(np.log10(255.0**2 / mse))


def memcpy_bandwidth(mib: int = 64, reps: int = 7) -> float:
    """Bytes read plus bytes written per second by ``numpy.copyto`` (median of ``reps``)."""
    src: npt.NDArray[np.uint8] = np.full(mib << 20, 7, dtype=np.uint8)
    dst = np.empty_like(src)
    np.copyto(dst, src)
    costs = []
    for _ in range(reps):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        costs.append(time.perf_counter() - t0)
    return 2 * src.nbytes / statistics.median(costs)


def measure(n: int, frames: int) -> dict[str, float]:
    """Interleaved medians for one tile count; see the module docstring for what is timed."""
    sets = decoded_inputs(n)
    cells = grid(n, CANVAS_W, CANVAS_H)
    canvas = Canvas(width=CANVAS_W, height=CANVAS_H)
    graphs = [FFmpegGrid(cells), FFmpegGrid(cells, threads=1)]

    def ours(k: int) -> av.VideoFrame:
        tiles = [
            Tile(key=f"in{i}", rect=cell, frame=frame)
            for i, (cell, frame) in enumerate(zip(cells, sets[k % SETS], strict=True))
        ]
        return canvas.compose(tiles)

    quality = luma_psnr(ours(0), graphs[1].compose(sets[0]))
    for k in range(1, 6):  # warm up caches, allocators and thread pools on every side
        ours(k)
        for graph in graphs:
            graph.compose(sets[k % SETS])
    costs: list[list[float]] = [[], [], []]
    for k in range(frames):
        for side in _rotate((0, 1, 2), k):
            t0 = time.perf_counter()
            if side == 0:
                ours(k)
            else:
                graphs[side - 1].compose(sets[k % SETS])
            costs[side].append(time.perf_counter() - t0)
    fps_ours, fps_default, fps_single = (1 / statistics.median(c) for c in costs)
    fps_ffmpeg = max(fps_default, fps_single)
    bytes_per_composite = n * SRC_W * SRC_H * 3 // 2 + CANVAS_W * CANVAS_H * 3 // 2
    return {
        f"callbot_fps_{n}": fps_ours,
        f"ffmpeg_fps_{n}": fps_ffmpeg,
        f"ffmpeg_default_threads_fps_{n}": fps_default,
        f"ffmpeg_1_thread_fps_{n}": fps_single,
        f"ratio_{n}": fps_ours / fps_ffmpeg,
        f"psnr_db_{n}": quality,
        f"memcpy_bound_fps_{n}": memcpy_bandwidth() / bytes_per_composite,
    }


def _rotate(items: tuple[int, ...], k: int) -> tuple[int, ...]:
    """A different order each iteration, so no side always runs with a warm or cold cache."""
    i = k % len(items)
    return items[i:] + items[:i]


def run(frames: int = 60, cv2_threads: int | None = None) -> dict[str, float]:
    """One flat JSON-able dict: per tile count fps, ratio, PSNR, memcpy bound; ``target_met``."""
    with _report.cv2_threads(cv2_threads) as threads:
        result: dict[str, float] = {"cv2_threads": float(threads)}
        for n in TILE_COUNTS:
            result.update(measure(n, frames))
    result["target_met"] = bool(
        result["ratio_16"] >= TARGET_RATIO and result["psnr_db_16"] >= TARGET_PSNR_DB
    )
    return result


def main(argv: list[str] | None = None) -> int:
    return _report.main(
        __doc__,
        run,
        argv,
        frames=60,
        frames_help="timed composites per side",
        with_cv2_threads=True,
    )


if __name__ == "__main__":
    raise SystemExit(main())
