"""Two bots meet on a relay started in-process; one prints what it receives from the other.

Each received frame's stamp gives its frame number and capture time, so the receiver can print
the frame rate it sees and the glass-to-glass latency (capture → encode → network → decode).

Usage: python samples/local_call.py [--frames N]
"""

from __future__ import annotations

import argparse
import asyncio
import time

from media import PatternVideoTrack, ToneAudioTrack, read_stamp
from peer import Participant, ParticipantConfig
from signaling_server import ServerSettings, start_server


async def main(frames: int) -> None:
    async with start_server(ServerSettings(port=0)) as relay:
        sender_media = (PatternVideoTrack(label="sender"), ToneAudioTrack())
        sender = Participant(
            ParticipantConfig(room="sample", server_url=relay.ws_url, name="sender", receive=False),
            video=sender_media[0],
            audio=sender_media[1],
        )
        receiver = Participant(
            ParticipantConfig(room="sample", server_url=relay.ws_url, name="receiver")
        )
        async with receiver, sender:
            async for track in receiver.tracks():
                if track.kind != "video":
                    continue
                latencies, numbers, started = [], [], time.monotonic()
                while len(numbers) < frames:
                    frame = await track.recv()
                    stamp = await asyncio.to_thread(read_stamp, frame)
                    if stamp is not None:
                        numbers.append(stamp.frame_number)
                        latencies.append(time.time() * 1000 - stamp.capture_time_ms)
                elapsed = time.monotonic() - started
                print(
                    f"received {len(numbers)} stamped frames from {track.peer_name} "
                    f"(#{numbers[0]}..#{numbers[-1]}) at {len(numbers) / elapsed:.1f} fps, "
                    f"median latency {sorted(latencies)[len(latencies) // 2]:.0f} ms"
                )
                break
        for t in sender_media:
            t.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=90)
    asyncio.run(main(parser.parse_args().frames))
