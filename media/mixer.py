"""Audio mixer: many live audio tracks in, one limited 48 kHz stereo track out.

Each input is resampled to the output rate as it arrives (float32; mono inputs stay mono and
are spread to both channels at unity, stereo ones are averaged for a mono output, anything
wider is downmixed by FFmpeg) and buffered in a FIFO (at most ``MAX_BUFFER_MS``, oldest
samples dropped). The output track ticks every ``frame_ms`` in real time, sums what each
input has, and runs the sum through a limiter, so no sample reaches full scale and a single
input below the ceiling passes bit-exactly. An input with nothing to give adds silence; with
no inputs the output is exact zeros.

Timing. The FIFOs are timed by arrival, not by input pts. After a gap an input waits for
``2 * frame_ms`` of audio before it plays (jitter headroom), so a sound is mixed about
1.5 frames after it arrived (between 1 and 2 frames for inputs in ``frame_ms`` frames,
depending on their phase against the output). With a shared :class:`~media.clock.MediaClock`
the output pts are media time since the clock's epoch *minus that mean latency*, so a sound's
pts is within about half an input frame (+-10 ms at 20 ms frames) of when it reached the
mixer, and lines up with video stamped on the same clock. Jitter that grows a FIFO adds
latency on top (up to ``MAX_BUFFER_MS``); a FIFO whose low point stayed more than a frame
above the priming level for a whole ``_TRIM_WINDOW_MS`` of output is cut back to it, so such
an error lasts at most about two windows (one audible skip instead of lasting A/V drift after
a stall). Delay before the mixer (network, jitter buffer, decode) is not seen.

Levels. Each input's level is the RMS of the audio it contributed to the last
``LEVEL_WINDOW_MS`` of mix, in dBFS relative to a full-scale square wave (a full-scale sine
reads -3 dBFS), floored at ``LEVEL_FLOOR_DB`` for silence. Levels advance as the output is
read; nobody reading the output means frozen levels.

CPU. Resampling, mixing, limiting and level metering happen on the event loop on purpose:
at 4 stereo 48 kHz s16 inputs one 20 ms output frame costs ~85-95 us in all (inputs
converted as they arrive ~40 us, mix + limiter + levels + frame build ~45 us; measured on a
quiet moment of a 2-core VM, 2x that under heavy steal), under 0.5% of a core and far less
than a thread hop. That is ~1.4x v0's int16 sum with clipping in the same run (~1.6x while the
limiter is reducing gain): float conversion and the limiter's peak scan are the extra.
"""

from __future__ import annotations

import asyncio
import fractions
import logging
import math
from collections import deque

import av
import numpy as np
import numpy.typing as npt
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from . import _limiter
from ._limiter import CEILING_DBFS, Limiter
from ._pacing import Pacer
from ._tasks import OwnedTasks
from .clock import MediaClock
from .errors import ClosedError

__all__ = ["CEILING_DBFS", "LEVEL_FLOOR_DB", "LEVEL_WINDOW_MS", "MAX_BUFFER_MS", "AudioMixer"]

logger = logging.getLogger(__name__)

MAX_BUFFER_MS = 200
"""Audio buffered per input at most; older samples are dropped when a consumer lags."""

LEVEL_WINDOW_MS = 150
"""Span of recent mix over which each input's level (RMS) is measured."""

LEVEL_FLOOR_DB = _limiter.LEVEL_FLOOR_DB
"""The level reported for silence (and for an input that has not been mixed yet)."""

_TRIM_WINDOW_MS = 1000  # output span over which a FIFO's low point is watched
_S16_SCALE = 32768.0  # FFmpeg's s16 <-> float scale: s16 round-trips exactly through float32

_Samples = npt.NDArray[np.float32]

# Sample formats converted without FFmpeg when already at the output rate: float scale.
_DIRECT_SCALE = {"s16": np.float32(1 / 32768), "s16p": np.float32(1 / 32768)}
_DIRECT_SCALE |= {"flt": np.float32(1.0), "fltp": np.float32(1.0)}


