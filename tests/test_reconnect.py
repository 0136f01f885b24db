"""Losing the relay: backoff schedule, connection state, reconnect with resume, media untouched."""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest
from aiortc.mediastreams import MediaStreamError

from media import PatternVideoTrack, read_stamp
from peer import (
    Backoff,
    Call,
    ConfigError,
    ConnectionState,
    LinkState,
    Mode,
    Participant,
    ParticipantConfig,
    RemoteTrack,
)
from signaling_server import ServerSettings, start_server
from signaling_server.protocol import CallStatus, EndReason


def test_backoff_doubles_from_100_ms_to_a_10_s_cap_with_full_jitter() -> None:
    backoff = Backoff()
    assert [backoff.ceiling(n) for n in range(1, 10)] == pytest.approx(
        [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 10.0, 10.0]
    )
    assert backoff.ceiling(10_000) == 10.0  # no overflow in a day-long outage
    rng = random.Random(7)
    for attempt in (1, 3, 8):
        delays = [backoff.delay(attempt, rng) for _ in range(2000)]
        ceiling = backoff.ceiling(attempt)
        assert all(0.0 <= d <= ceiling for d in delays)
        # Full jitter: spread over the whole range, not bunched at the ceiling.
        assert min(delays) < 0.05 * ceiling and max(delays) > 0.95 * ceiling
        assert sum(delays) / len(delays) == pytest.approx(ceiling / 2, rel=0.1)
    assert Backoff(jitter=False).delay(3) == pytest.approx(0.4)
    assert not Backoff().gives_up_after(10**6)  # unlimited by default
    assert Backoff(attempts=3).gives_up_after(3) and not Backoff(attempts=3).gives_up_after(2)
    for bad in (
        {"first_s": 0},
        {"factor": 0.5},
        {"cap_s": 0.01},
        {"attempts": 0},
        {"first_s": float("nan")},
    ):
        with pytest.raises(ConfigError):
            Backoff(**bad)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def _until(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


async def _watch(me: Participant, seen: list[ConnectionState]) -> None:
    async for state in me.connection_states():
        seen.append(state)


async def test_without_reconnect_the_participant_says_it_is_disconnected() -> None:
    port = _free_port()
    settings = ServerSettings(host="127.0.0.1", port=port)
    async with start_server(settings) as relay:
        me = Participant(ParticipantConfig(room="r", server_url=relay.ws_url, reconnect=None))
        await me.join()
    try:
        await _until(lambda: me.connection.state is LinkState.DISCONNECTED)
        assert me.connection.reason and "1001" in me.connection.reason
    finally:
        await me.aclose()
    assert me.connection.state is LinkState.CLOSED


async def test_a_relay_restart_keeps_media_and_peer_ids(tmp_path: Path) -> None:
    port = _free_port()
    settings = ServerSettings(host="127.0.0.1", port=port, db_path=str(tmp_path / "relay.db"))
    url = f"ws://127.0.0.1:{port}/ws"
    fast = Backoff(first_s=0.05, cap_s=0.5)
    video = PatternVideoTrack(width=160, height=120, fps=30)
    config = {"room": "r", "server_url": url, "reconnect": fast}
    states: list[ConnectionState] = []
    relay = start_server(settings)
    await relay.__aenter__()
    try:
        async with (
            Participant(ParticipantConfig(name="pub", **config), video=video) as pub,  # type: ignore[arg-type]
            Participant(ParticipantConfig(name="sub", **config)) as sub,  # type: ignore[arg-type]
        ):
            watcher = asyncio.create_task(_watch(sub, states))
            ids = (pub.peer_id, sub.peer_id)
            await sub.wait_connected(1)
            track: RemoteTrack | None = None
            async with asyncio.timeout(20):
                async for incoming in sub.tracks():
                    track = incoming
                    break
            assert track is not None
            numbers: list[int] = []

            async def read() -> None:
                assert track is not None
                with contextlib.suppress(MediaStreamError):  # the link closed: numbers stop
                    while True:
                        frame = await track.recv()
                        stamp = await asyncio.to_thread(read_stamp, frame)
                        if stamp is not None:
                            numbers.append(stamp.frame_number)

            reader = asyncio.create_task(read())
            await _until(lambda: len(numbers) >= 5)

            await relay.__aexit__(None, None, None)  # the relay goes away (1001 to everyone)
            await _until(lambda: not sub.connection.connected and not pub.connection.connected)
            during = len(numbers)
            await _until(lambda: len(numbers) >= during + 15)  # media does not need the relay
            assert sub.connection.state in (LinkState.DISCONNECTED, LinkState.RECONNECTING)

            relay = start_server(settings)
            await relay.__aenter__()
            loop = asyncio.get_running_loop()
            back_at = loop.time()
            await _until(lambda: sub.connection.connected and pub.connection.connected, 10)
            assert loop.time() - back_at <= 4.0
            assert (pub.peer_id, sub.peer_id) == ids  # resumed, not new peers
            assert list(sub.peers) == [pub.peer_id] and list(pub.peers) == [sub.peer_id]
            before = len(numbers)
            await _until(lambda: len(numbers) >= before + 10)
            assert numbers == sorted(numbers)  # the one link carried on throughout
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
        await asyncio.wait_for(watcher, 10)
    finally:
        await relay.__aexit__(None, None, None)
        video.stop()
    kinds = [s.state for s in states]
    assert kinds[0] is LinkState.CONNECTED and kinds[-1] is LinkState.CLOSED
    assert LinkState.DISCONNECTED in kinds and LinkState.RECONNECTING in kinds
    assert kinds.index(LinkState.DISCONNECTED) < kinds.index(LinkState.RECONNECTING)
    attempts = [s.attempt for s in states if s.state is LinkState.RECONNECTING]
    assert attempts == list(range(1, len(attempts) + 1))


async def _drop_socket(me: Participant) -> None:
    """A transport failure as the relay sees it: our socket closes without a ``leave``."""
    ws = me._signaling._ws
    assert ws is not None
    await ws.close()


async def test_a_blip_within_the_grace_resumes_without_churn() -> None:
    settings = ServerSettings(host="127.0.0.1", port=0, resume_grace_s=5.0)
    async with start_server(settings) as relay:
        fast = Backoff(first_s=0.05, cap_s=0.2)
        cfg = {"room": "r", "server_url": relay.ws_url, "reconnect": fast}
        async with (
            Participant(ParticipantConfig(name="a", **cfg)) as a,  # type: ignore[arg-type]
            Participant(ParticipantConfig(name="b", **cfg)) as b,  # type: ignore[arg-type]
        ):
            await _until(lambda: list(a.peers) == [b.peer_id])
            seen: list[ConnectionState] = []
            watcher = asyncio.create_task(_watch(b, seen))
            b_id = b.peer_id
            await _drop_socket(b)
            await _until(lambda: any(s.state is LinkState.RECONNECTING for s in seen))
            await _until(lambda: b.connection.connected and len(seen) >= 4)
            assert b.peer_id == b_id
            # A never saw B leave: the relay kept B's place through the blip.
            await asyncio.sleep(0.2)
            assert list(a.peers) == [b_id] and list(b.peers) == [a.peer_id]
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)


