"""The call lifecycle on a real relay: every ending reason, refusals, busy peers, departures."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import pytest

from signaling_server import ServerSettings, start_server
from signaling_server.call_service import CallService
from signaling_server.calls import Event
from signaling_server.protocol import ErrorCode, ProtocolError
from signaling_server.rooms import Rooms
from signaling_server.store import MemoryStore

from .test_relay import Client, Connect, _connector, _joined

RING_S = 0.3  # the short ring timeout of the no_answer tests


@pytest.fixture
async def connect() -> AsyncIterator[Connect]:
    # No resume grace: these tests are about what a call does the moment a socket goes.
    async with start_server(ServerSettings(port=0, resume_grace_s=0)) as running:
        async for c in _connector(running.ws_url):
            yield c


async def state(client: Client, event: str, ref: Any = None, **call: Any) -> dict[str, Any]:
    """The next frame is a ``call_state`` for ``event``; ``call`` fields are checked."""
    frame = await client.expect("call_state", event=event)
    assert frame.get("ref") == ref, frame
    for key, value in call.items():
        assert frame["call"][key] == value, (key, frame)
    return frame


async def ring(caller: Client, *targets: Client, bystanders: tuple[Client, ...] = ()) -> str:
    """``caller`` starts a call to ``targets``; everyone sees what they should; the call id."""
    await caller.send(type="start_call", targets=[t.peer_id for t in targets], id="start")
    frame = await state(caller, "call_started", ref="start", status="ringing")
    call = frame["call"]
    assert frame["peer_id"] == caller.peer_id
    assert call["started_by"] == caller.peer_id
    assert call["participants"] == [caller.peer_id]
    assert call["targets"] == [t.peer_id for t in targets]
    for target in targets:
        await target.expect(
            "incoming_call",
            call_id=call["call_id"],
            from_peer_id=caller.peer_id,
            participants=[caller.peer_id],
            targets=call["targets"],
        )
        await state(target, "call_started", call_id=call["call_id"])
    for other in bystanders:
        await other.ping_roundtrip()  # nothing about the call reached it
    return str(call["call_id"])


async def everyone(
    clients: tuple[Client, ...], event: str, *, ref_for: Client | None = None, ref: Any = None,
    **call: Any,
) -> dict[str, Any]:  # fmt: skip
    frame: dict[str, Any] = {}
    for client in clients:
        frame = await state(client, event, ref=ref if client is ref_for else None, **call)
    return frame


# --------------------------------------------------------------------------- endings


async def test_initiator_ending_a_ringing_call_cancels_it(connect: Connect) -> None:
    a, b, c, bystander = await _joined(connect, "r", "a", "b", "c", "x")
    call_id = await ring(a, b, c, bystanders=(bystander,))
    await a.send(type="end_call", call_id=call_id, id="end")
    frame = await everyone(
        (a, b, c), "call_ended", ref_for=a, ref="end", status="ended", reason="cancelled"
    )
    assert frame["call"]["duration_s"] == 0
    assert frame["peer_id"] == a.peer_id
    await bystander.expect_quiet(0.05)


async def test_initiator_leaving_a_ringing_call_cancels_it(connect: Connect) -> None:
    a, b = await _joined(connect, "r", "a", "b")
    call_id = await ring(a, b)
    await a.send(type="leave_call", call_id=call_id, id="bye")
    await everyone((a, b), "call_ended", ref_for=a, ref="bye", reason="cancelled")


async def test_everyone_declining_ends_all_declined(connect: Connect) -> None:
    a, b, c = await _joined(connect, "r", "a", "b", "c")
    call_id = await ring(a, b, c)
    await b.send(type="decline_call", call_id=call_id, id="no")
    await everyone((a, b, c), "call_declined", ref_for=b, ref="no", status="ringing",
                   declined_by=[b.peer_id])  # fmt: skip
    await c.send(type="decline_call", call_id=call_id, id="no")
    await everyone(
        (a, b, c), "call_declined", ref_for=c, ref="no", declined_by=[b.peer_id, c.peer_id]
    )
    frame = await everyone((a, b, c), "call_ended", reason="all_declined", status="ended")
    assert frame["peer_id"] == c.peer_id


async def test_nobody_answering_ends_no_answer() -> None:
    async with start_server(ServerSettings(port=0, ring_timeout_s=RING_S)) as running:
        async for connect in _connector(running.ws_url):
            a, b = await _joined(connect, "r", "a", "b")
            loop = asyncio.get_running_loop()
            started = loop.time()
            call_id = await ring(a, b)
            frame = await everyone((a, b), "call_ended", reason="no_answer", call_id=call_id)
            assert loop.time() - started >= RING_S * 0.9
            assert "peer_id" not in frame  # nobody caused it
            assert frame["call"]["duration_s"] == 0


class RingTimer:
    """A ring timeout the relay scheduled, held back so that the test decides when it fires."""

    def __init__(self, delay: float, handle: asyncio.TimerHandle, fire: Callable[[], None]) -> None:
        self.delay = delay
        self.handle = handle
        self.fire = fire


@pytest.fixture
async def ring_timers(monkeypatch: pytest.MonkeyPatch) -> list[RingTimer]:
    """Ring timeouts never fire by themselves: how long a loaded machine takes to answer
    must not decide which of the answer and the timeout wins."""
    loop = asyncio.get_running_loop()
    real_call_later = loop.call_later
    timers: list[RingTimer] = []

    def call_later(delay: float, callback: Any, *args: Any, **kwargs: Any) -> asyncio.TimerHandle:
        if getattr(callback, "__func__", None) is not CallService._ring_timeout_due:
            return real_call_later(delay, callback, *args, **kwargs)
        handle = real_call_later(3600, callback, *args, **kwargs)
        timers.append(RingTimer(delay, handle, lambda: callback(*args)))
        return handle

    monkeypatch.setattr(loop, "call_later", call_later)
    return timers


async def test_an_answered_call_does_not_time_out(ring_timers: list[RingTimer]) -> None:
    async with start_server(ServerSettings(port=0, ring_timeout_s=RING_S)) as running:
        async for connect in _connector(running.ws_url):
            a, b = await _joined(connect, "r", "a", "b")
            call_id = await ring(a, b)
            (timer,) = ring_timers
            assert timer.delay == RING_S and not timer.handle.cancelled()
            await b.send(type="accept_call", call_id=call_id)
            await everyone((a, b), "participant_joined", status="active")
            assert timer.handle.cancelled()  # answering stops the ring timeout
            # Even a timeout that came due just as the answer was being stored changes nothing.
            timer.fire()
            await a.expect_quiet(0.05)
            await a.send(type="end_call", call_id=call_id)
            await everyone((a, b), "call_ended", reason="ended")
            await b.ping_roundtrip()


async def test_last_participant_leaving_ends_last_left(connect: Connect) -> None:
    a, b, c = await _joined(connect, "r", "a", "b", "c")
    call_id = await ring(a, b, c)
    await b.send(type="accept_call", call_id=call_id, id="yes")
    frame = await everyone((a, b, c), "participant_joined", ref_for=b, ref="yes",
                           status="active", participants=[a.peer_id, b.peer_id])  # fmt: skip
    assert frame["peer_id"] == b.peer_id
    assert frame["call"]["answered_at"] >= frame["call"]["started_at"]
    await c.send(type="accept_call", call_id=call_id)
    await everyone((a, b, c), "participant_joined", participants=[a.peer_id, b.peer_id, c.peer_id])
    await a.send(type="leave_call", call_id=call_id, id="l1")
    await everyone((a, b, c), "participant_left", ref_for=a, ref="l1", status="active",
                   participants=[b.peer_id, c.peer_id])  # fmt: skip
    await b.send(type="leave_call", call_id=call_id)
    await everyone((a, b, c), "participant_left", participants=[c.peer_id])
    await c.send(type="leave_call", call_id=call_id, id="l3")
    await everyone((a, b, c), "participant_left", ref_for=c, ref="l3", participants=[])
    frame = await everyone((a, b, c), "call_ended", reason="last_left", status="ended")
    call = frame["call"]
    assert call["participants"] == [a.peer_id, b.peer_id, c.peer_id]  # everyone who took part
    assert call["duration_s"] == pytest.approx(call["ended_at"] - call["answered_at"])


async def test_end_call_by_a_participant_ends_it(connect: Connect) -> None:
    a, b = await _joined(connect, "r", "a", "b")
    call_id = await ring(a, b)
    await b.send(type="accept_call", call_id=call_id)
    await everyone((a, b), "participant_joined")
    await b.send(type="end_call", call_id=call_id, id="hangup")
    frame = await everyone((a, b), "call_ended", ref_for=b, ref="hangup", reason="ended")
    assert frame["peer_id"] == b.peer_id
    assert frame["call"]["duration_s"] >= 0


# --------------------------------------------------------------------------- refusals


async def test_invalid_transitions_are_refused_and_change_nothing(connect: Connect) -> None:
    a, b, c = await _joined(connect, "r", "a", "b", "c")
    call_id = await ring(a, b)
    await c.send(type="accept_call", call_id=call_id, id=1)  # not a target
    await c.expect_error("invalid_transition", ref=1)
    await a.send(type="accept_call", call_id=call_id, id=2)  # the initiator is no target
    await a.expect_error("invalid_transition", ref=2)
    await b.send(type="end_call", call_id=call_id, id=3)  # a target cannot end a ringing call
    frame = await b.expect_error("invalid_transition", ref=3)
    assert "decline" in frame["message"]
    await b.send(type="leave_call", call_id=call_id, id=4)  # nor leave one it has not joined
    await b.expect_error("invalid_transition", ref=4)
    await b.send(type="accept_call", call_id=call_id)
    await everyone((a, b), "participant_joined")
    await b.send(type="accept_call", call_id=call_id, id=5)  # twice
    await b.expect_error("invalid_transition", ref=5)
    await b.send(type="decline_call", call_id=call_id, id=6)  # after accepting
    await b.expect_error("invalid_transition", ref=6)
    await a.send(type="end_call", call_id=call_id)
    await everyone((a, b), "call_ended", reason="ended")
    for kind in ("accept_call", "decline_call", "leave_call", "end_call"):
        await a.send(type=kind, call_id=call_id, id=kind)  # the call has ended
        frame = await a.expect_error("invalid_transition", ref=kind)
        assert call_id in frame["message"]
    for client in (b, c):
        await client.expect_quiet(0.05)


async def test_unknown_call_and_another_rooms_call_are_call_not_found(connect: Connect) -> None:
    a, b = await _joined(connect, "r", "a", "b")
    x, y = await _joined(connect, "other", "x", "y")
    call_id = await ring(a, b)
    for kind in ("accept_call", "decline_call", "leave_call", "end_call"):
        await x.send(type=kind, call_id=call_id, id=kind)
        await x.expect_error("call_not_found", ref=kind)
        await x.send(type=kind, call_id="c_0000000000000000", id="unknown")
        await x.expect_error("call_not_found", ref="unknown")
    for client in (a, b, y):
        await client.expect_quiet(0.05)


async def test_cross_room_target_is_refused_and_never_rung(connect: Connect) -> None:
    a, b = await _joined(connect, "r", "a", "b")
    (d,) = await _joined(connect, "other", "d")
    await a.send(type="start_call", targets=[d.peer_id], id="x")
    await a.expect_error("not_in_room", ref="x")
    await a.send(type="start_call", targets=[b.peer_id, d.peer_id], id="mixed")
    await a.expect_error("not_in_room", ref="mixed")  # all or nothing: b is not rung either
    await d.expect_quiet()
    await d.ping_roundtrip()
    await b.ping_roundtrip()
    await ring(a, b)  # a is not busy: nothing was created


async def test_bad_targets(connect: Connect) -> None:
    (alone,) = await _joined(connect, "solo", "alone")
    await alone.send(type="start_call", id="nobody")  # everyone else: nobody
    await alone.expect_error("bad_message", ref="nobody")
    a, b = await _joined(connect, "r", "a", "b")
    cases = [
        ([a.peer_id], "bad_message"),  # self
        ([b.peer_id, a.peer_id], "bad_message"),
        ([], "bad_message"),
        (["p_000000000000"], "unknown_peer"),
    ]
    for targets, code in cases:
        await a.send(type="start_call", targets=targets, id="t")
        await a.expect_error(code, ref="t")
    await b.expect_quiet(0.05)
    call_id = await ring(a, b)  # duplicates collapse to one target
    assert call_id.startswith("c_")


async def test_start_call_without_targets_rings_everyone_else(connect: Connect) -> None:
    a, b, c = await _joined(connect, "r", "a", "b", "c")
    (x,) = await _joined(connect, "other", "x")
    await a.send(type="start_call", id="all")
    frame = await state(a, "call_started", ref="all", targets=[b.peer_id, c.peer_id])
    for target in (b, c):
        await target.expect("incoming_call", call_id=frame["call"]["call_id"])
        await state(target, "call_started")
    await x.expect_quiet(0.05)


async def test_a_peer_in_a_call_is_busy(connect: Connect) -> None:
    a, b, c = await _joined(connect, "r", "a", "b", "c")
    first = await ring(a, b)
    await a.send(type="start_call", targets=[c.peer_id], id="again")  # ringing counts
    frame = await a.expect_error("invalid_transition", ref="again")
    assert frame["message"].startswith(f"busy: already in call {first}")
    await b.send(type="accept_call", call_id=first)
    await everyone((a, b), "participant_joined")
    await b.send(type="start_call", targets=[c.peer_id], id="b-busy")  # active counts
    await b.expect_error("invalid_transition", ref="b-busy")
    # A busy peer may still be rung, but cannot accept until it leaves its call.
    second = await ring(c, b)
    await b.send(type="accept_call", call_id=second, id="take")
    frame = await b.expect_error("invalid_transition", ref="take")
    assert first in frame["message"]
    await b.send(type="leave_call", call_id=first)
    await everyone((a, b), "participant_left")
    await b.send(type="accept_call", call_id=second, id="take")
    await everyone((c, b), "participant_joined", ref_for=b, ref="take")
    await c.expect_quiet(0.05)


# --------------------------------------------------------------------------- departures


async def test_target_disconnecting_while_ringing_declines(connect: Connect) -> None:
    a, b, c = await _joined(connect, "r", "a", "b", "c")
    call_id = await ring(a, b, c)
    await b.ws.close()
    await a.expect("peer_left", peer_id=b.peer_id)
    await c.expect("peer_left", peer_id=b.peer_id)
    frame = await everyone((a, c), "call_declined", call_id=call_id, declined_by=[b.peer_id])
    assert frame["peer_id"] == b.peer_id
    await c.send(type="leave")  # leaving the room counts the same
    await a.expect("peer_left", peer_id=c.peer_id)
    await state(a, "call_declined")
    await state(a, "call_ended", reason="all_declined")


async def test_initiator_disconnecting_while_ringing_cancels(connect: Connect) -> None:
    a, b = await _joined(connect, "r", "a", "b")
    call_id = await ring(a, b)
    await a.ws.close()
    await b.expect("peer_left", peer_id=a.peer_id)
    await state(b, "call_ended", call_id=call_id, reason="cancelled")


async def test_disconnecting_while_active_leaves_the_call(connect: Connect) -> None:
    a, b, c = await _joined(connect, "r", "a", "b", "c")
    call_id = await ring(a, b, c)
    for target in (b, c):
        await target.send(type="accept_call", call_id=call_id)
        await everyone((a, b, c), "participant_joined")
    await a.ws.close()
    for client in (b, c):
        await client.expect("peer_left", peer_id=a.peer_id)
        await state(
            client, "participant_left", status="active", participants=[b.peer_id, c.peer_id]
        )
    await b.send(type="leave")
    await c.expect("peer_left", peer_id=b.peer_id)
    await state(c, "participant_left", participants=[c.peer_id])
    await c.ws.close()  # the last one: the call ends, and nobody is left to hear it


async def test_a_left_peer_cannot_act_again_and_rejoining_is_a_new_peer(connect: Connect) -> None:
    a, b = await _joined(connect, "r", "a", "b")
    call_id = await ring(a, b)
    await b.send(type="leave")
    await a.expect("peer_left")
    await state(a, "call_declined")
    await state(a, "call_ended", reason="all_declined")
    await b.send(type="accept_call", call_id=call_id, id="late")
    await b.expect_error("not_joined", ref="late")
    await b.join("r")
    await a.expect("peer_joined", peer_id=b.peer_id)
    await b.send(type="accept_call", call_id=call_id, id="late")
    await b.expect_error("invalid_transition", ref="late")  # ended; and b is a new peer anyway


async def test_shutdown_with_live_calls_leaves_nothing_running(
    server_settings: ServerSettings,
) -> None:
    async with start_server(server_settings) as running:
        async for connect in _connector(running.ws_url):
            a, b, c, d = await _joined(connect, "r", "a", "b", "c", "d")
            await ring(a, b)
            active = await ring(c, d)
            await d.send(type="accept_call", call_id=active)
            await everyone((c, d), "participant_joined")
    # The autouse no_leaked_tasks fixture checks the worker, timers and sockets are all gone.


@pytest.fixture
def server_settings() -> ServerSettings:
    return ServerSettings(port=0, ring_timeout_s=60)


async def test_garbage_call_commands_get_errors_and_the_socket_lives(connect: Connect) -> None:
    a, b = await _joined(connect, "r", "a", "b")
    for raw in (
        '{"type":"start_call","targets":"p_1"}',
        '{"type":"start_call","targets":[1]}',
        '{"type":"accept_call"}',
        '{"type":"end_call","call_id":5}',
    ):
        await a.ws.send_str(raw)
        await a.expect_error("bad_message")
    await a.send(type="accept_call", call_id="x" * 10_000, id="long")
    frame = await a.expect_error("call_not_found", ref="long")
    assert len(frame["message"]) < 200
    await ring(a, b)


async def test_a_failed_store_write_changes_nothing(
    connect: Connect, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = await _joined(connect, "r", "a", "b")
    real = MemoryStore.append

    async def broken(self: MemoryStore, events: Sequence[Event]) -> None:
        raise OSError("disk full")

    with monkeypatch.context() as patch, caplog.at_level(logging.ERROR, "signaling_server"):
        patch.setattr(MemoryStore, "append", broken)
        await a.send(type="start_call", id="s")
        frame = await a.expect_error("internal", ref="s")
        assert "disk" not in frame["message"]
    assert "disk full" in caplog.text
    await b.expect_quiet(0.05)  # never rung
    assert MemoryStore.append is real
    call_id = await ring(a, b)  # not busy: the failed call never existed
    with monkeypatch.context() as patch:
        patch.setattr(MemoryStore, "append", broken)
        await b.send(type="accept_call", call_id=call_id, id="y")
        await b.expect_error("internal", ref="y")
    await b.send(type="accept_call", call_id=call_id, id="y")  # still ringing: it works now
    await everyone((a, b), "participant_joined", ref_for=b, ref="y")


class StuckStore(MemoryStore):
    """A store whose writes hang until released: a command caught in flight."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def append(self, events: Sequence[Event]) -> None:
        self.entered.set()
        await self.release.wait()
        await super().append(events)


async def test_closing_the_service_fails_commands_in_flight_and_queued() -> None:
    rooms = Rooms(max_peers_per_room=4)
    a, b = rooms.join("r"), rooms.join("r")
    sent: list[tuple[str, str]] = []
    service = CallService(
        rooms=rooms, deliver=lambda peer, text: sent.append((peer, text)), ring_timeout_s=60
    )
    store = StuckStore()
    service.start(store)
    in_flight = asyncio.create_task(service.start_call(a.peer_id, None))
    await store.entered.wait()
    queued = asyncio.create_task(service.start_call(b.peer_id, None))
    await asyncio.sleep(0)  # it is waiting in the queue now
    await service.aclose()
    for task in (in_flight, queued):
        with pytest.raises(ProtocolError) as info:
            await task
        assert info.value.code is ErrorCode.INTERNAL
        assert "shutting down" in info.value.message
    assert sent == []  # nothing was told that was not stored
    assert service.live_count == 0
    with pytest.raises(ProtocolError):
        await service.start_call(a.peer_id, None)
    service.peer_gone(a.peer_id)  # ignored once closed
    await service.aclose()  # idempotent
