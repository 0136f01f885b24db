"""Offline compositing: existing recordings in, one composed recording out, as fast as it goes.

The same :class:`~media.canvas.Canvas`, layouts and :class:`~media.speaker.SpeakerSelector`
as the live compositor, driven by file timestamps instead of the wall clock: output frame
``n`` shows, for every input, its newest frame with a timestamp at or before ``n / fps``.
Audio of every input is resampled to 48 kHz stereo, summed and limited; per-input levels feed
the speaker choice exactly as the live mixer's levels do.

The whole job (demux, decode, compose, encode, mux) is blocking work: :meth:`CompositeJob.run`
is meant for a worker thread (``await asyncio.to_thread(job.run)``); progress and
:meth:`CompositeJob.cancel` are safe to use from another thread. A cancelled job still
finishes its file cleanly up to where it got.
"""

from __future__ import annotations

import fractions
import math
import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import numpy.typing as npt

from ._limiter import LEVEL_FLOOR_DB, Limiter, level_dbfs
from ._writer import open_container
from .canvas import Canvas, Tile
from .compositor import LAYOUTS, LayoutName
from .errors import MediaError, RecorderError
from .layout import Placement, Scene, grid_layout, pip_layout, scene_layout, speaker_layout
from .recorder import VideoCodec, profile_for
from .speaker import SpeakerSelector

__all__ = ["CompositeError", "CompositeJob", "CompositeResult", "InputInfo"]

_RATE = 48000
_CHUNK = 960  # 20 ms of audio per mixing step
_VIDEO_TB = fractions.Fraction(1, 90000)
_AUDIO_TB = fractions.Fraction(1, _RATE)


class CompositeError(MediaError):
    """An input cannot be read, or the output cannot be written; the message names the file."""


@dataclass(frozen=True, slots=True)
class InputInfo:
    """What was found in one input file."""

    path: Path
    label: str
    duration_s: float
    has_video: bool
    has_audio: bool


@dataclass(frozen=True, slots=True)
class CompositeResult:
    path: Path
    video_frames: int
    duration_s: float
    inputs: tuple[InputInfo, ...]
    cancelled: bool = False


def _probe(path: Path) -> tuple[float, bool, bool]:
    if not path.is_file():
        raise CompositeError(f"{path}: no such file")
    try:
        with av.open(str(path)) as container:
            has_video = bool(container.streams.video)
            has_audio = bool(container.streams.audio)
            duration = 0.0
            if container.duration is not None:
                duration = container.duration / av.time_base
            if not (has_video or has_audio):
                raise CompositeError(f"{path}: no audio or video stream")
            # Decode one frame: a file with a valid header and garbage after it fails here.
            stream = container.streams.video[0] if has_video else container.streams.audio[0]
            next(container.decode(stream), None)
            if duration <= 0:
                duration = _scan_duration(container, path)
    except CompositeError:
        raise
    except (av.FFmpegError, OSError, ValueError, StopIteration) as exc:
        raise CompositeError(f"{path}: not a readable media file ({exc})") from exc
    return duration, has_video, has_audio


def _scan_duration(container: av.container.InputContainer, path: Path) -> float:
    """Duration from packet timestamps, for files whose header has none (a crashed recording)."""
    end = 0.0
    container.seek(0)
    for packet in container.demux():
        if packet.pts is not None and packet.time_base is not None:
            end = max(end, float((packet.pts + (packet.duration or 0)) * packet.time_base))
    return end


class _VideoInput:
    """Decodes one file's video lazily, keeping the newest frame at or before a time."""

    def __init__(self, path: Path) -> None:
        self._container = av.open(str(path))
        stream = self._container.streams.video[0]
        stream.thread_type = "AUTO"
        self._start = _start_of(stream)
        self._frames: Iterator[av.VideoFrame] = self._container.decode(stream)
        self._next: av.VideoFrame | None = None
        self._next_t = 0.0
        self.current: av.VideoFrame | None = None
        self.done = False
        self._advance()

    def _time(self, frame: av.VideoFrame) -> float:
        if frame.pts is None or frame.time_base is None:
            return self._next_t
        return float(frame.pts * frame.time_base) - self._start

    def _advance(self) -> None:
        try:
            self._next = next(self._frames)
            self._next_t = self._time(self._next)
        except (StopIteration, av.FFmpegError):
            self._next = None
            self.done = True

    def at(self, t: float) -> av.VideoFrame | None:
        while self._next is not None and self._next_t <= t + 1e-6:
            self.current = self._next
            self._advance()
        return self.current

    def close(self) -> None:
        self._container.close()


