"""A bot you can talk to over the data channel (from the browser client's chat, for instance).

It joins ROOM with a tone only and answers every data-channel message: ``video`` makes it add
its test pattern mid-call (every peer renegotiates and gets a new video track), ``bye`` makes it
leave, anything else is echoed back as ``echo: MESSAGE``.

Usage: python samples/chat_bot.py SERVER_URL ROOM [SECONDS]
  e.g. python samples/chat_bot.py ws://127.0.0.1:8080/ws demo 300
It stops after SECONDS (default 60), or when told ``bye``.
"""

from __future__ import annotations

import asyncio
import sys

from media import PatternVideoTrack, ToneAudioTrack
from peer import CallbotError, Participant, ParticipantConfig


async def main(server_url: str, room: str, seconds: float) -> None:
    config = ParticipantConfig(room=room, server_url=server_url, name="chat-bot")
    tone, video = ToneAudioTrack(frequency=523.25), PatternVideoTrack(label="chat-bot")
    video_on = False
    deadline: asyncio.Timeout | None = None
    try:
        async with Participant(config, audio=tone) as me:
            print(f"chatting in {room!r} as {me.peer_id}", flush=True)
            async with asyncio.timeout(seconds) as deadline:
                async for message in me.data_messages():
                    text = message.data if isinstance(message.data, str) else "(binary)"
                    print(f"{message.peer_name}: {text}", flush=True)
                    if text == "video" and not video_on:
                        await me.add_track(video)
                        video_on = True
                        reply = "video on"
                    else:
                        reply = {"bye": "bye!", "video": "video is on already"}.get(
                            text, f"echo: {text}"
                        )
                    try:
                        await me.send_data(reply, to=message.peer_id)
                    except CallbotError as exc:  # that peer left, or its channel never opened
                        print(f"could not answer {message.peer_name}: {exc}", flush=True)
                    if text == "bye":
                        break
    except TimeoutError:
        if deadline is None or not deadline.expired():
            raise
    finally:
        tone.stop()
        video.stop()
    print("chat-bot left", flush=True)


if __name__ == "__main__":
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__)
    asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3]) if len(sys.argv) == 4 else 60))
