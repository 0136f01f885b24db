"""Media analysis for people: one-line summaries and a self-contained HTML report with plots.

Why a directory (``index.html`` + PNG files) and no JavaScript: it opens from a CI artifact or
a mail attachment with no server, and every plot is a file that can be linked on its own.

Plots are drawn with matplotlib's object API on the Agg canvas, never ``pyplot``: pyplot keeps
global figure state, which is neither thread-safe nor wanted in a library, and drawing is CPU
work that belongs in a worker thread (:func:`write_report` runs there). matplotlib is an
optional extra (``pip install 'callbot[report]'``), imported only when a report is drawn, so
the core install and the text summaries work without it.

Latency and PSNR are plotted per frame from a stream's records when they cover the whole run,
else (a run longer than the analyzer's ``max_records``) as 1-s means over the whole run from
the summary's ``latency_series`` / ``psnr_series``.

Worst-frame thumbnails put the received picture beside the source frame regenerated from its
stamp (:meth:`PatternSpec.render`): what the codec and the network did to it, at a glance.
"""

from __future__ import annotations

import asyncio
import html
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import numpy.typing as npt

from .errors import MediaError

if TYPE_CHECKING:
    import av
    from matplotlib.axes import Axes

    from .analysis import AudioSummary, FrameRecord, PatternSpec, VideoSummary

__all__ = [
    "REPORT_EXTRA_HINT",
    "ReportError",
    "StreamReport",
    "WorstFrame",
    "describe_audio",
    "describe_video",
    "render_report",
    "worst_pictures",
    "worst_records",
    "write_report",
]

REPORT_EXTRA_HINT = "pip install 'callbot[report]'"
THUMB_WIDTH = 320  # each half of a worst-frame thumbnail
WORST_FRAMES = 4

Image = npt.NDArray[np.uint8]


class ReportError(MediaError):
    """A report cannot be drawn (matplotlib missing) or written (the directory)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class WorstFrame:
    """A received picture worth showing: its record (with PSNR) and the image (BGR, H x W x 3)."""

    record: FrameRecord
    image: Image


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamReport:
    """Everything measured on one received stream (video, audio, or both of one sender)."""

    label: str
    video: VideoSummary | None = None
    audio: AudioSummary | None = None
    records: Sequence[FrameRecord] = ()
    """The analyzer's (latest) per-frame records: plotted per frame if they are all of them."""
    reference: PatternSpec | None = None
    worst: Sequence[WorstFrame] = field(default=())
    notes: Sequence[str] = ()


# ----------------------------------------------------------------------------- text


def _num(value: float | None, fmt: str = ".1f") -> str:
    return "n/a" if value is None or not math.isfinite(value) else format(value, fmt)


def describe_video(summary: VideoSummary) -> str:
    """Every number of a video summary on one line (assertion messages, logs)."""
    parts = [
        f"frames {summary.frames} (stamped {summary.stamped})",
        f"fps {summary.fps:.1f}",
        f"drops {summary.drops}",
        f"duplicates {summary.duplicates}",
        f"reordered {summary.reordered}",
        f"freezes {summary.freezes} (longest {summary.max_freeze_ms:.0f} ms, "
        f"frozen {summary.frozen_ms:.0f} ms)",
    ]
    lat = summary.latency_ms
    if lat:
        parts.append(
            f"latency p95 {_num(lat.get('p95'))} ms (min {_num(lat.get('min'))}, median "
            f"{_num(lat.get('median'))}, max {_num(lat.get('max'))})"
        )
    else:
        parts.append("latency n/a")
    psnr = summary.psnr_db
    if psnr:
        parts.append(f"PSNR mean {_num(psnr.get('mean'))} dB (min {_num(psnr.get('min'))})")
    else:
        parts.append("PSNR n/a")
    ssim = summary.ssim
    if ssim:
        parts.append(
            f"SSIM mean {_num(ssim.get('mean'), '.3f')} (min {_num(ssim.get('min'), '.3f')})"
        )
    if summary.resolutions:
        sizes = ", ".join(f"{w}x{h}" for _, w, h in summary.resolutions)
        parts.append(f"resolution {sizes}")
    return ", ".join(parts)


