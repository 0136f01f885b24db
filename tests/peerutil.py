"""Small waits on participants shared by the end-to-end tests."""

from __future__ import annotations

import asyncio

from peer import Participant, RemoteTrack


async def tracks_from(p: Participant, peer_id: str, kind: str, count: int) -> list[RemoteTrack]:
    """Wait until ``p`` has ``count`` live tracks of ``kind`` from ``peer_id`` (oldest first)."""
    async with asyncio.timeout(30):
        while True:
            found = [
                t
                for t in p.received_tracks
                if t.peer_id == peer_id and t.kind == kind and not t.ended
            ]
            if len(found) >= count:
                return found
            await asyncio.sleep(0.05)
