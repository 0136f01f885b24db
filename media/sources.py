"""Synthetic and file media sources that look like any other aiortc track.

The synthetic sources exist for end-to-end tests and demos: every video frame carries a
:mod:`~media.timecode` stamp, so whoever receives it can measure loss, order and latency.
"""

from __future__ import annotations

import asyncio
import fractions
import math
import os
import time
from pathlib import Path

import av
import cv2
import numpy as np
import numpy.typing as npt
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from . import _yuv
from ._filereader import FileReader, probe
from ._pacing import Pacer
from .clock import MediaClock
from .timecode import BAND, Stamp, stamp_luma

__all__ = ["FileSource", "PatternVideoTrack", "ToneAudioTrack"]


VIDEO_CLOCK_RATE = 90000
VIDEO_TIME_BASE = fractions.Fraction(1, VIDEO_CLOCK_RATE)
_MAX_FPS = 120.0
_GOLDEN_ANGLE = math.radians(137.50776)
_FLASH_Y = 235  # video-legal white


class PatternVideoTrack(MediaStreamTrack):
    """Moving, labelled, time-stamped test video (yuv420p), paced in real time.

    Each instance's background hue follows ``seed`` and ``label`` is drawn large, so several
    bots are told apart at a glance. Frame ``n`` (0, 1, 2, ...) carries ``Stamp(n, now_ms)``.
    Per-frame work is one buffer copy plus a few slice writes (~0.1 ms at 640x480), so it
    runs on the event loop.

    With a ``clock``, pts are media time since the clock's epoch, on the same timeline as every
    other track paced by that clock. With ``flash_every_s``, the frame whose media time (pts)
    falls in ``[k * flash_every_s, k * flash_every_s + 1 / fps)`` is white below the stamp band:
    a visual sync mark that a ``ToneAudioTrack(beep_every_s=...)`` on the same clock matches.
    """

    kind = "video"

    def __init__(
        self,
        *,
        width: int = 640,
        height: int = 480,
        fps: float = 30.0,
        label: str = "",
        seed: int = 0,
        clock: MediaClock | None = None,
        flash_every_s: float | None = None,
    ) -> None:
        if width % 2 or height % 2:
            raise ValueError(f"width and height must be even for yuv420p, got {width}x{height}")
        if width < 64 or height < 64:
            raise ValueError(f"frame must be at least 64x64, got {width}x{height}")
        if not 0 < fps <= _MAX_FPS:
            raise ValueError(f"fps must be in (0, {_MAX_FPS:g}], got {fps}")
        if flash_every_s is not None and not flash_every_s > 1 / fps:
            raise ValueError(f"flash_every_s must be longer than a frame, got {flash_every_s}")
        super().__init__()
        self._width = width
        self._height = height
        self._fps = float(fps)
        self._label = label
        self._seed = seed
        self._clock = clock
        self._flash_every_s = flash_every_s
        self._pacer = Pacer(self._fps, clock)
        self._frames_sent = 0
        self._band = min(height, 2 * math.ceil(height * BAND / 2) + 2)
        self._base = self._render_background(seed)
        hue = seed * _GOLDEN_ANGLE + math.pi  # the box takes the opposite hue
        self._box_uv = (int(128 + 70 * math.cos(hue)), int(128 + 70 * math.sin(hue)))

    @property
    def frames_sent(self) -> int:
        """Frames returned by ``recv`` so far (the next frame's stamp number)."""
        return self._frames_sent

    @property
    def width(self) -> int:
        return self._width

    @property
    def height(self) -> int:
        return self._height

    @property
    def fps(self) -> float:
        return self._fps

    @property
    def label(self) -> str:
        return self._label

    @property
    def seed(self) -> int:
        return self._seed

    @property
    def flash_every_s(self) -> float | None:
        return self._flash_every_s

    @property
    def clock(self) -> MediaClock | None:
        return self._clock

    def is_flash(self, media_time_s: float) -> bool:
        """Whether the frame at this media time (pts in seconds) is a flash frame."""
        period = self._flash_every_s
        if period is None:
            return False
        phase = media_time_s - math.floor(media_time_s / period + 1e-9) * period
        return phase < 1 / self._fps - 1e-6

    def _render_background(self, seed: int) -> npt.NDArray[np.uint8]:
        w, h = self._width, self._height
        buf = _yuv.alloc(w, h)
        y, u, v = _yuv.views(buf, w, h)
        y[:] = np.linspace(60, 120, h, dtype=np.float32).astype(np.uint8)[:, None]
        hue = seed * _GOLDEN_ANGLE + math.radians(20)
        u[:] = int(128 + 60 * math.cos(hue))
        v[:] = int(128 + 60 * math.sin(hue))
        band_c = self._band // 2
        u[:band_c] = _yuv.NEUTRAL_C
        v[:band_c] = _yuv.NEUTRAL_C
        if self._label:
            self._draw_label(y, u, v)
        return buf

    def _draw_label(self, y: _yuv.Plane, u: _yuv.Plane, v: _yuv.Plane) -> None:
        w, h = self._width, self._height
        font = cv2.FONT_HERSHEY_SIMPLEX
        (tw, th), _ = cv2.getTextSize(self._label, font, 1.0, 2)
        scale = max(0.3, min(0.7 * w / max(tw, 1), 0.3 * h / max(th, 1)))
        thick = max(1, int(scale * 2))
        (tw, th), _ = cv2.getTextSize(self._label, font, scale, thick)
        org = ((w - tw) // 2, self._band + (h - self._band) // 2 + th // 2)
        mask = np.zeros((h, w), dtype=np.uint8)
        cv2.putText(mask, self._label, org, font, scale, 255, thick + 4, cv2.LINE_AA)
        y[mask > 0] = _yuv.BLACK_Y + 10  # dark outline keeps the text readable on any hue
        mask[:] = 0
        cv2.putText(mask, self._label, org, font, scale, 255, thick, cv2.LINE_AA)
        y[mask > 0] = 230
        cmask = cv2.resize(mask, (w // 2, h // 2), interpolation=cv2.INTER_AREA) > 64
        u[cmask] = _yuv.NEUTRAL_C
        v[cmask] = _yuv.NEUTRAL_C

    def render(
        self,
        frame_number: int,
        capture_time_ms: int | None = None,
        *,
        media_time_s: float | None = None,
    ) -> av.VideoFrame:
        """Build frame ``frame_number`` without pacing (for tests and benchmarks); pts unset.

        ``media_time_s`` (the pts the frame will carry, in seconds) decides whether it flashes.
        """
        w, h = self._width, self._height
        buf = self._base.copy()
        y, u, v = _yuv.views(buf, w, h)
        if capture_time_ms is None:
            capture_time_ms = int(time.time() * 1000)
        if media_time_s is not None and self.is_flash(media_time_s):
            y[self._band :] = _FLASH_Y
            u[self._band // 2 :] = _yuv.NEUTRAL_C
            v[self._band // 2 :] = _yuv.NEUTRAL_C
            stamp_luma(y, Stamp(frame_number, capture_time_ms))
            return _yuv.to_frame(buf, w, h)
        content = h - self._band
        # A vertical bar sweeping left to right every 3 s.
        period = max(1, int(self._fps * 3))
        bar_w = max(2, (w // 40) & ~1)
        bx = ((frame_number % period) * (w - bar_w) // period) & ~1
        y[self._band :, bx : bx + bar_w] = 200
        # A box bouncing horizontally every 2 s in the lower part of the picture.
        side = max(8, (content // 4) & ~1)
        span = w - side
        period = max(2, int(self._fps * 2))
        phase = frame_number % period
        tri = phase if phase <= period // 2 else period - phase
        x0 = (tri * 2 * span // period) & ~1
        y0 = (h - side - content // 10) & ~1
        y[y0 : y0 + side, x0 : x0 + side] = 170
        u[y0 // 2 : (y0 + side) // 2, x0 // 2 : (x0 + side) // 2] = self._box_uv[0]
        v[y0 // 2 : (y0 + side) // 2, x0 // 2 : (x0 + side) // 2] = self._box_uv[1]
        stamp_luma(y, Stamp(frame_number, capture_time_ms))
        return _yuv.to_frame(buf, w, h)

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        slot = await self._pacer.next_slot()
        frame = self.render(self._frames_sent, media_time_s=slot / self._fps)
        frame.pts = round(slot * VIDEO_CLOCK_RATE / self._fps)
        frame.time_base = VIDEO_TIME_BASE
        self._frames_sent += 1
        return frame


class ToneAudioTrack(MediaStreamTrack):
    """A continuous-phase sine tone (s16), paced in real time; pts count samples.

    With a ``clock``, pts count samples since the clock's epoch (one timeline with every other
    track on that clock). With ``beep_every_s``, the tone is silent except during
    ``[k * beep_every_s, k * beep_every_s + beep_s)`` of media time, sample-exact from the
    pts: the audio half of the flash/beep sync mark (see ``PatternVideoTrack``).
    """

    kind = "audio"

    def __init__(
        self,
        *,
        frequency: float = 440.0,
        sample_rate: int = 48000,
        channels: int = 1,
        amplitude: float = 0.25,
        frame_ms: int = 20,
        clock: MediaClock | None = None,
        beep_every_s: float | None = None,
        beep_s: float = 0.1,
    ) -> None:
        if not 8000 <= sample_rate <= 192000:
            raise ValueError(f"sample_rate must be in [8000, 192000], got {sample_rate}")
        if not 0 < frequency < sample_rate / 2:
            raise ValueError(f"frequency must be in (0, {sample_rate / 2:g}), got {frequency}")
        if channels not in (1, 2):
            raise ValueError(f"channels must be 1 or 2, got {channels}")
        if not 0.0 <= amplitude <= 1.0:
            raise ValueError(f"amplitude must be in [0, 1], got {amplitude}")
        if frame_ms <= 0 or (sample_rate * frame_ms) % 1000:
            raise ValueError(
                f"frame_ms must be positive and give whole samples at {sample_rate} Hz, "
                f"got {frame_ms}"
            )
        if beep_every_s is not None and not 0 < beep_s < beep_every_s:
            raise ValueError(
                f"beep_s must be positive and shorter than beep_every_s, got {beep_s} "
                f"every {beep_every_s}"
            )
        super().__init__()
        self._frequency = float(frequency)
        self._sample_rate = sample_rate
        self._channels = channels
        self._layout = "mono" if channels == 1 else "stereo"
        self._amplitude = amplitude
        self._samples = sample_rate * frame_ms // 1000
        self._time_base = fractions.Fraction(1, sample_rate)
        self._clock = clock
        self._beep = None if beep_every_s is None else (beep_every_s, beep_s)
        self._pacer = Pacer(1000 / frame_ms, clock)
        self._frames_sent = 0

    @property
    def frames_sent(self) -> int:
        return self._frames_sent

    @property
    def sample_rate(self) -> int:
        return self._sample_rate

    @property
    def clock(self) -> MediaClock | None:
        return self._clock

    def render(self, first_sample: int) -> av.AudioFrame:
        """Build the frame starting at sample ``first_sample`` (no pacing, pts set)."""
        n = np.arange(first_sample, first_sample + self._samples, dtype=np.float64)
        cycles = np.mod(n * (self._frequency / self._sample_rate), 1.0)
        wave = np.round(np.sin(2 * np.pi * cycles) * (self._amplitude * 32767)).astype(np.int16)
        if self._beep is not None:
            every, length = (s * self._sample_rate for s in self._beep)
            wave[np.mod(n, every) >= length] = 0
        data = np.repeat(wave, self._channels).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(data, format="s16", layout=self._layout)
        frame.sample_rate = self._sample_rate
        frame.pts = first_sample
        frame.time_base = self._time_base
        return frame

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        slot = await self._pacer.next_slot()
        frame = self.render(slot * self._samples)
        self._frames_sent += 1
        return frame


class FileSource:
    """A media file as live tracks: decoded in a thread of its own, played at its own pace.

    The file is probed at construction (opened, and decoded up to the first frame of each
    stream), so a missing, unreadable or non-media file fails here with :class:`SourceError`,
    not later inside a peer connection. Construction is blocking file I/O; from async code
    prefer ``await FileSource.open(path)``, which runs it in a thread.

    ``.video`` and ``.audio`` (``None`` when the file has no such stream) deliver decoded
    frames at the file's own timestamps, paced by the wall clock from the first ``recv``;
    audio is s16 at 48 kHz (mono or stereo) in 20 ms frames, as from ``ToneAudioTrack``. With
    ``loop`` (the default) the file starts again at its end, and every pass continues the
    timeline: pts only increase and audio stays in step with video. With ``loop=False`` the
    tracks end after one pass (``recv`` raises ``MediaStreamError``, logged at INFO). A file
    that cannot be decoded any more ends both tracks with one logged error. Decoding runs at
    most 0.2 s ahead of playback and each track keeps a bounded number of frames (the oldest
    dropped), so a consumer that stops reading never grows memory; one that comes back late
    skips stale frames rather than bursting them. Stopping both tracks stops the decode
    thread; ``aclose`` also waits for it. See :mod:`media._filereader`.
    """

    def __init__(self, path: str | os.PathLike[str], *, loop: bool = True) -> None:
        self._path = Path(path)
        self._reader: FileReader | None = FileReader(probe(self._path), loop=loop)
        self._video = self._reader.video
        self._audio = self._reader.audio

    @classmethod
    async def open(cls, path: str | os.PathLike[str], *, loop: bool = True) -> FileSource:
        """Construct in a worker thread: probing a file is blocking I/O."""
        return await asyncio.to_thread(cls, path, loop=loop)

    @property
    def path(self) -> Path:
        return self._path

    @property
    def video(self) -> MediaStreamTrack | None:
        return self._video

    @property
    def audio(self) -> MediaStreamTrack | None:
        return self._audio

    async def __aenter__(self) -> FileSource:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop both tracks, then wait (off the loop) for the decode thread to close the file."""
        reader, self._reader = self._reader, None
        if reader is not None:
            await reader.aclose()
