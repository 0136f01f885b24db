"""A/V sync of recordings, measured the way a viewer would notice it: a flash and a beep.

A pattern that flashes white and a tone that beeps, every second on one ``MediaClock``, are
recorded; the file is decoded and each flash's video time is paired with the nearest beep
onset. On a shared clock the recorder places frames by their timestamps, so the pairs line up
within one frame even when one track is delivered 200 ms late. The same late track recorded
without the clock (arrival anchoring) comes out ~200 ms off: the measurement can fail.

A pipeline variant (sources -> compositor/mixer on the clock -> recorder) belongs with the
compositor and mixer tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import math
import time
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from media import PatternVideoTrack, Recorder, ToneAudioTrack
from media.clock import MediaClock

FPS = 30
FRAME_S = 1 / FPS
PERIOD_S = 1.0
BEEP_S = 0.1
DELAY_S = 0.2
AUDIO_RATE = 48000
AUDIO_SAMPLES = 960  # 20 ms frames


class _Steady(MediaStreamTrack):
    """A source's frames on the clock's grid, never skipping a slot.

    The sources skip the slots a starved loop missed (a gap, as a live call would show), and
    a skipped flash frame or a beep that lost a piece leaves nothing to pair. Here a stall only
    delays frames, which then come in a burst with their own timestamps: what this test
    measures (where the recorder places them) is unchanged, however loaded the machine.
    """

    def __init__(self, source: PatternVideoTrack | ToneAudioTrack, clock: MediaClock) -> None:
        super().__init__()
        self.kind = source.kind
        self._source = source
        self._clock = clock
        self._rate = FPS if isinstance(source, PatternVideoTrack) else AUDIO_RATE / AUDIO_SAMPLES
        self._slot: int | None = None

    async def recv(self) -> av.VideoFrame | av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        elapsed = time.monotonic() - self._clock.epoch
        slot = math.ceil(elapsed * self._rate) if self._slot is None else self._slot + 1
        self._slot = slot
        await asyncio.sleep(max(0.0, slot / self._rate - elapsed))
        if isinstance(self._source, ToneAudioTrack):
            return self._source.render(slot * AUDIO_SAMPLES)
        frame = self._source.render(slot, media_time_s=slot / FPS)
        frame.pts = slot * (90000 // FPS)
        frame.time_base = fractions.Fraction(1, 90000)
        return frame


class _Delayed(MediaStreamTrack):
    """Hands out another track's frames, unchanged, ``delay`` seconds after they were made.

    An owned pump task keeps reading the inner track on time (so its pacer never skips), and
    ``recv`` releases each frame once it is old enough: a slow stage in a pipeline.
    """

    def __init__(self, inner: MediaStreamTrack, delay: float) -> None:
        super().__init__()
        self.kind = inner.kind
        self._inner = inner
        self._delay = delay
        self._queue: asyncio.Queue[tuple[float, av.VideoFrame | av.AudioFrame]] = asyncio.Queue()
        self._pump_task: asyncio.Task[None] | None = None

    async def _pump(self) -> None:
        while True:
            frame = await self._inner.recv()
            assert isinstance(frame, av.VideoFrame | av.AudioFrame)
            self._queue.put_nowait((time.monotonic() + self._delay, frame))

    async def recv(self) -> av.VideoFrame | av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._pump_task is None:
            self._pump_task = asyncio.create_task(self._pump(), name="delayed-pump")
        due, frame = await self._queue.get()
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        return frame

    async def aclose(self) -> None:
        self.stop()
        self._inner.stop()
        if self._pump_task is not None:
            self._pump_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, MediaStreamError):
                await self._pump_task


def _flash_times(path: Path) -> list[float]:
    """Times of the frames whose picture (below the stamp band) is white."""
    times = []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            luma = frame.to_ndarray()[: frame.height]
            if luma[frame.height // 4 :].mean() > 200:
                times.append(float(frame.time or 0.0))
    return times


def _beeps(path: Path) -> list[tuple[float, float]]:
    """(onset time, length) of each beep: where the envelope rises after a silence, and how
    long it stays up (gaps within a beep do not split it)."""
    chunks = []
    start: float | None = None
    with av.open(str(path)) as container:
        for frame in container.decode(audio=0):
            if start is None:
                start = float(frame.time or 0.0)
            data = frame.to_ndarray().astype(np.float64)
            chunks.append(
                data[0] if frame.format.is_planar else data[0, :: frame.layout.nb_channels]
            )
    assert start is not None and chunks, f"no audio in {path}"
    samples = np.concatenate(chunks)
    loud = np.flatnonzero(np.abs(samples) > 0.3 * np.abs(samples).max())
    new = np.concatenate([[True], np.diff(loud) > 0.5 * PERIOD_S * 48000])
    firsts = loud[new]
    lasts = loud[np.concatenate([np.flatnonzero(new)[1:] - 1, [len(loud) - 1]])]
    return [(start + a / 48000, (b - a) / 48000) for a, b in zip(firsts, lasts, strict=True)]


def _offsets(path: Path) -> list[float]:
    """Audio minus video time for every flash (the beep nearest to it).

    Only whole beeps count: a starved source skips late slots (a gap in pts, filled with
    silence in the file), and a beep that lost its first frame starts late at the source
    already. Such a beep is short, so it is left out; a sync error shifts a whole beep.
    """
    return _pair_with_beeps(_flash_times(path), path)


def _pair_with_beeps(flashes: list[float], path: Path) -> list[float]:
    """Audio minus video time for each flash and the whole beep within half a period of it."""
    beeps = [onset for onset, length in _beeps(path) if abs(length - BEEP_S) < 0.01]
    offsets = []
    for flash in flashes:
        if flash < PERIOD_S / 2:  # might pair with a beep the recording's start cut into
            continue
        offset = min((a - flash for a in beeps), key=abs, default=PERIOD_S)
        if abs(offset) < PERIOD_S / 2:  # else its beep was left out: no pair
            offsets.append(offset)
    return offsets


async def _until(predicate: Callable[[], bool], timeout: float = 90.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


async def _record(path: Path, *, delayed: str | None, shared_clock: bool) -> list[float]:
    """Record flash + beep (one of them delivered late) for ~5 s; the A/V offsets in the file."""
    clock = MediaClock()
    video = _Steady(
        PatternVideoTrack(width=320, height=240, fps=FPS, clock=clock, flash_every_s=PERIOD_S),
        clock,
    )
    audio = _Steady(ToneAudioTrack(clock=clock, beep_every_s=PERIOD_S, beep_s=BEEP_S), clock)
    tracks: dict[str, MediaStreamTrack] = {"video": video, "audio": audio}
    wrapper = None
    if delayed is not None:
        wrapper = _Delayed(tracks[delayed], DELAY_S)
        tracks[delayed] = wrapper
    recorder = Recorder(
        path,
        video=tracks["video"],
        audio=tracks["audio"],
        fps=FPS,
        clock=clock if shared_clock else None,
    )
    try:
        async with recorder:
            # Flashes at 1, 2, 3, 4 and 5 s of media time (however slow the machine is).
            await _until(lambda: recorder.duration_s >= 5.6)
    finally:
        if wrapper is not None:
            await wrapper.aclose()
        video.stop()
        audio.stop()
    return await asyncio.to_thread(_offsets, path)


# (file, delayed track, shared clock): recorded side by side to keep the suite quick.
VARIANTS = [
    ("on-time.mkv", None, True),
    ("late-video.mkv", "video", True),
    ("late-audio.mkv", "audio", True),
    ("late-video.mp4", "video", True),  # fragmented MP4 (H.264 + AAC)
    ("late-video-arrival.mkv", "video", False),
    ("late-audio-arrival.mkv", "audio", False),
]


async def test_flash_and_beep_line_up_on_a_shared_clock(tmp_path: Path) -> None:
    results = await asyncio.gather(
        *(_record(tmp_path / name, delayed=d, shared_clock=c) for name, d, c in VARIANTS)
    )
    offsets = {
        name: [round(o, 4) for o in r] for (name, _, _), r in zip(VARIANTS, results, strict=True)
    }
    for (name, delayed, shared_clock), found in zip(VARIANTS, results, strict=True):
        # Five flashes; the recorder's queue drops frames only if its writer falls far behind.
        assert len(found) >= 3, offsets
        if shared_clock:
            # Placed by timestamps: within one frame, whichever track came late.
            assert all(abs(o) <= FRAME_S for o in found), (name, offsets)
        elif delayed == "video":
            # Arrival anchoring records a late track late (the measurement can fail): the
            # beep comes ~200 ms before its flash, more if the loop was slow to deliver.
            assert all(o < -DELAY_S / 2 for o in found), (name, offsets)
        else:
            assert all(o > DELAY_S / 2 for o in found), (name, offsets)