class _AudioInput:
    """Decodes one file's audio into 48 kHz stereo float32 chunks, silence-padded at the start."""

    def __init__(self, path: Path) -> None:
        self._container = av.open(str(path))
        stream = self._container.streams.audio[0]
        self._start = _start_of(stream)
        self._frames: Iterator[av.AudioFrame] = self._container.decode(stream)
        self._resampler = av.AudioResampler(format="flt", layout="stereo", rate=_RATE)
        self._buf = np.zeros((0, 2), dtype=np.float32)
        self._written = 0  # samples handed out so far
        self.done = False
        self.level_db = LEVEL_FLOOR_DB

    def _fill(self, need: int) -> None:
        while len(self._buf) < need and not self.done:
            try:
                frame = next(self._frames)
            except (StopIteration, av.FFmpegError):
                self.done = True
                frames = self._resampler.resample(None)
            else:
                if not self._buf.size and self._written == 0 and frame.pts is not None:
                    lead = float(frame.pts * (frame.time_base or _AUDIO_TB)) - self._start
                    if lead > 0:  # audio starts after the file does: keep it in place
                        self._buf = np.zeros((round(lead * _RATE), 2), dtype=np.float32)
                frame.pts = None
                frames = self._resampler.resample(frame)
            for out in frames:
                data = out.to_ndarray().reshape(-1, 2).astype(np.float32, copy=False)
                self._buf = np.concatenate([self._buf, data])

    def pull(self, n: int) -> npt.NDArray[np.float32]:
        """The next ``n`` samples (zeros past the end); updates ``level_db``."""
        self._fill(n)
        chunk = self._buf[:n]
        self._buf = self._buf[n:]
        if len(chunk) < n:
            chunk = np.concatenate([chunk, np.zeros((n - len(chunk), 2), dtype=np.float32)])
        self._written += n
        # ~200 ms smoothing, like the live mixer's level window.
        self.level_db = max(self.level_db - 20 * n / _RATE / 0.2, level_dbfs(chunk))
        return chunk

    def close(self) -> None:
        self._container.close()


