"""Offline compositing: existing recordings in, one composed recording out, as fast as it goes.

The same :class:`~media.canvas.Canvas`, layouts and :class:`~media.speaker.SpeakerSelector`
as the live compositor, driven by file timestamps instead of the wall clock: output frame
``n`` shows, for every participant, its newest frame with a timestamp at or before ``n / fps``.
Audio of every input is resampled to 48 kHz stereo, summed and limited; per-participant levels
feed the speaker choice exactly as the live mixer's levels do.

Participants and time, as ``callbot record --split`` leaves them:

* Files named ``NAME-video.EXT`` and ``NAME-audio.EXT`` (also ``NAME-video-2`` with
  ``NAME-audio-2``: a second session) are one participant: one tile, labelled ``NAME``
  (``NAME-2``), showing the video, whose audio level makes it the speaker. Any other file is a
  participant of its own, labelled with its name.
* A file whose header has a ``CALLBOT_OFFSET`` tag (split files) starts that many seconds into
  the output, and its participant has a tile only while one of its files runs, as in the live
  recording. Other files start at 0 s and keep their tile (last frame) to the end.

The whole job (demux, decode, compose, encode, mux) is blocking work: :meth:`CompositeJob.run`
is meant for a worker thread (``await asyncio.to_thread(job.run)``); progress and
:meth:`CompositeJob.cancel` are safe to use from another thread. A cancelled job still
finishes its file cleanly up to where it got.
"""

from __future__ import annotations

import fractions
import math
import os
import re
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import av
import numpy as np
import numpy.typing as npt

from ._limiter import LEVEL_FLOOR_DB, Limiter, level_dbfs
from ._writer import open_container
from .canvas import Canvas, Tile
from .compositor import LAYOUTS, LayoutName
from .errors import MediaError, RecorderError
from .layout import Placement, Scene, grid_layout, pip_layout, scene_layout, speaker_layout
from .recorder import OFFSET_TAG, VideoCodec, profile_for
from .speaker import SpeakerSelector

__all__ = ["CompositeError", "CompositeJob", "CompositeResult", "InputInfo"]

_RATE = 48000
_CHUNK = 960  # 20 ms of audio per mixing step
_VIDEO_TB = fractions.Fraction(1, 90000)
_AUDIO_TB = fractions.Fraction(1, _RATE)
MIN_FPS = 1.0  # below this an output frame stands for so much input that progress stalls
_SPLIT_NAME = re.compile(r"(?P<name>.+)-(?P<kind>video|audio)(?P<session>-\d+)?")


class CompositeError(MediaError):
    """An input cannot be read, or the output cannot be written; the message names the file."""


@dataclass(frozen=True, slots=True)
class InputInfo:
    """What was found in one input file, and the participant (tile) it feeds."""

    path: Path
    label: str
    """The participant: files of one participant share it (see the module docstring)."""
    duration_s: float
    has_video: bool
    has_audio: bool
    offset_s: float | None = None
    """Where the file starts in the output (its ``CALLBOT_OFFSET`` tag); None: at 0 s, with
    its tile kept to the end."""

    @property
    def start_s(self) -> float:
        return self.offset_s or 0.0

    @property
    def end_s(self) -> float:
        """Where the file's tile goes away (never, without an offset)."""
        return math.inf if self.offset_s is None else self.offset_s + self.duration_s


@dataclass(frozen=True, slots=True)
class CompositeResult:
    path: Path
    video_frames: int
    duration_s: float
    inputs: tuple[InputInfo, ...]
    cancelled: bool = False


def _probe(path: Path) -> tuple[float, bool, bool, float | None]:
    if path.is_dir():
        raise CompositeError(f"{path}: is a directory, not a media file")
    if not path.is_file():
        raise CompositeError(f"{path}: no such file")
    try:
        with av.open(str(path)) as container:
            has_video = bool(container.streams.video)
            has_audio = bool(container.streams.audio)
            offset = _offset_tag(container.metadata)
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
    return duration, has_video, has_audio, offset