class _Input:
    """One input: resampler, FIFO of (frames x 1 or x channels) float32 chunks, level meter."""

    __slots__ = (
        "buffered",
        "chunks",
        "dropped_samples",
        "energies",
        "fifo_low",
        "frames",
        "in_format",
        "label",
        "primed",
        "pulls",
        "resampler",
        "task",
        "track",
    )

    def __init__(self, track: MediaStreamTrack, label: str, level_frames: int) -> None:
        self.track = track
        self.label = label
        self.task: asyncio.Task[None] | None = None
        self.resampler: av.AudioResampler | None = None
        self.in_format: tuple[str, str, int] | None = None
        self.chunks: deque[_Samples] = deque()
        self.buffered = 0
        self.primed = False
        self.frames = 0
        self.dropped_samples = 0
        self.fifo_low = math.inf  # least audio buffered before a pull in this trim window
        self.pulls = 0
        # Energy (sum of squares, mean over channels) this input gave each recent output frame.
        self.energies: deque[float] = deque(maxlen=level_frames)

    def push(self, samples: _Samples, limit: int) -> None:
        self.chunks.append(samples)
        self.buffered += len(samples)
        if self.buffered > limit:
            self.drop(self.buffered - limit)

    def drop(self, count: int) -> None:
        """Discard the ``count`` oldest buffered samples."""
        while count > 0 and self.chunks:
            head = self.chunks[0]
            if len(head) <= count:
                self.chunks.popleft()
                taken = len(head)
            else:
                self.chunks[0] = head[count:]
                taken = count
            count -= taken
            self.buffered -= taken
            self.dropped_samples += taken

    def pull_into(self, out: _Samples, prime: int, trim_above: int, trim_window: int) -> None:
        """Add up to ``len(out)`` samples to ``out``; wait for ``prime`` samples after a gap.

        Priming gives a little jitter headroom so an input ticking at the same rate as the
        output does not alternate between a full frame and silence. Also records the energy
        mixed in (for :meth:`level`) and trims a FIFO that stays too full.
        """
        energy = 0.0
        if not self.primed and self.buffered >= prime:
            self.primed = True
        if self.primed:
            self._watch_latency(prime, trim_above, trim_window)
            need = len(out)
            pos = 0
            while pos < need and self.chunks:
                head = self.chunks[0]
                take = min(need - pos, len(head))
                part = head[:take]
                out[pos : pos + take] += part  # a mono chunk broadcasts over stereo
                flat = part.reshape(-1)
                energy += float(np.dot(flat, flat)) / part.shape[1]
                pos += take
                if take == len(head):
                    self.chunks.popleft()
                else:
                    self.chunks[0] = head[take:]
            self.buffered -= pos
            if pos < need:
                self.primed = False
                self.fifo_low, self.pulls = math.inf, 0
        self.energies.append(energy)

    def _watch_latency(self, prime: int, trim_above: int, trim_window: int) -> None:
        self.fifo_low = min(self.fifo_low, self.buffered)
        self.pulls += 1
        if self.pulls < trim_window:
            return
        if self.fifo_low > trim_above:
            excess = int(self.fifo_low) - prime
            logger.debug("mixer input %r: %d samples of lasting latency cut", self.label, excess)
            self.drop(excess)
        self.fifo_low, self.pulls = math.inf, 0

    def level(self, frame_samples: int) -> float:
        """RMS in dBFS over the frames mixed so far in the window (all of it once full)."""
        if not self.energies:
            return LEVEL_FLOOR_DB
        mean_square = sum(self.energies) / (len(self.energies) * frame_samples)
        if mean_square <= 10 ** (LEVEL_FLOOR_DB / 10):
            return LEVEL_FLOOR_DB
        return 10 * math.log10(mean_square)


class _MixTrack(MediaStreamTrack):
    kind = "audio"

    def __init__(self, owner: AudioMixer) -> None:
        super().__init__()
        self._owner = owner

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        return await self._owner._next_frame()