async def test_a_session_taken_over_elsewhere_stops_reconnecting() -> None:
    settings = ServerSettings(host="127.0.0.1", port=0, resume_grace_s=5.0)
    async with start_server(settings) as relay:
        cfg = ParticipantConfig(room="r", server_url=relay.ws_url, name="twin")
        async with Participant(cfg) as first, aiohttp.ClientSession() as session:
            token = first._welcome.resume_token if first._welcome else None
            assert token is not None
            # Another connection presents our token: the relay hands it the session.
            async with session.ws_connect(relay.ws_url) as ws:
                await ws.send_json({"type": "join", "room": "r", "resume_token": token})
                welcome = await ws.receive_json(timeout=10)
                assert welcome["type"] == "welcome" and welcome["peer_id"] == first.peer_id
                await _until(lambda: first.connection.state is LinkState.CLOSED)
                assert "took over" in (first.connection.reason or "")


async def test_a_call_that_ended_while_away_is_seen_ended_after_resuming() -> None:
    settings = ServerSettings(host="127.0.0.1", port=0, resume_grace_s=10.0)
    async with start_server(settings) as relay:
        fast = Backoff(first_s=0.5, cap_s=0.5, jitter=False)  # away long enough to miss it
        cfg = {"room": "r", "server_url": relay.ws_url, "reconnect": fast}
        async with (
            Participant(ParticipantConfig(name="a", **cfg)) as a,  # type: ignore[arg-type]
            Participant(ParticipantConfig(name="b", **cfg)) as b,  # type: ignore[arg-type]
        ):
            await _until(lambda: list(a.peers) == [b.peer_id])
            call = await a.start_call([b.peer_id])
            await _until(lambda: call.call_id in b.calls)
            await b.calls[call.call_id].accept()
            await _until(lambda: b.calls[call.call_id].status.value == "active")
            await _drop_socket(b)
            await _until(lambda: not b.connection.connected)
            await call.end()  # b is away: its call_state is never delivered
            await _until(lambda: b.connection.connected)
            assert b.calls[call.call_id].status.value == "ended"
            assert b.calls[call.call_id].info.reason == call.info.reason