def _scan_duration(container: av.container.InputContainer, path: Path) -> float:
    """Duration from packet timestamps, for files whose header has none (a crashed recording)."""
    end = 0.0
    container.seek(0)
    for packet in container.demux():
        if packet.pts is not None and packet.time_base is not None:
            end = max(end, float((packet.pts + (packet.duration or 0)) * packet.time_base))
    return end


def _offset_tag(metadata: dict[str, str]) -> float | None:
    for key, value in metadata.items():
        if key.upper() == OFFSET_TAG:
            try:
                offset = float(value)
            except ValueError:
                return None
            return offset if math.isfinite(offset) else None
    return None


def _participants(paths: Sequence[Path]) -> list[str]:
    """The participant label of each path: ``NAME-video``/``NAME-audio`` in one folder share one.

    A participant takes one video and one audio file; a further file of a kind it already
    has is a participant of its own (labels stay unique: ``NAME (2)``).
    """
    labels: list[str] = []
    taken: set[str] = set()
    pairs: dict[tuple[Path, str], tuple[str, set[str]]] = {}  # -> label, kinds it has
    for path in paths:
        match = _SPLIT_NAME.fullmatch(path.stem)
        base = path.stem if match is None else match["name"] + (match["session"] or "")
        if match is not None:
            pair = pairs.get((path.parent, base))
            if pair is not None and match["kind"] not in pair[1]:
                pair[1].add(match["kind"])
                labels.append(pair[0])
                continue
        label, n = base, 2
        while label in taken:
            label, n = f"{base} ({n})", n + 1
        taken.add(label)
        if match is not None:
            pairs[(path.parent, base)] = (label, {match["kind"]})
        labels.append(label)
    return labels


class _VideoInput:
    """Decodes one file's video lazily, keeping the newest frame at or before a time."""

    def __init__(self, path: Path, offset: float = 0.0) -> None:
        self._container = av.open(str(path))
        stream = self._container.streams.video[0]
        stream.thread_type = "AUTO"
        self._start = _start_of(stream) - offset
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

    def __init__(self, path: Path, offset: float = 0.0) -> None:
        self._container = av.open(str(path))
        stream = self._container.streams.audio[0]
        self._start = _start_of(stream) - offset
        self._frames: Iterator[av.AudioFrame] = self._container.decode(stream)
        self._resampler = av.AudioResampler(format="flt", layout="stereo", rate=_RATE)
        self._buf = np.zeros((0, 2), dtype=np.float32)
        self._lead: int | None = None  # samples of silence to add (< 0: to cut) at the start
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
                if self._lead is None:
                    self._lead = 0
                    if frame.pts is not None:
                        t = float(frame.pts * (frame.time_base or _AUDIO_TB)) - self._start
                        # Later than the output's start: silence first; earlier: cut.
                        self._lead = round(t * _RATE)
                    if self._lead > 0:
                        self._buf = np.zeros((self._lead, 2), dtype=np.float32)
                frame.pts = None
                frames = self._resampler.resample(frame)
            for out in frames:
                data = out.to_ndarray().reshape(-1, 2).astype(np.float32, copy=False)
                if self._lead is not None and self._lead < 0:
                    cut = min(-self._lead, len(data))
                    data, self._lead = data[cut:], self._lead + cut
                self._buf = np.concatenate([self._buf, data])

    def pull(self, n: int) -> npt.NDArray[np.float32]:
        """The next ``n`` samples (zeros past the end); updates ``level_db``."""
        self._fill(n)
        chunk = self._buf[:n]
        self._buf = self._buf[n:]
        if len(chunk) < n:
            chunk = np.concatenate([chunk, np.zeros((n - len(chunk), 2), dtype=np.float32)])
        # ~200 ms smoothing, like the live mixer's level window.
        self.level_db = max(self.level_db - 20 * n / _RATE / 0.2, level_dbfs(chunk))
        return chunk

    def close(self) -> None:
        self._container.close()


