"""Calls between real participants: ringing, answering, and media only among active participants."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from media import PatternVideoTrack, read_stamp
from peer import (
    Call,
    CallbotError,
    CallEndedError,
    Mode,
    Participant,
    ParticipantConfig,
    RemoteTrack,
    ServerError,
    WaitTimeout,
)
from signaling_server import RunningServer
from signaling_server.protocol import CallStatus, EndReason, ErrorCode


def config(relay: RunningServer, name: str, **kw: object) -> ParticipantConfig:
    return ParticipantConfig(
        room="calls",
        server_url=relay.ws_url,
        name=name,
        mode=Mode.CALL,
        **kw,  # type: ignore[arg-type]
    )


@pytest.fixture
async def trio(relay: RunningServer) -> AsyncIterator[list[Participant]]:
    media = [PatternVideoTrack(width=192, height=144, fps=15, seed=i) for i in range(3)]
    people = [
        Participant(config(relay, name), video=video)
        for name, video in zip(("ann", "ben", "cat"), media, strict=True)
    ]
    try:
        for p in people:
            await p.join()
        await people[0].wait_for_peers(count=2)
        yield people
    finally:
        for p in people:
            await p.aclose()
        for m in media:
            m.stop()


async def ring(p: Participant) -> Call:
    async with asyncio.timeout(10):
        async for call in p.incoming_calls():
            return call
    raise AssertionError("no incoming call")


async def video_from(p: Participant, tracks: dict[str, RemoteTrack], peer_id: str) -> RemoteTrack:
    """The live video track ``p`` receives from ``peer_id`` (remembered in ``tracks``)."""
    async with asyncio.timeout(20):
        while peer_id not in tracks or tracks[peer_id].ended:
            for track in p.received_tracks:
                if track.kind == "video" and track.peer_id == peer_id and not track.ended:
                    tracks[peer_id] = track
            await asyncio.sleep(0.05)
    return tracks[peer_id]


async def stamps(track: RemoteTrack, n: int) -> list[int]:
    numbers: list[int] = []
    async with asyncio.timeout(20):
        while len(numbers) < n:
            stamp = await asyncio.to_thread(read_stamp, await track.recv())
            if stamp is not None:
                numbers.append(stamp.frame_number)
    return numbers


async def test_three_party_call_is_a_mesh_until_the_last_leaves(trio: list[Participant]) -> None:
    ann, ben, cat = trio
    # Call mode: no media before a call is active.
    await asyncio.sleep(0.3)
    assert all(not p.received_tracks for p in trio)

    call = await ann.start_call()  # everyone else in the room
    assert call.status is CallStatus.RINGING
    assert sorted(call.info.targets) == sorted([ben.peer_id, cat.peer_id])
    for p in (ben, cat):
        invite = await ring(p)
        assert invite.call_id == call.call_id and invite.incoming
        await invite.accept()
    await call.wait_for(CallStatus.ACTIVE)

    received: dict[str, dict[str, RemoteTrack]] = {p.peer_id: {} for p in trio}
    for me in trio:
        for other in trio:
            if other is not me:
                track = await video_from(me, received[me.peer_id], other.peer_id)
                numbers = await stamps(track, 10)
                assert numbers == sorted(numbers), (me.config.name, other.config.name)

    # cat leaves: its tracks end, ann and ben keep receiving each other.
    cat_call = cat.calls[call.call_id]
    await cat_call.leave()
    async with asyncio.timeout(10):
        while not received[ann.peer_id][cat.peer_id].ended:
            await asyncio.sleep(0.05)
    assert call.status is CallStatus.ACTIVE and cat.peer_id not in call.participants
    assert await stamps(received[ann.peer_id][ben.peer_id], 5)
    assert await stamps(received[ben.peer_id][ann.peer_id], 5)
    assert cat.link(ann.peer_id) is None and cat.link(ben.peer_id) is None

    await ben.calls[call.call_id].leave()
    await call.leave()
    info = await call.wait_ended()
    assert info.reason is EndReason.LAST_LEFT and info.duration_s is not None
    async with asyncio.timeout(10):
        while ann.link(ben.peer_id) is not None:
            await asyncio.sleep(0.05)


async def test_declined_call_never_connects_media(trio: list[Participant]) -> None:
    ann, ben, cat = trio
    call = await ann.start_call([ben.peer_id])
    invite = await ring(ben)
    await invite.decline()
    info = await call.wait_ended()
    assert info.reason is EndReason.ALL_DECLINED and info.declined_by == [ben.peer_id]
    assert ann.link(ben.peer_id) is None and not ann.received_tracks
    assert [s.event for s in [s async for s in invite.updates()]][-1] == "call_ended"
    # The relay refuses a command the state machine does not allow, with its code.
    with pytest.raises(ServerError) as refused:
        await invite.accept()
    assert refused.value.code is ErrorCode.INVALID_TRANSITION
    assert cat.calls == {}


async def test_busy_initiator_is_refused(trio: list[Participant]) -> None:
    ann, ben, _ = trio
    call = await ann.start_call([ben.peer_id])
    with pytest.raises(ServerError) as refused:
        await ann.start_call([ben.peer_id])
    assert refused.value.code is ErrorCode.INVALID_TRANSITION
    await call.end()
    assert (await call.wait_ended()).reason is EndReason.CANCELLED


async def test_a_call_right_behind_the_welcome_is_not_lost() -> None:
    """A relay may ring us in the same burst as the welcome; the participant must see the call
    and keep its connection (it once died on a call that arrived before join() resumed)."""
    from aiohttp import web

    from signaling_server.protocol import (
        CallEvent,
        CallInfo,
        CallState,
        IncomingCall,
        Ping,
        Welcome,
        dump_message,
    )

    info = CallInfo(
        call_id="c_1", room="calls", status=CallStatus.RINGING, started_by="p_0",
        participants=["p_0"], targets=["p_1"], declined_by=[], started_at=1.0,
    )  # fmt: skip
    received: list[str] = []

    async def scripted_relay(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        join = await ws.receive_json()
        burst = [
            Welcome(peer_id="p_1", room="calls", peers=[], ice_servers=[], resume_token="t",
                    ref=join["id"]),
            IncomingCall(call_id="c_1", from_peer_id="p_0", participants=["p_0"], targets=["p_1"]),
            CallState(event=CallEvent.CALL_STARTED, call=info, peer_id="p_0"),
        ]  # fmt: skip
        for message in burst:
            await ws.send_str(dump_message(message))
        async for frame in ws:  # whatever the participant sends back
            received.append(frame.json()["type"])
        return ws

    app = web.Application()
    app.router.add_get("/ws", scripted_relay)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        cfg = ParticipantConfig(
            room="calls", server_url=f"ws://127.0.0.1:{port}/ws", mode=Mode.CALL
        )
        async with Participant(cfg) as me:
            call = await ring(me)
            assert call.call_id == "c_1" and call.incoming and me.peer_id == "p_1"
            await me._signaling.send(Ping(id="alive"))  # the connection is still alive
            async with asyncio.timeout(5):
                while "ping" not in received:
                    await asyncio.sleep(0.02)
    finally:
        await runner.cleanup()


async def test_call_waits_raise_errors_of_the_documented_tree(trio: list[Participant]) -> None:
    ann, ben, _ = trio
    call = await ann.start_call([ben.peer_id])
    with pytest.raises(WaitTimeout, match=f"call {call.call_id} is ringing") as timed_out:
        await call.wait_for(CallStatus.ACTIVE, timeout_s=0.1)
    assert isinstance(timed_out.value, CallbotError) and isinstance(timed_out.value, TimeoutError)
    with pytest.raises(WaitTimeout):
        await call.wait_until(lambda info: False, timeout_s=0.1)
    with pytest.raises(WaitTimeout):
        await call.wait_ended(timeout_s=0.1)
    await (await ring(ben)).decline()
    with pytest.raises(CallEndedError) as ended:
        await call.wait_for(CallStatus.ACTIVE, timeout_s=10)
    assert isinstance(ended.value, CallbotError)  # one except clause catches every wait
    assert ended.value.info.reason is EndReason.ALL_DECLINED


async def test_a_closed_participant_refuses_to_join_and_ends_its_call_waits(
    relay: RunningServer,
) -> None:
    async with (
        Participant(config(relay, "dee")) as dee,
        Participant(config(relay, "eve")) as eve,
    ):
        await dee.wait_for_peers(["eve"])
        call = await dee.start_call([eve.peer_id])
        waiting = asyncio.create_task(call.wait_alone_or_ended())  # no timeout
        await asyncio.sleep(0)
        await dee.aclose()
        with pytest.raises(CallbotError, match="the participant is closed"):
            await asyncio.wait_for(waiting, 10)
        with pytest.raises(CallbotError, match="the participant is closed"):
            await dee.join()  # not the stale welcome of the closed session
        # updates() ends too, after what had arrived (instead of waiting for ever).
        assert [state.event async for state in call.updates()] == ["call_started"]