async def _ringing(me: Participant) -> Call:
    async with asyncio.timeout(20):
        async for call in me.incoming_calls():
            return call
    raise AssertionError("no incoming call")


@pytest.mark.parametrize("secret", [None, "a-secret-of-sixteen-chars"], ids=["new-ids", "same-ids"])
async def test_calls_a_relay_forgot_in_a_restart_end_relay_restart(secret: str | None) -> None:
    """No --db: the restarted relay knows nothing of the call. Without a secret the bots come
    back as new peers; with one they keep their ids, but the call is gone either way. Their
    mirrors must end (no call_state ever will), so waits return and the bots can be called."""
    port = _free_port()
    settings = ServerSettings(host="127.0.0.1", port=port, secret=secret)
    fast = Backoff(first_s=0.05, cap_s=0.3)
    cfg = {"room": "r", "server_url": f"ws://127.0.0.1:{port}/ws", "reconnect": fast,
           "mode": Mode.CALL}  # fmt: skip
    video = PatternVideoTrack(width=160, height=120, fps=15)
    relay = start_server(settings)
    await relay.__aenter__()
    try:
        async with (
            Participant(ParticipantConfig(name="boss", **cfg), video=video) as boss,  # type: ignore[arg-type]
            Participant(ParticipantConfig(name="desk", **cfg)) as desk,  # type: ignore[arg-type]
        ):
            await boss.wait_for_peers(["desk"])
            call = await boss.start_call([desk.peer_id])
            answered = await _ringing(desk)
            await answered.accept()
            await desk.wait_connected(1)  # call mode: media only once in the call
            hangups = [asyncio.create_task(c.wait_alone_or_ended()) for c in (call, answered)]
            ids = (boss.peer_id, desk.peer_id)
            await relay.__aexit__(None, None, None)
            relay = start_server(settings)
            await relay.__aenter__()
            for hangup in hangups:
                info = await asyncio.wait_for(hangup, 30)  # no phantom call
                assert (info.status, info.reason) == (CallStatus.ENDED, EndReason.RELAY_RESTART)
                assert info.duration_s is not None and info.duration_s > 0
            assert boss.active_call is None and desk.active_call is None
            assert ((boss.peer_id, desk.peer_id) == ids) is (secret is not None)
            await _until(lambda: boss.link(desk.peer_id) is None)  # its media ended with it
            # Nobody is stuck in the old call: a new one rings and is answered.
            await boss.wait_for_peers([desk.peer_id])
            again = await boss.start_call([desk.peer_id])
            await (await _ringing(desk)).accept()
            await again.wait_for(CallStatus.ACTIVE)
            await desk.wait_connected(1)
    finally:
        await relay.__aexit__(None, None, None)
        video.stop()