class AudioMixer:
    """Mixes live audio tracks into one limited s16 track. Inputs are borrowed, never stopped.

    Without a ``clock`` pts count samples from the first output frame; with one they are media
    time since its epoch (in 1/sample_rate), shifted back by the mean buffering latency (see
    the module docstring), strictly increasing and contiguous while the consumer keeps up.
    """

    def __init__(
        self,
        *,
        sample_rate: int = 48000,
        channels: int = 2,
        frame_ms: int = 20,
        clock: MediaClock | None = None,
    ) -> None:
        if not 8000 <= sample_rate <= 192000:
            raise ValueError(f"sample_rate must be in [8000, 192000], got {sample_rate}")
        if channels not in (1, 2):
            raise ValueError(f"channels must be 1 or 2, got {channels}")
        if frame_ms <= 0 or (sample_rate * frame_ms) % 1000:
            raise ValueError(f"frame_ms must give whole samples at {sample_rate} Hz: {frame_ms}")
        self._sample_rate = sample_rate
        self._channels = channels
        self._layout = "mono" if channels == 1 else "stereo"
        self._samples = sample_rate * frame_ms // 1000
        self._limit = sample_rate * MAX_BUFFER_MS // 1000
        self._prime = min(self._limit, 2 * self._samples)
        self._trim_above = self._prime + self._samples
        self._trim_window = max(1, round(_TRIM_WINDOW_MS / frame_ms))
        self._level_frames = max(1, round(LEVEL_WINDOW_MS / frame_ms))
        # Mean age of the audio mixed at a slot: the priming level less half an input frame.
        self._latency = 0 if clock is None else self._prime - self._samples // 2
        self._time_base = fractions.Fraction(1, sample_rate)
        self._inputs: dict[MediaStreamTrack, _Input] = {}
        self._readers = OwnedTasks("mixer input reader")
        self._pacer = Pacer(1000 / frame_ms, clock)
        self._limiter = Limiter(frame_ms, self._samples)
        self._closed = False
        self._output = _MixTrack(self)

    @property
    def output(self) -> MediaStreamTrack:
        """The mixed audio track (s16, ``frame_ms`` frames, pts in 1/sample_rate)."""
        return self._output

    @property
    def input_count(self) -> int:
        return len(self._inputs)

    @property
    def latency_samples(self) -> int:
        """How far output pts are shifted back to match arrival times (0 without a clock)."""
        return self._latency

    @property
    def gain_reduction_db(self) -> float:
        """The limiter's current gain reduction in dB (0.0 at unity, positive when limiting)."""
        return self._limiter.reduction_db

    def levels(self) -> dict[str, float]:
        """Each input's level over the last ``LEVEL_WINDOW_MS`` of mix, in dBFS, by label.

        Silence, and an input not mixed yet, reads ``LEVEL_FLOOR_DB`` (never ``-inf``).
        """
        return {inp.label: inp.level(self._samples) for inp in self._inputs.values()}

    def buffered_ms(self) -> dict[str, float]:
        """Per-input buffered audio in ms, by label (for monitoring and tests)."""
        return {inp.label: inp.buffered * 1000 / self._sample_rate for inp in self._inputs.values()}

    def add_track(self, track: MediaStreamTrack, *, label: str | None = None) -> None:
        """Mix ``track`` in under ``label`` (default: the track id); labels must be unique."""
        if self._closed:
            raise ClosedError("mixer is closed")
        if track.kind != "audio":
            raise ValueError(f"only audio tracks can be mixed, got kind {track.kind!r}")
        if track in self._inputs:
            raise ValueError(f"track {track.id} is already an input")
        label = track.id if label is None else label
        if any(inp.label == label for inp in self._inputs.values()):
            raise ValueError(f"label {label!r} is already used by another input")
        inp = _Input(track, label, self._level_frames)
        inp.task = self._readers.start(self._read(inp), name=f"mixer-input-{label}")
        self._inputs[track] = inp

    def remove_track(self, track: MediaStreamTrack) -> None:
        inp = self._inputs.pop(track, None)
        if inp is not None and inp.task is not None:
            inp.task.cancel()

    async def __aenter__(self) -> AudioMixer:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop the output and cancel and await every reader; safe to call more than once."""
        self._closed = True
        self._output.stop()
        self._inputs.clear()
        await self._readers.aclose()

    async def _read(self, inp: _Input) -> None:
        try:
            while True:
                frame = await inp.track.recv()
                if not isinstance(frame, av.AudioFrame):
                    raise TypeError(f"mixer input {inp.label!r} yielded {type(frame).__name__}")
                inp.frames += 1
                for samples in self._resample(inp, frame):
                    inp.push(samples, self._limit)
        except MediaStreamError:
            logger.debug("mixer input %r ended", inp.label)
        finally:
            if self._inputs.get(inp.track) is inp:
                del self._inputs[inp.track]

    def _resample(self, inp: _Input, frame: av.AudioFrame) -> list[_Samples]:
        """``frame`` at the output rate as float32 (frames x 1) or (frames x channels) arrays.

        FFmpeg spreads mono to stereo at -3 dB and sums stereo to mono at +3 dB; mono and
        stereo are mapped here instead, so levels are kept. Frames already at the output rate
        in s16/flt (packed or planar) skip FFmpeg: a numpy conversion is half the cost.
        """
        frame.pts = None  # the FIFO is timed by arrival; input timestamps play no part
        nb_channels = frame.layout.nb_channels
        fmt = frame.format
        key = (fmt.name, frame.layout.name, frame.sample_rate)
        if key != inp.in_format:  # first frame, or the input changed format mid-stream
            inp.in_format = key
            direct = frame.sample_rate == self._sample_rate and nb_channels <= 2
            if direct and fmt.name in _DIRECT_SCALE:
                inp.resampler = None
            else:
                layout = {1: "mono", 2: "stereo"}.get(nb_channels, self._layout)
                inp.resampler = av.AudioResampler(
                    format="flt", layout=layout, rate=self._sample_rate
                )
        chunks = []
        if inp.resampler is None:
            raw = frame.to_ndarray()
            data = np.empty((frame.samples, nb_channels), dtype=np.float32)
            view = raw.T if fmt.is_planar else raw.reshape(-1, nb_channels)
            np.multiply(view, _DIRECT_SCALE[fmt.name], out=data, casting="unsafe")
            chunks.append(data)
        else:
            for resampled in inp.resampler.resample(frame):
                width = resampled.layout.nb_channels
                chunks.append(
                    np.asarray(resampled.to_ndarray(), dtype=np.float32).reshape(-1, width)
                )
        if self._channels == 1:  # stereo into a mono mix: the average of both sides
            chunks = [c if c.shape[1] == 1 else (c[:, :1] + c[:, 1:]) * 0.5 for c in chunks]
        return chunks

    async def _next_frame(self) -> av.AudioFrame:
        if self._closed:
            raise MediaStreamError
        slot = await self._pacer.next_slot()
        while slot * self._samples < self._latency:  # on a clock: no pts before the epoch
            slot = await self._pacer.next_slot()
        if self._closed:
            raise MediaStreamError
        return self._render(slot)

    def _render(self, slot: int) -> av.AudioFrame:
        """Mix, limit and package output slot ``slot`` (all synchronous, on the loop)."""
        mix = np.zeros((self._samples, self._channels), dtype=np.float32)
        for inp in self._inputs.values():
            inp.pull_into(mix, self._prime, self._trim_above, self._trim_window)
        self._limiter.process(mix)
        mix *= _S16_SCALE
        np.rint(mix, out=mix)
        np.clip(mix, -32768, 32767, out=mix)  # a safety net: the limiter keeps well inside
        pcm = mix.astype(np.int16).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout=self._layout)
        frame.sample_rate = self._sample_rate
        frame.pts = slot * self._samples - self._latency
        frame.time_base = self._time_base
        return frame