class CompositeJob:
    """Compose ``inputs`` into ``output``. Construct (probes every input), then :meth:`run`.

    ``fps`` is between ``MIN_FPS`` and 120. The output lasts until the last input ends.
    """

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
        if not MIN_FPS <= fps <= 120:
            raise ValueError(f"fps must be in [{MIN_FPS:g}, 120], got {fps}")
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
        for path, label in zip(paths, _participants(paths), strict=True):
            duration, has_video, has_audio, offset = _probe(path)
            infos.append(InputInfo(path, label, duration, has_video, has_audio, offset))
        self.inputs = tuple(infos)
        # Tile labels, in the order of their first file.
        self.participants = tuple(dict.fromkeys(info.label for info in infos))
        self.duration_s = max(info.start_s + info.duration_s for info in infos)
        self.total_frames = max(1, math.ceil(self.duration_s * self._fps - 1e-6))
        self.frames_done = 0
        self._cancel = threading.Event()

    @property
    def fps(self) -> float:
        return self._fps

    def cancel(self) -> None:
        """Stop soon (within the current frame); the output is finalised and stays playable."""
        self._cancel.set()

    def _sources(self, label: str, kind: str) -> InputInfo | None:
        """The file a participant's ``kind`` comes from: one named for it, else the first."""
        files = [
            info
            for info in self.inputs
            if info.label == label and (info.has_video if kind == "video" else info.has_audio)
        ]
        named = [
            info
            for info in files
            if (m := _SPLIT_NAME.fullmatch(info.path.stem)) is not None and m["kind"] == kind
        ]
        return (named or files)[0] if files else None

    def _present(self, label: str, t: float) -> bool:
        return any(info.start_s <= t < info.end_s for info in self.inputs if info.label == label)

    def run(self) -> CompositeResult:
        """Blocking: do the whole job (call it from a worker thread in async code)."""
        videos: dict[str, _VideoInput] = {}
        audios: dict[str, _AudioInput] = {}
        sources: list[_VideoInput | _AudioInput] = []
        try:
            for label in self.participants:
                if (video := self._sources(label, "video")) is not None:
                    videos[label] = _opened(_VideoInput, video)
                    sources.append(videos[label])
                if (audio := self._sources(label, "audio")) is not None:
                    audios[label] = _opened(_AudioInput, audio)
                    sources.append(audios[label])
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
            audio_done = 0
            audio_end = self.duration_s * _RATE  # never past the inputs, whatever the fps
            frames = 0
            for n in range(self.total_frames):
                if self._cancel.is_set():
                    break
                t = n / self._fps
                # Audio up to the end of this frame's slot, so levels are current for it.
                target = min((n + 1) / self._fps * _RATE, audio_end)
                while astream is not None and audio_done < target and not self._cancel.is_set():
                    self._mix(audios, limiter, fifo, audio_done, astream, out)
                    audio_done += _CHUNK
                present = [k for k in self.participants if self._present(k, t)]
                levels = {k: a.level_db for k, a in audios.items() if k in present}
                speaker = selector.update(levels, t)
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
            while astream is not None and audio_done < audio_end and not self._cancel.is_set():
                self._mix(audios, limiter, fifo, audio_done, astream, out)
                audio_done += _CHUNK
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

    @staticmethod
    def _mix(
        audios: dict[str, _AudioInput],
        limiter: Limiter,
        fifo: av.AudioFifo,
        at: int,
        astream: av.audio.stream.AudioStream,
        out: av.container.OutputContainer,
    ) -> None:
        """One ``_CHUNK`` of every input's audio, summed, limited and encoded at sample ``at``."""
        mix = np.zeros((_CHUNK, 2), dtype=np.float32)
        for source in audios.values():
            mix += source.pull(_CHUNK)
        limiter.process(mix)
        aframe = av.AudioFrame.from_ndarray(mix.reshape(1, -1), format="flt", layout="stereo")
        aframe.sample_rate = _RATE
        aframe.pts = at
        aframe.time_base = _AUDIO_TB
        fifo.write(aframe)
        for packet_frame in _drain(fifo, astream.codec_context.frame_size or _CHUNK):
            out.mux(astream.encode(packet_frame))

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


_Input = TypeVar("_Input", _VideoInput, _AudioInput)


def _opened(kind: type[_Input], info: InputInfo) -> _Input:
    try:
        return kind(info.path, info.start_s)
    except (av.FFmpegError, OSError) as exc:
        raise CompositeError(f"{info.path}: cannot be opened ({exc})") from exc


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