def describe_audio(summary: AudioSummary) -> str:
    """Every number of an audio summary on one line."""
    parts = [
        f"{'present' if summary.present else 'ABSENT'}",
        f"duration {summary.duration_s:.1f} s",
        f"level {summary.rms_dbfs:.1f} dBFS",
        f"glitches {summary.glitches}",
        f"silences {len(summary.silences)}"
        + (
            f" (longest {max(s for _, s in summary.silences) * 1000:.0f} ms)"
            if summary.silences
            else ""
        ),
        f"beeps {len(summary.beeps)}",
    ]
    lat = summary.latency_ms
    parts.append(
        f"latency p95 {_num(lat.get('p95'))} ms (median {_num(lat.get('median'))})"
        if lat
        else "latency n/a"
    )
    offset = summary.av_offset_ms
    parts.append("A/V offset n/a" if offset is None else f"A/V offset {offset:.1f} ms")
    return ", ".join(parts)


def worst_pictures(frames: Iterable[tuple[FrameRecord, av.VideoFrame]]) -> list[WorstFrame]:
    """``TrackProbe.worst_frames()`` / ``VideoAnalyzer.worst_frames()`` as BGR pictures.

    A pixel conversion per frame: call it in a worker thread from async code.
    """
    return [WorstFrame(record=record, image=_to_bgr(frame)) for record, frame in frames]


def worst_records(records: Sequence[FrameRecord], count: int = WORST_FRAMES) -> list[FrameRecord]:
    """The ``count`` stamped frames with the lowest PSNR, one per frame number, worst first."""
    best: dict[int, FrameRecord] = {}
    for record in records:
        if record.psnr_db is None or record.frame_number is None:
            continue
        seen = best.get(record.frame_number)
        if seen is None or (seen.psnr_db is not None and record.psnr_db < seen.psnr_db):
            best[record.frame_number] = record
    ranked = sorted(best.values(), key=lambda r: (r.psnr_db, r.frame_number))
    return ranked[:count]


# ----------------------------------------------------------------------------- drawing


