"""A/V sync through the whole recording pipeline: sources -> compositor + mixer -> recorder.

Two participants on one ``MediaClock``: the first flashes and beeps every second, the second
sends a plain pattern and a quiet steady tone (so there really are two tiles and two inputs to
mix). The compositor lays them out, the mixer mixes them, the recorder writes the file, all on
that clock. In the file every flash must sit within one frame of its beep. This is what
`callbot record` relies on: the compositor's output pts name when its content was captured (it
composes half a slot after the sources and stamps the slot) and the mixer's pts are shifted
back by its buffering delay.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import av

from media import AudioMixer, Compositor, MediaClock, PatternVideoTrack, Recorder, ToneAudioTrack

from .test_media_av_sync import BEEP_S, FPS, FRAME_S, PERIOD_S, _pair_with_beeps, _until


def _flashes(path: Path) -> list[float]:
    """Times of composite frames in which the first tile's picture (below the stamp) is white."""
    times = []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            tile = frame.to_ndarray()[60 : frame.height, :320]
            if tile.mean() > 200:
                times.append(float(frame.time or 0.0))
    return times


def _offsets(path: Path) -> list[float]:
    """Audio minus video time for every flash whose beep is whole (a flash whose beep a
    starved mixer spoiled has no pair, rather than pairing with the next one a period away)."""
    return _pair_with_beeps(_flashes(path), path)


async def _record(path: Path) -> list[float]:
    clock = MediaClock()
    videos = [
        PatternVideoTrack(width=320, height=240, fps=FPS, clock=clock, flash_every_s=PERIOD_S),
        PatternVideoTrack(width=320, height=240, fps=FPS, clock=clock, seed=3),
    ]
    tones = [
        ToneAudioTrack(clock=clock, beep_every_s=PERIOD_S, beep_s=BEEP_S),
        ToneAudioTrack(clock=clock, frequency=200, amplitude=0.01),
    ]
    mixer = AudioMixer(clock=clock)
    compositor = Compositor(
        width=640, height=240, fps=FPS, clock=clock, layout="grid", levels=mixer.levels
    )
    for i, (video, tone) in enumerate(zip(videos, tones, strict=True)):
        compositor.add_track(video, label=f"p{i}")
        mixer.add_track(tone, label=f"p{i}")
    recorder = Recorder(path, video=compositor.output, audio=mixer.output, fps=FPS, clock=clock)
    try:
        async with recorder:
            await _until(lambda: recorder.duration_s >= 7.6)
    finally:
        await compositor.aclose()
        await mixer.aclose()
        for track in (*videos, *tones):
            track.stop()
    return await asyncio.to_thread(_offsets, path)


async def test_composite_and_mix_stay_in_sync_in_the_recording(tmp_path: Path) -> None:
    offsets = await _record(tmp_path / "pipeline.mkv")
    # Seven flash/beep pairs recorded; a starved source or mixer may spoil a few, three must
    # be left.
    assert len(offsets) >= 3, offsets
    assert all(abs(o) <= FRAME_S for o in offsets), [round(o, 4) for o in offsets]
