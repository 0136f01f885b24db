"""Join a room on a running relay as a silent recorder and record everyone else.

The Python version of ``callbot record ROOM -o FILE --layout speaker``: every remote video is
laid out with the active speaker large (chosen from the mixer's levels), every remote audio
mixed, and both written to a crash-safe file. One ``MediaClock`` stamps the canvas and the mix,
so the recorder keeps them in sync from their timestamps.

Usage: python samples/record_room.py SERVER_URL ROOM OUTPUT.mkv [SECONDS]
  e.g. python samples/record_room.py ws://127.0.0.1:8080/ws room1 room1.mkv 10
"""

from __future__ import annotations

import asyncio
import contextlib
import sys

from media import AudioMixer, Compositor, MediaClock, Recorder
from peer import Participant, ParticipantConfig


async def main(server_url: str, room: str, output: str, seconds: float) -> None:
    config = ParticipantConfig(room=room, server_url=server_url, name="recorder")
    clock = MediaClock()
    async with (
        Participant(config) as me,
        AudioMixer(clock=clock) as mixer,
        Compositor(layout="speaker", levels=mixer.levels, clock=clock) as canvas,
    ):
        recorder = Recorder(output, video=canvas.output, audio=mixer.output, clock=clock)
        await recorder.start()

        async def feed() -> None:
            async for track in me.tracks():
                # One label per participant: its tile and its level in the mix share it.
                label = f"{track.peer_name} {track.peer_id[-4:]}"
                if track.kind == "video":
                    canvas.add_track(track, label=label)
                else:
                    mixer.add_track(track, label=label)

        feeder = asyncio.create_task(feed())
        await asyncio.sleep(seconds)
        feeder.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await feeder
        info = await recorder.aclose()
        print(
            f"wrote {info.video_frames} video frames, {info.audio_frames} audio frames "
            f"({info.duration_s:.1f} s) to {info.path}"
        )


if __name__ == "__main__":
    if len(sys.argv) not in (4, 5):
        sys.exit(__doc__)
    asyncio.run(
        main(
            sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4] if len(sys.argv) == 5 else 10)
        )
    )
