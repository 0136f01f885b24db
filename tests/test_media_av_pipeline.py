"""A/V sync through the whole recording pipeline: sources -> compositor + mixer -> recorder.

Two participants flash and beep every second on one ``MediaClock``; the compositor lays them
out, the mixer mixes them, and the recorder writes the file, all on that clock. In the file
every flash must sit within one frame of its beep. This is what `callbot record` relies on:
the compositor's output pts name when its content was captured (it composes half a slot after
the sources and stamps the slot) and the mixer's pts are shifted back by its buffering delay.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from media import AudioMixer, Compositor, MediaClock, PatternVideoTrack, Recorder, ToneAudioTrack

from .test_media_av_sync import BEEP_S, FPS, FRAME_S, PERIOD_S, _offsets, _until


async def _record(path: Path) -> list[float]:
    clock = MediaClock()
    videos = [
        PatternVideoTrack(width=320, height=240, fps=FPS, clock=clock, flash_every_s=PERIOD_S)
        for _ in range(2)
    ]
    tones = [ToneAudioTrack(clock=clock, beep_every_s=PERIOD_S, beep_s=BEEP_S) for _ in range(2)]
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
            await _until(lambda: recorder.duration_s >= 5.6)
    finally:
        await compositor.aclose()
        await mixer.aclose()
        for track in (*videos, *tones):
            track.stop()
    return await asyncio.to_thread(_offsets, path)


async def test_composite_and_mix_stay_in_sync_in_the_recording(tmp_path: Path) -> None:
    offsets = await _record(tmp_path / "pipeline.mkv")
    # The flash detector looks at the picture below the stamp band: both tiles flash at once,
    # so the canvas's mean luma jumps exactly when the participants' frames do.
    assert len(offsets) >= 3, offsets
    assert all(abs(o) <= FRAME_S for o in offsets), [round(o, 4) for o in offsets]
