"""ICE fails (aiortc has no ICE restart): the link is rebuilt and the same track resumes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import aioice.ice
import pytest
from aiortc.mediastreams import MediaStreamError

from media import PatternVideoTrack, read_stamp
from peer import Backoff, Participant, ParticipantConfig, RemoteTrack
from peer.impair import Impairment, impair
from signaling_server import RunningServer


async def _until(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


async def test_a_failed_connection_is_rebuilt_and_the_track_freezes_then_resumes(
    relay: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Consent to send expires after 3 unanswered checks ~0.2 s apart instead of 6 x 5 s, so
    # a total loss turns into ICE "failed" within about a second.
    monkeypatch.setattr(aioice.ice, "CONSENT_INTERVAL", 0.2)
    monkeypatch.setattr(aioice.ice, "CONSENT_FAILURES", 3)
    fast = Backoff(first_s=0.05, cap_s=0.5)
    video = PatternVideoTrack(width=160, height=120, fps=30)
    cfg = {"room": "r", "server_url": relay.ws_url, "reconnect": fast}
    async with (
        Participant(ParticipantConfig(name="pub", **cfg), video=video) as pub,  # type: ignore[arg-type]
        Participant(ParticipantConfig(name="sub", **cfg)) as sub,  # type: ignore[arg-type]
    ):
        await sub.wait_connected(1)
        tracks: list[RemoteTrack] = []

        async def collect() -> None:
            async for track in sub.tracks():
                tracks.append(track)

        collector = asyncio.create_task(collect())
        await _until(lambda: len(tracks) == 1)
        numbers: list[int] = []

        async def read() -> None:
            with contextlib.suppress(MediaStreamError):
                while True:
                    frame = await tracks[0].recv()
                    stamp = await asyncio.to_thread(read_stamp, frame)
                    if stamp is not None:
                        numbers.append(stamp.frame_number)

        reader = asyncio.create_task(read())
        await _until(lambda: len(numbers) >= 5)
        old = (pub.link(sub.peer_id), sub.link(pub.peer_id))
        assert old[0] is not None and old[1] is not None
        handles = [impair(old[0].pc, Impairment(loss=1.0)), impair(old[1].pc, Impairment(loss=1.0))]
        # Both sides see consent expire, drop the dead connection and build a new one (on new
        # sockets, so the impairment stays behind on the old ones).
        await _until(
            lambda: (
                pub.link(sub.peer_id) not in (None, old[0])
                and sub.link(pub.peer_id) not in (None, old[1])
            )
        )
        for handle in handles:
            handle.remove()
        before = len(numbers)
        await _until(lambda: len(numbers) >= before + 15)
        new = sub.link(pub.peer_id)
        assert new is not None and new.state == "connected"
        assert len(tracks) == 1 and not tracks[0].ended  # the same track, frozen then resumed
        assert numbers == sorted(numbers)
        reader.cancel()
        collector.cancel()
        await asyncio.gather(reader, collector, return_exceptions=True)
    video.stop()