class CompositeJob:
    """Compose ``inputs`` into ``output``. Construct (probes every input), then :meth:`run`."""

    def __init__(
        self,
        inputs: Sequence[str | os.PathLike[str]],
        output: str | os.PathLike[str],
        *,
        layout: LayoutName | Scene = "grid",
        width: int = 1280,
        height: int = 720,
        fps: float = 30.0,
        labels: bool = True,
        video_codec: VideoCodec | None = None,
    ) -> None:
        if not inputs:
            raise CompositeError("no inputs to compose")
        if not isinstance(layout, Scene) and layout not in LAYOUTS:
            raise ValueError(f"unknown layout {layout!r}; use one of {', '.join(LAYOUTS)}")
        if not 0 < fps <= 120:
            raise ValueError(f"fps must be in (0, 120], got {fps}")
        self._output = Path(output)
        try:
            self._profile = profile_for(self._output, video_codec, video=True)
        except RecorderError as exc:
            raise CompositeError(str(exc)) from None
        paths = [Path(p) for p in inputs]
        if any(p.resolve() == self._output.resolve() for p in paths):
            raise CompositeError(f"{self._output}: the output is also an input")
        self._layout = layout
        self._canvas = Canvas(width=width, height=height)
        self._fps = float(fps)
        self._labels = labels
        infos = []
        taken: set[str] = set()
        for path in paths:
            duration, has_video, has_audio = _probe(path)
            label = path.stem
            n = 2
            while label in taken:
                label, n = f"{path.stem} ({n})", n + 1
            taken.add(label)
            infos.append(InputInfo(path, label, duration, has_video, has_audio))
        self.inputs = tuple(infos)
        self.duration_s = max(info.duration_s for info in infos)
        self.total_frames = max(1, math.ceil(self.duration_s * self._fps - 1e-6))
        self.frames_done = 0
        self._cancel = threading.Event()

    @property
    def fps(self) -> float:
        return self._fps

    def cancel(self) -> None:
        """Stop after the current frame; the output is finalised and stays playable."""
        self._cancel.set()

    def run(self) -> CompositeResult:
        """Blocking: do the whole job (call it from a worker thread in async code)."""
        videos: dict[str, _VideoInput] = {}
        audios: dict[str, _AudioInput] = {}
        sources: list[_VideoInput | _AudioInput] = []
        try:
            for info in self.inputs:
                try:
                    if info.has_video:
                        videos[info.label] = _VideoInput(info.path)
                        sources.append(videos[info.label])
                    if info.has_audio:
                        audios[info.label] = _AudioInput(info.path)
                        sources.append(audios[info.label])
                except (av.FFmpegError, OSError) as exc:
                    raise CompositeError(f"{info.path}: cannot be opened ({exc})") from exc
            return self._run(videos, audios)
        finally:
            for source in sources:
                source.close()
            self._canvas.close()

    def _open_output(self) -> av.container.OutputContainer:
        try:
            return open_container(self._output, self._profile)
        except (av.FFmpegError, OSError) as exc:
            raise CompositeError(f"{self._output}: cannot be written ({exc})") from exc

    def _run(
        self, videos: dict[str, _VideoInput], audios: dict[str, _AudioInput]
    ) -> CompositeResult:
        profile = self._profile
        out = self._open_output()
        try:
            vstream = out.add_stream(
                profile.video_codec, rate=fractions.Fraction(self._fps).limit_denominator(1001)
            )
            assert isinstance(vstream, av.video.stream.VideoStream)
            vstream.codec_context.width = self._canvas.width
            vstream.codec_context.height = self._canvas.height
            vstream.codec_context.pix_fmt = "yuv420p"
            vstream.codec_context.time_base = _VIDEO_TB
            vstream.codec_context.gop_size = max(1, round(self._fps))
            if profile.video_codec == "libx264":
                vstream.codec_context.options = {"preset": "veryfast"}
            else:
                vstream.codec_context.bit_rate = 2_000_000
            astream: av.audio.stream.AudioStream | None = None
            if audios:
                added = out.add_stream(profile.audio_codec, rate=_RATE)
                assert isinstance(added, av.audio.stream.AudioStream)
                added.codec_context.layout = "stereo"
                added.codec_context.time_base = _AUDIO_TB
                astream = added
            out.start_encoding()
            fifo = av.AudioFifo()
            limiter = Limiter(_CHUNK * 1000 / _RATE, _CHUNK)
            selector = SpeakerSelector()
            keys = [info.label for info in self.inputs]
            audio_done = 0
            frames = 0
            for n in range(self.total_frames):
                if self._cancel.is_set():
                    break
                t = n / self._fps
                # Audio up to the end of this frame's slot, so levels are current for it.
                while audios and astream is not None and audio_done < (n + 1) / self._fps * _RATE:
                    mix = np.zeros((_CHUNK, 2), dtype=np.float32)
                    for source in audios.values():
                        mix += source.pull(_CHUNK)
                    limiter.process(mix)
                    aframe = av.AudioFrame.from_ndarray(
                        mix.reshape(1, -1), format="flt", layout="stereo"
                    )
                    aframe.sample_rate = _RATE
                    aframe.pts = audio_done
                    aframe.time_base = _AUDIO_TB
                    fifo.write(aframe)
                    audio_done += _CHUNK
                    for packet_frame in _drain(fifo, astream.codec_context.frame_size or _CHUNK):
                        out.mux(astream.encode(packet_frame))
                levels = {k: a.level_db for k, a in audios.items()}
                speaker = selector.update(levels, t)
                present = [k for k in keys if k in videos or k in audios]
                tiles = [
                    Tile(
                        key=p.key,
                        rect=p.rect,
                        frame=videos[p.key].at(t) if p.key in videos else None,
                        label=p.key if self._labels else "",
                    )
                    for p in self._place(present, speaker)
                ]
                frame = self._canvas.compose(tiles)
                frame.pts = round(t / _VIDEO_TB)
                frame.time_base = _VIDEO_TB
                out.mux(vstream.encode(frame))
                frames += 1
                self.frames_done = frames
            out.mux(vstream.encode(None))
            if astream is not None:
                for packet_frame in _drain(fifo, astream.codec_context.frame_size or _CHUNK, True):
                    out.mux(astream.encode(packet_frame))
                out.mux(astream.encode(None))
        except av.FFmpegError as exc:
            raise CompositeError(f"{self._output}: writing failed ({exc})") from exc
        finally:
            out.close()
        return CompositeResult(
            path=self._output,
            video_frames=frames,
            duration_s=frames / self._fps,
            inputs=self.inputs,
            cancelled=self._cancel.is_set(),
        )

    def _place(self, keys: list[str], speaker: str | None) -> list[Placement]:
        w, h = self._canvas.width, self._canvas.height
        layout = self._layout
        if isinstance(layout, Scene):
            return scene_layout(keys, layout, w, h)
        if layout == "speaker":
            return speaker_layout(keys, speaker, w, h)
        if layout == "pip":
            return pip_layout(keys, speaker, w, h)
        return grid_layout(keys, w, h)


def _start_of(stream: av.stream.Stream) -> float:
    if stream.start_time is None or stream.time_base is None:
        return 0.0
    return float(stream.start_time * stream.time_base)


def _drain(fifo: av.AudioFifo, size: int, final: bool = False) -> Iterator[av.AudioFrame]:
    """Encoder-sized frames out of the FIFO (the last partial one only when ``final``)."""
    while fifo.samples >= size or (final and fifo.samples > 0):
        frame = fifo.read(min(size, fifo.samples))
        if frame is None:
            return
        yield frame