def _matplotlib() -> Any:
    """The Agg canvas and Figure classes, or a ReportError naming the extra to install."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ReportError(
            f"HTML reports need matplotlib, which is not installed: {REPORT_EXTRA_HINT}"
        ) from exc
    return FigureCanvasAgg, Figure


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._")[:60] or "stream"


def _plot(
    path: Path,
    title: str,
    ylabel: str,
    series: Sequence[tuple[str, Sequence[float], Sequence[float]]],
    *,
    style: str = "-",
) -> bool:
    """One figure with a line per stream; False (and no file) if there is nothing to draw."""
    series = [s for s in series if len(s[1])]
    if not series:
        return False
    canvas_cls, figure_cls = _matplotlib()
    fig = figure_cls(figsize=(8, 3.2), dpi=100)
    canvas_cls(fig)
    ax: Axes = fig.add_subplot(1, 1, 1)
    for label, xs, ys in series:
        ax.plot(list(xs), list(ys), style, label=label, linewidth=1.2, markersize=2.5)
    ax.set_title(title)
    ax.set_xlabel("seconds since the first frame")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    if len(series) > 1 or series[0][0]:
        ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    fig.savefig(str(path), format="png")
    return True


def _to_bgr(frame: av.VideoFrame) -> Image:
    return np.asarray(frame.to_ndarray(format="bgr24"), dtype=np.uint8)


def _caption(image: Image, text: str) -> None:
    cv2.rectangle(image, (0, image.shape[0] - 22), (image.shape[1], image.shape[0]), (0, 0, 0), -1)
    cv2.putText(
        image, text, (6, image.shape[0] - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1,
        cv2.LINE_AA,
    )  # fmt: skip


def _resized(image: Image, width: int, height: int) -> Image:
    out = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
    return np.asarray(out, dtype=np.uint8)


def _thumbnail(worst: WorstFrame, reference: PatternSpec | None) -> Image:
    """Received | regenerated reference, each ``THUMB_WIDTH`` wide, captioned."""
    received = worst.image
    height = max(2, round(received.shape[0] * THUMB_WIDTH / received.shape[1]))
    left = _resized(received, THUMB_WIDTH, height)
    record = worst.record
    _caption(left, f"received #{record.frame_number}  {_num(record.psnr_db)} dB")
    halves = [left]
    if reference is not None and record.frame_number is not None:
        source = _to_bgr(
            reference.render(record.frame_number, record.capture_ms or 0, flash=record.flash)
        )
        right = _resized(source, THUMB_WIDTH, height)
        _caption(right, "reference (regenerated)")
        halves += [np.full((height, 4, 3), 255, dtype=np.uint8), right]
    return np.ascontiguousarray(np.hstack(halves))


def _write_png(path: Path, image: Image) -> None:
    ok, data = cv2.imencode(".png", image)
    if not ok:
        raise ReportError(f"cannot encode {path.name}")
    path.write_bytes(data.tobytes())


def _series(
    streams: Sequence[StreamReport],
) -> dict[str, list[tuple[str, list[float], list[float]]]]:
    out: dict[str, list[tuple[str, list[float], list[float]]]] = {
        "fps": [], "latency": [], "psnr": [],
    }  # fmt: skip
    for stream in streams:
        video, records, label = stream.video, stream.records, stream.label
        if video is not None and video.fps_series:
            xs, ys = zip(*video.fps_series, strict=True)
            out["fps"].append((label, list(xs), list(ys)))
        lat: list[tuple[float, float]] = []
        psnr: list[tuple[float, float]] = []
        if records and (video is None or len(records) >= video.frames):  # every frame's record
            t0 = records[0].arrival_s
            lat = [(r.arrival_s - t0, r.latency_ms) for r in records if r.latency_ms is not None]
            psnr = [(r.arrival_s - t0, r.psnr_db) for r in records if r.psnr_db is not None]
        elif video is not None:  # a long run keeps only its latest records: the 1-s means
            label = f"{label} (1-s means)".strip()
            lat = [(t + 0.5, mean) for t, mean, _, _ in video.latency_series]
            psnr = [(t + 0.5, mean) for t, mean, _ in video.psnr_series]
        for key, points in (("latency", lat), ("psnr", psnr)):
            if points:
                xs, ys = zip(*points, strict=True)
                out[key].append((label, list(xs), list(ys)))
    return out


_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}
td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f3f3f3;text-align:left}
img{max-width:100%;border:1px solid #ddd;margin:.3em 0}
.bad{color:#b00020;font-weight:600}
code{background:#f3f3f3;padding:0 .2em}
"""


def _video_row(label: str, s: VideoSummary) -> str:
    lat = s.latency_ms or {}
    psnr = s.psnr_db or {}
    ssim = s.ssim or {}
    cells = [
        str(s.frames), str(s.stamped), f"{s.fps:.1f}", str(s.drops), str(s.duplicates),
        str(s.reordered), str(s.freezes), f"{s.max_freeze_ms:.0f}", _num(lat.get("median")),
        _num(lat.get("p95")), _num(psnr.get("mean")), _num(psnr.get("min")),
        _num(ssim.get("mean"), ".3f"),
    ]  # fmt: skip
    bad = {3: s.drops > 0, 6: s.freezes > 0}
    tds = "".join(
        f'<td class="bad">{c}</td>' if bad.get(i) else f"<td>{c}</td>" for i, c in enumerate(cells)
    )
    return f"<tr><th>{html.escape(label)}</th>{tds}</tr>"