async def test_a_call_and_its_media_survive_a_relay_restart_with_its_database(
    tmp_path: Path,
) -> None:
    port = _free_port()
    settings = ServerSettings(host="127.0.0.1", port=port, db_path=str(tmp_path / "relay.db"))
    fast = Backoff(first_s=0.05, cap_s=0.3)
    cfg = {"room": "r", "server_url": f"ws://127.0.0.1:{port}/ws", "reconnect": fast,
           "mode": Mode.CALL}  # fmt: skip
    video = PatternVideoTrack(width=160, height=120, fps=30)
    relay = start_server(settings)
    await relay.__aenter__()
    try:
        async with (
            Participant(ParticipantConfig(name="boss", **cfg), video=video) as boss,  # type: ignore[arg-type]
            Participant(ParticipantConfig(name="desk", **cfg)) as desk,  # type: ignore[arg-type]
        ):
            await boss.wait_for_peers(["desk"])
            call = await boss.start_call([desk.peer_id])
            answered = await _ringing(desk)
            await answered.accept()
            track: RemoteTrack = await asyncio.wait_for(anext(aiter(desk.tracks())), 20)
            numbers: list[int] = []

            async def read() -> None:
                with contextlib.suppress(MediaStreamError):
                    while True:
                        stamp = await asyncio.to_thread(read_stamp, await track.recv())
                        if stamp is not None:
                            numbers.append(stamp.frame_number)

            reader = asyncio.create_task(read())
            await _until(lambda: len(numbers) >= 5)
            ids = (boss.peer_id, desk.peer_id)
            await relay.__aexit__(None, None, None)
            await _until(lambda: not desk.connection.connected)
            during = len(numbers)
            await _until(lambda: len(numbers) >= during + 10)  # media does not need the relay
            relay = start_server(settings)
            await relay.__aenter__()
            await _until(lambda: boss.connection.connected and desk.connection.connected)
            assert (boss.peer_id, desk.peer_id) == ids
            after = len(numbers)
            await _until(lambda: len(numbers) >= after + 10)
            # The call never ended: not on either side, not on the relay.
            assert call.status is CallStatus.ACTIVE and answered.status is CallStatus.ACTIVE
            assert desk.link(boss.peer_id) is not None and numbers == sorted(numbers)
            # It ends as calls do: boss hangs up, desk is alone and leaves: last_left.
            desk_alone = asyncio.create_task(answered.wait_alone_or_ended())
            await call.leave()
            assert (await asyncio.wait_for(desk_alone, 20)).participants == [desk.peer_id]
            await answered.leave()
            info = await call.wait_ended()
            assert info.reason is EndReason.LAST_LEFT
            assert info.answered_at is not None and info.duration_s is not None
            assert info.ended_at is not None and info.ended_at >= time.time() - 30
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
    finally:
        await relay.__aexit__(None, None, None)
        video.stop()


async def test_a_call_resync_never_overwrites_newer_live_call_state(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The roster pull re-reads calls while live call_state keeps arriving: a REST snapshot
    taken before a live update must not put the call back where the snapshot saw it."""
    async with start_server(ServerSettings(host="127.0.0.1", port=0)) as relay:
        cfg = {"room": "r", "server_url": relay.ws_url}
        async with (
            Participant(ParticipantConfig(name="a", **cfg)) as a,  # type: ignore[arg-type]
            Participant(ParticipantConfig(name="b", **cfg)) as b,  # type: ignore[arg-type]
        ):
            await _until(lambda: list(a.peers) == [b.peer_id])
            call = await a.start_call([b.peer_id])
            await _until(lambda: call.call_id in b.calls)
            read_json = Participant._read_json

            async def stale(session: aiohttp.ClientSession, url: str, key: str) -> object:
                snapshot = await read_json(session, url, key)  # the call still ringing
                await b.calls[call.call_id].accept()
                await _until(lambda: call.status is CallStatus.ACTIVE)  # live, at a
                return snapshot

            monkeypatch.setattr(Participant, "_read_json", staticmethod(stale))
            await a._resync_calls()
            assert call.status is CallStatus.ACTIVE
            assert sorted(call.info.participants) == sorted([a.peer_id, b.peer_id])
