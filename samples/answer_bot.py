"""A bot that answers every call it is rung for and records each one to its own file.

It joins in call mode, so it has media only while it is in a call; each call's composite (every
other participant, aspect-fit on a grid, audio mixed) goes to CALL_ID.mkv in OUTPUT_DIR. When
everyone else has left, it leaves too, so the call ends and the next one can be answered.

Usage: python samples/answer_bot.py SERVER_URL ROOM OUTPUT_DIR [SECONDS] [MAX_CALLS]
  e.g. python samples/answer_bot.py ws://127.0.0.1:8080/ws office recordings 60
It stops after SECONDS (default 60) or once it has answered MAX_CALLS calls (default: no limit).
A call that rang while it was busy and ended before it got to it (the caller gave up) is skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from pathlib import Path

from media import AudioMixer, Compositor, PatternVideoTrack, Recorder
from peer import Call, Mode, Participant, ParticipantConfig, ServerError
from signaling_server.protocol import CallStatus


async def record_call(me: Participant, call: Call, output: Path) -> None:
    async with Compositor(width=1280, height=720) as canvas, AudioMixer() as mixer:
        recorder = Recorder(output, video=canvas.output, audio=mixer.output)

        async def feed() -> None:
            async for track in me.tracks():
                if track.kind == "video":
                    canvas.add_track(track, label=track.peer_name)
                else:
                    mixer.add_track(track)

        feeder: asyncio.Task[None] | None = None
        try:
            await recorder.start()  # inside: a start cancelled midway still needs aclose
            feeder = asyncio.create_task(feed())
            if (await call.wait_alone_or_ended()).status is not CallStatus.ENDED:
                await call.leave()  # the others hung up: so do we, which ends it last_left
        finally:
            if feeder is not None:
                feeder.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await feeder
            info = await recorder.aclose()
            print(f"call {call.call_id} ended ({call.reason}): {info.video_frames} frames "
                  f"to {info.path}", flush=True)  # fmt: skip


async def main(
    server_url: str, room: str, out_dir: Path, seconds: float, max_calls: int | None
) -> None:
    config = ParticipantConfig(room=room, server_url=server_url, name="answer-bot", mode=Mode.CALL)
    video = PatternVideoTrack(label="answer-bot")
    async with Participant(config, video=video) as me:
        print(f"waiting for calls as {me.peer_id}", flush=True)

        async def answer() -> None:
            answered = 0
            async for call in me.incoming_calls():
                # It may have rung while we were in another call, and ended since.
                if call.status is CallStatus.ENDED:
                    print(f"missed call {call.call_id} ({call.reason})", flush=True)
                    continue
                try:
                    await call.accept()
                except ServerError as exc:  # it ended just now (invalid_transition)
                    print(f"missed call {call.call_id} ({exc.code})", flush=True)
                    continue
                print(f"answered call {call.call_id} from {call.started_by}", flush=True)
                await record_call(me, call, out_dir / f"{call.call_id}.mkv")
                answered += 1
                if answered == max_calls:
                    return

        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(answer(), seconds)
    video.stop()


if __name__ == "__main__":
    if len(sys.argv) not in (4, 5, 6):
        sys.exit(__doc__)
    seconds = float(sys.argv[4]) if len(sys.argv) >= 5 else 60.0
    max_calls = int(sys.argv[5]) if len(sys.argv) == 6 else None
    Path(sys.argv[3]).mkdir(parents=True, exist_ok=True)
    asyncio.run(main(sys.argv[1], sys.argv[2], Path(sys.argv[3]), seconds, max_calls))