def _audio_row(label: str, s: AudioSummary) -> str:
    lat = s.latency_ms or {}
    present = "yes" if s.present else '<span class="bad">no</span>'
    cells = [
        present, f"{s.duration_s:.1f}", f"{s.rms_dbfs:.1f}", str(s.glitches), str(len(s.silences)),
        str(len(s.beeps)), _num(lat.get("median")), _num(s.av_offset_ms),
    ]  # fmt: skip
    return f"<tr><th>{html.escape(label)}</th>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"


def render_report(
    directory: str | Path, streams: Sequence[StreamReport], *, title: str = "callbot media report"
) -> Path:
    """Write ``index.html`` and its PNGs into ``directory`` (created); returns the HTML's path.

    Blocking (matplotlib, PNG encoding, file writes): call it from a worker thread, or use
    :func:`write_report`. Raises :class:`ReportError` without matplotlib.
    """
    _matplotlib()  # fail before creating anything
    out = Path(directory)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ReportError(f"cannot create report directory {out}: {exc}") from exc
    series = _series(streams)
    plots: list[tuple[str, str]] = []
    for key, title_text, ylabel, style in (
        ("fps", "Delivered frames per second (1-s windows)", "fps", "-o"),
        ("latency", "End-to-end latency", "ms", "-"),
        ("psnr", "PSNR against the regenerated source", "dB", "-"),
    ):
        name = f"{key}.png"
        if _plot(out / name, title_text, ylabel, series[key], style=style):
            plots.append((name, title_text))

    video_rows = [_video_row(s.label, s.video) for s in streams if s.video is not None]
    audio_rows = [_audio_row(s.label, s.audio) for s in streams if s.audio is not None]
    body = [f"<h1>{html.escape(title)}</h1>"]
    if video_rows:
        head = (
            "<tr><th>video</th><th>frames</th><th>stamped</th><th>fps</th><th>drops</th>"
            "<th>dups</th><th>reordered</th><th>freezes</th><th>longest freeze ms</th>"
            "<th>latency median ms</th><th>latency p95 ms</th><th>PSNR mean dB</th>"
            "<th>PSNR min dB</th><th>SSIM mean</th></tr>"
        )
        body.append(f"<table>{head}{''.join(video_rows)}</table>")
    if audio_rows:
        head = (
            "<tr><th>audio</th><th>present</th><th>seconds</th><th>level dBFS</th>"
            "<th>glitches</th><th>silences</th><th>beeps</th><th>latency median ms</th>"
            "<th>A/V offset ms</th></tr>"
        )
        body.append(f"<table>{head}{''.join(audio_rows)}</table>")
    for name, caption in plots:
        body.append(
            f'<h2>{html.escape(caption)}</h2><img src="{name}" alt="{html.escape(caption)}">'
        )
    for index, stream in enumerate(streams):
        for note in stream.notes:
            body.append(f"<p>{html.escape(stream.label)}: {html.escape(note)}</p>")
        if not stream.worst:
            continue
        body.append(f"<h2>Worst frames of {html.escape(stream.label)} by PSNR</h2>")
        for rank, worst in enumerate(stream.worst):
            name = f"worst-{index}-{_slug(stream.label)}-{rank}.png"
            _write_png(out / name, _thumbnail(worst, stream.reference))
            alt = f"frame {worst.record.frame_number}, {_num(worst.record.psnr_db)} dB"
            body.append(f'<img src="{name}" alt="{html.escape(alt)}">')
    page = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
        + "\n".join(body)
        + "</body></html>\n"
    )
    index_path = out / "index.html"
    index_path.write_text(page, encoding="utf-8")
    return index_path


async def write_report(
    directory: str | Path, streams: Sequence[StreamReport], *, title: str = "callbot media report"
) -> Path:
    """:func:`render_report` in a worker thread (drawing is CPU work; keep it off the loop)."""
    return await asyncio.to_thread(render_report, directory, streams, title=title)
