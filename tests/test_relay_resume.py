"""Session resume on the relay: the grace for dropped peers, resume tokens, take-over, restarts."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from signaling_server import ServerSettings, calls, create_app
from signaling_server.handlers import CLOSE_REPLACED, HUB_KEY, Hub
from signaling_server.protocol import CallStatus, EndReason
from signaling_server.resume import ResumeTokens, load_or_create_secret
from signaling_server.settings import DEFAULT_RESUME_GRACE_S

from .test_relay import Client, Connect, _joined

ROOT = Path(__file__).resolve().parent.parent
LONG_GRACE_S = 60.0  # outlasts any test: a peer_left seen under it did not wait for the grace
SHORT_GRACE_S = 0.5


@asynccontextmanager
async def relay(**settings: Any) -> AsyncIterator[tuple[Connect, Hub, str]]:
    """A relay on a free port, its hub (to wait on its state) and a client factory.

    On exit the relay shuts down first (so its clients see the 1001), then the clients close.
    """
    app = create_app(ServerSettings(port=0, **settings))
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=5.0)
    await runner.setup()
    clients: list[Client] = []
    async with aiohttp.ClientSession() as session:
        try:
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            url = f"ws://127.0.0.1:{runner.addresses[0][1]}/ws"

            async def connect() -> Client:
                client = Client(await session.ws_connect(url))
                clients.append(client)
                return client

            yield connect, app[HUB_KEY], url
        finally:
            await runner.cleanup()
            for client in clients:
                await client.ws.close()


async def until(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


def crash(client: Client) -> None:
    """Drop the client's TCP connection without a close frame (like a killed process)."""
    client.ws.get_extra_info("socket").shutdown(socket.SHUT_RDWR)


def watch_close(*clients: Client) -> list[asyncio.Task[aiohttp.WSMessage]]:
    """Readers waiting for the relay's close (start them before it shuts down)."""
    return [asyncio.create_task(c.ws.receive(timeout=10)) for c in clients]


async def closed_going_away(readers: list[asyncio.Task[aiohttp.WSMessage]]) -> None:
    for reader in readers:
        msg = await reader
        assert msg.type is aiohttp.WSMsgType.CLOSE, msg
        assert msg.data == aiohttp.WSCloseCode.GOING_AWAY  # 1001: come back later


async def roster(client: Client) -> list[dict[str, Any]]:
    await client.send(type="list_peers", id="roster")
    peers: list[dict[str, Any]] = (await client.expect("peer_list", ref="roster"))["peers"]
    return peers


async def resume(connect: Connect, room: str, token: str, **extra: Any) -> Client:
    client = await connect()
    await client.join(room, resume_token=token, **extra)
    return client


# --------------------------------------------------------------------------- the grace


async def test_a_dropped_peer_is_away_for_the_grace_then_leaves_with_timeout() -> None:
    async with relay(resume_grace_s=SHORT_GRACE_S) as (connect, hub, _):
        a, b, c = await _joined(connect, "r", "a", "b", "c")
        crash(b)
        await until(lambda: hub.is_away(b.peer_id))
        # Still listed, and nothing was said (a peer_left would have come before the list).
        peers = await roster(a)
        assert [p["peer_id"] for p in peers] == [b.peer_id, c.peer_id]
        await a.send(type="offer", target_peer_id=b.peer_id, sdp="v=0\r\n", id="lost")
        await a.ping_roundtrip()  # dropped quietly: no error for an away target
        for client in (a, c):
            await client.expect("peer_left", peer_id=b.peer_id, reason="timeout")
        assert hub.away_count == 0 and hub.rooms.get(b.peer_id) is None
        assert [p["peer_id"] for p in await roster(a)] == [c.peer_id]


async def test_leave_is_immediate_even_with_a_grace() -> None:
    async with relay(resume_grace_s=LONG_GRACE_S) as (connect, hub, _):
        a, b = await _joined(connect, "r", "a", "b")
        await b.send(type="leave")
        await a.expect("peer_left", peer_id=b.peer_id, reason="left")
        await b.ws.close()  # closing after leave changes nothing
        await a.expect_quiet()
        assert hub.away_count == 0


async def test_no_grace_means_disconnected_at_once() -> None:
    async with relay(resume_grace_s=0) as (connect, hub, _):
        a, b = await _joined(connect, "r", "a", "b")
        crash(b)
        await a.expect("peer_left", peer_id=b.peer_id, reason="disconnected")
        assert hub.away_count == 0


async def test_calls_are_untouched_during_the_grace_and_left_after_it() -> None:
    async with relay(resume_grace_s=SHORT_GRACE_S) as (connect, hub, _):
        a, b, c = await _joined(connect, "r", "a", "b", "c")
        await a.send(type="start_call", targets=[b.peer_id, c.peer_id], id="s")
        call_id = (await a.expect("call_state", event="call_started", ref="s"))["call"]["call_id"]
        for target in (b, c):
            await target.expect("incoming_call", call_id=call_id)
            await target.expect("call_state", event="call_started")
        for target in (b, c):
            await target.send(type="accept_call", call_id=call_id, id="acc")
            for client in (a, b, c):
                await client.expect("call_state", event="participant_joined")
        crash(b)
        await until(lambda: hub.is_away(b.peer_id))
        await a.ping_roundtrip()  # nothing about b or the call came first
        for client in (a, c):
            await client.expect("peer_left", peer_id=b.peer_id, reason="timeout")
            frame = await client.expect("call_state", event="participant_left")
            assert frame["call"]["participants"] == [a.peer_id, c.peer_id]
            assert frame["call"]["status"] == "active"


# --------------------------------------------------------------------------- resume in-process


async def test_resume_within_the_grace_keeps_the_id_without_churn() -> None:
    async with relay(resume_grace_s=LONG_GRACE_S) as (connect, hub, _):
        a, b = await _joined(connect, "r", "a", "b")
        first = b.session_token
        crash(b)
        await until(lambda: hub.is_away(b.peer_id))
        token = await _token_of(hub, b.peer_id)
        b2 = await connect()
        welcome = await b2.join("r", resume_token=token, id="again")
        assert welcome["peer_id"] == b.peer_id and welcome["resumed"] is True
        assert welcome["ref"] == "again"
        assert welcome["peers"] == [{"peer_id": a.peer_id, "name": "a"}]
        assert welcome["resume_token"] != token  # rotated
        assert welcome["session_token"] == first  # REST clients carry on
        assert not hub.is_away(b.peer_id)
        await a.expect_quiet()  # no peer_left, no peer_joined
        assert await roster(a) == [{"peer_id": b.peer_id, "name": "b"}]
        await a.send(type="offer", target_peer_id=b.peer_id, sdp="v=0\r\n")
        await b2.expect("offer", from_peer_id=a.peer_id)
        # The grace timer was cancelled: the resumed peer stays (the old token works again too).
        assert hub.away_count == 0


async def test_resume_with_a_new_name_tells_the_room() -> None:
    async with relay(resume_grace_s=LONG_GRACE_S) as (connect, hub, _):
        a, b = await _joined(connect, "r", "a", "b")
        token = await _token_of(hub, b.peer_id)
        crash(b)
        await until(lambda: hub.is_away(b.peer_id))
        b2 = await connect()
        welcome = await b2.join("r", "bee", resume_token=token)
        assert (welcome["peer_id"], welcome["resumed"]) == (b.peer_id, True)
        await a.expect("peer_joined", peer_id=b.peer_id, name="bee")  # an update, same id
        assert await roster(a) == [{"peer_id": b.peer_id, "name": "bee"}]


async def test_a_newer_socket_takes_the_session_over() -> None:
    async with relay(resume_grace_s=LONG_GRACE_S) as (connect, hub, _):
        a, b = await _joined(connect, "r", "a", "b")
        token = await _token_of(hub, b.peer_id)
        b2 = await connect()
        welcome = await b2.join("r", resume_token=token)
        assert (welcome["peer_id"], welcome["resumed"]) == (b.peer_id, True)
        await b.expect_closed(CLOSE_REPLACED)
        await until(lambda: len(hub.connections) == 2)
        await a.expect_quiet()  # the old socket's end is no departure
        assert hub.away_count == 0
        assert await roster(a) == [{"peer_id": b.peer_id, "name": "b"}]
        await a.send(type="offer", target_peer_id=b.peer_id, sdp="v=0\r\n")
        await b2.expect("offer", from_peer_id=a.peer_id)
        await b2.send(type="leave")
        await a.expect("peer_left", peer_id=b.peer_id, reason="left")


async def test_unusable_tokens_join_as_a_new_peer() -> None:
    async with relay(resume_grace_s=SHORT_GRACE_S) as (connect, hub, _):
        a, b, c = await _joined(connect, "r", "a", "b", "c")
        left_token = await _token_of(hub, b.peer_id)
        await b.send(type="leave")
        timed_out_token = await _token_of(hub, c.peer_id)
        crash(c)
        await a.expect("peer_left", peer_id=b.peer_id, reason="left")
        await a.expect("peer_left", peer_id=c.peer_id, reason="timeout")
        a_token = await _token_of(hub, a.peer_id)
        forged = ResumeTokens(b"not the relay's secret!").issue(
            room="r", peer_id=a.peer_id, name="x"
        )
        for token, room in [
            ("garbage", "r"),
            (forged, "r"),
            (a_token[:-2] + ("AA" if not a_token.endswith("AA") else "BB"), "r"),  # tampered
            (left_token, "r"),  # its session ended with leave
            (timed_out_token, "r"),  # its grace ran out
            (a_token, "other"),  # another room's token
        ]:
            d = await connect()
            welcome = await d.join(room, "d", resume_token=token)
            assert welcome["resumed"] is False, token
            assert welcome["peer_id"] not in (a.peer_id, b.peer_id, c.peer_id)
            if room == "r":
                await a.expect("peer_joined", peer_id=d.peer_id, name="d")
            await d.send(type="leave")
            if room == "r":
                await a.expect("peer_left", peer_id=d.peer_id, reason="left")
        plain = await (await connect()).join("r")
        assert "resumed" not in plain  # only said when a token was presented


async def _token_of(hub: Hub, peer_id: str) -> str:
    member = hub.rooms.get(peer_id)
    assert member is not None
    return member.resume_token


# --------------------------------------------------------------------------- restarts


async def test_tokens_resume_after_a_restart_on_the_same_database(tmp_path: Path) -> None:
    db = str(tmp_path / "relay.db")
    async with relay(db_path=db, resume_grace_s=LONG_GRACE_S) as (connect, hub, _):
        a, b = await _joined(connect, "r", "alice", "bob")
        tokens = {c.peer_id: await _token_of(hub, c.peer_id) for c in (a, b)}
        ids = (a.peer_id, b.peer_id)
        readers = watch_close(a, b)
        await asyncio.sleep(0.05)  # the readers are waiting when the relay goes away
    await closed_going_away(readers)
    async with relay(db_path=db, resume_grace_s=LONG_GRACE_S) as (connect, hub, _):
        a2 = await resume(connect, "r", tokens[ids[0]])
        assert a2.peer_id == ids[0]
        b2 = await connect()
        welcome = await b2.join("r", resume_token=tokens[ids[1]])
        assert (welcome["peer_id"], welcome["resumed"]) == (ids[1], True)
        assert welcome["peers"] == [{"peer_id": ids[0], "name": "alice"}]  # name from the token
        await a2.expect("peer_joined", peer_id=ids[1], name="bob")  # it is new to this run
        assert await roster(a2) == [{"peer_id": ids[1], "name": "bob"}]
        assert await roster(b2) == [{"peer_id": ids[0], "name": "alice"}]
        assert hub.rooms.peer_count == 2
        # The restored peer's fresh token works in this run too (take-over, same id).
        b3 = await resume(connect, "r", welcome["resume_token"])
        assert b3.peer_id == ids[1]
        await b2.expect_closed(CLOSE_REPLACED)
        await a2.expect_quiet()


async def test_a_configured_secret_resumes_across_restarts_without_a_database() -> None:
    secret = "s3cret-of-sixteen-or-more"
    async with relay(secret=secret) as (connect, hub, _):
        (a,) = await _joined(connect, "r", "a")
        token, peer_id = await _token_of(hub, a.peer_id), a.peer_id
    async with relay(secret=secret) as (connect, _hub, _):
        assert (await resume(connect, "r", token)).peer_id == peer_id
    async with relay() as (connect, _hub, _):  # a random per-process secret: cannot resume
        fresh = await connect()
        welcome = await fresh.join("r", resume_token=token)
        assert welcome["resumed"] is False and welcome["peer_id"] != peer_id


async def _start_call(caller: Client, *targets: Client) -> str:
    """``caller`` rings ``targets``; every frame that says so is read; the call id."""
    await caller.send(type="start_call", targets=[t.peer_id for t in targets], id="s")
    frame = await caller.expect("call_state", event="call_started", ref="s")
    for target in targets:
        await target.expect("incoming_call", call_id=frame["call"]["call_id"])
        await target.expect("call_state", event="call_started")
    return str(frame["call"]["call_id"])


async def _accept(target: Client, call_id: str, *involved: Client) -> dict[str, Any]:
    await target.send(type="accept_call", call_id=call_id)
    frame: dict[str, Any] = {}
    for client in involved:
        frame = await client.expect(
            "call_state", event="participant_joined", peer_id=target.peer_id
        )
    return frame


async def test_an_active_call_survives_a_restart_when_its_members_resume(tmp_path: Path) -> None:
    db = str(tmp_path / "relay.db")
    async with relay(db_path=db, resume_grace_s=LONG_GRACE_S) as (connect, hub, _):
        a, b = await _joined(connect, "r", "alice", "bob")
        call_id = await _start_call(a, b)
        answered = (await _accept(b, call_id, a, b))["call"]["answered_at"]
        tokens = [await _token_of(hub, c.peer_id) for c in (a, b)]
        await asyncio.sleep(0.3)  # the call runs a while before the relay goes
        readers = watch_close(a, b)
        await asyncio.sleep(0.05)
    await closed_going_away(readers)
    async with relay(db_path=db, resume_grace_s=LONG_GRACE_S) as (connect, hub, _):
        restarted = time.time()
        assert hub.calls.live_count == 1  # restored at start, not ended relay_restart
        a2 = await resume(connect, "r", tokens[0])
        b2 = await resume(connect, "r", tokens[1])
        await a2.expect("peer_joined", peer_id=b2.peer_id)
        assert (a2.peer_id, b2.peer_id) == (a.peer_id, b.peer_id)
        # Still in the call: busy for a new one, and its members hear its events.
        await a2.send(type="start_call", targets=[b2.peer_id], id="again")
        error = await a2.expect_error("invalid_transition", ref="again")
        assert error["message"].startswith(f"busy: already in call {call_id}")
        await b2.send(type="leave_call", call_id=call_id, id="bye")
        frame = await b2.expect("call_state", event="participant_left", ref="bye")
        assert frame["call"]["status"] == "active"
        assert frame["call"]["participants"] == [a.peer_id]
        await a2.expect("call_state", event="participant_left", peer_id=b.peer_id)
        await a2.send(type="leave_call", call_id=call_id)
        for client in (a2, b2):
            await client.expect("call_state", event="participant_left", peer_id=a.peer_id)
            frame = await client.expect("call_state", event="call_ended")
            call = frame["call"]
            assert call["reason"] == "last_left"
            assert call["answered_at"] == answered and call["ended_at"] >= restarted
            assert call["duration_s"] == pytest.approx(call["ended_at"] - answered)


def _close_the_window(hub: Hub) -> None:
    """End the resume window of restored calls now: the test, not the machine's speed, decides
    that everyone who was coming back is back."""
    window = hub.calls._window
    assert window is not None and not window.cancelled()
    window.cancel()
    hub.calls._later(hub.calls._window_over)


async def test_who_does_not_come_back_in_time_leaves_a_restored_call(tmp_path: Path) -> None:
    db = str(tmp_path / "relay.db")
    async with relay(db_path=db, resume_grace_s=LONG_GRACE_S) as (connect, hub, _):
        a, b, c, d, e, f = await _joined(connect, "r", "a", "b", "c", "d", "e", "f")
        active = await _start_call(a, b, c)
        await _accept(b, active, a, b, c)
        await _accept(c, active, a, b, c)
        ringing = await _start_call(d, e, f)
        tokens = {x.peer_id: await _token_of(hub, x.peer_id) for x in (a, b, d, e)}
        readers = watch_close(a, b, c, d, e, f)
        await asyncio.sleep(0.05)
    await closed_going_away(readers)
    async with relay(db_path=db, resume_grace_s=LONG_GRACE_S) as (connect, hub, _):
        a2, b2, d2, e2 = [await resume(connect, "r", tokens[x.peer_id]) for x in (a, b, d, e)]
        _close_the_window(hub)
        # c and f never came back: they leave like any departed peer.
        for client in (a2, b2):
            frame = await _call_state(client, "participant_left")
            assert frame["peer_id"] == c.peer_id
            assert frame["call"]["status"] == "active"
            assert frame["call"]["participants"] == [a.peer_id, b.peer_id]
        for client in (d2, e2):
            frame = await _call_state(client, "call_declined")
            assert frame["peer_id"] == f.peer_id and frame["call"]["status"] == "ringing"
        # The ringing call still rings the one who came back, and can be answered.
        await e2.send(type="accept_call", call_id=ringing, id="yes")
        frame = await _call_state(e2, "participant_joined")
        assert frame["call"]["status"] == "active"
        assert hub.calls.live_count == 2


async def test_a_restored_call_nobody_comes_back_to_ends_when_the_relay_stopped(
    tmp_path: Path,
) -> None:
    db = str(tmp_path / "relay.db")
    async with relay(db_path=db, resume_grace_s=LONG_GRACE_S) as (connect, hub, _):
        a, b = await _joined(connect, "r", "a", "b")
        call_id = await _start_call(a, b)
        answered = (await _accept(b, call_id, a, b))["call"]["answered_at"]
        await asyncio.sleep(0.3)
        readers = watch_close(a, b)
        stopping = time.time()
    stopped = time.time()
    await closed_going_away(readers)
    async with relay(db_path=db, resume_grace_s=LONG_GRACE_S) as (connect, hub, _):
        (watcher,) = await _joined(connect, "r", "someone else")
        _close_the_window(hub)
        await until(lambda: hub.calls.live_count == 0)
        info = calls.fold(await hub.calls.store.events(call_id))
        assert (info.status, info.reason) == (CallStatus.ENDED, EndReason.RELAY_RESTART)
        assert info.ended_at is not None and stopping <= info.ended_at <= stopped
        assert info.duration_s == pytest.approx(info.ended_at - answered)
        await watcher.expect_quiet(0.05)  # not involved: hears nothing


async def _call_state(client: Client, event: str) -> dict[str, Any]:
    """The next ``call_state`` for ``event``, skipping the roster news of peers coming back."""
    while (frame := await client.recv())["type"] == "peer_joined":
        pass
    assert frame["type"] == "call_state" and frame["event"] == event, frame
    return frame


async def test_a_restored_ringing_call_still_times_out(tmp_path: Path) -> None:
    db = str(tmp_path / "relay.db")
    settings = {"db_path": db, "resume_grace_s": LONG_GRACE_S, "ring_timeout_s": 1.0}
    async with relay(**settings) as (connect, hub, _):
        a, b = await _joined(connect, "r", "a", "b")
        call_id = await _start_call(a, b)
        readers = watch_close(a, b)
        await asyncio.sleep(0.05)
    await closed_going_away(readers)
    async with relay(**settings) as (connect, hub, _):
        # Nobody comes back (the window outlasts the test): the ring time runs out all the same.
        await until(lambda: hub.calls.live_count == 0)
        info = calls.fold(await hub.calls.store.events(call_id))
        assert (info.status, info.reason) == (CallStatus.ENDED, EndReason.NO_ANSWER)
        assert info.ended_at is not None
        assert info.ended_at - info.started_at >= 1.0 * 0.9  # its ring time, not less


def test_the_database_secret_is_made_once_and_kept(tmp_path: Path) -> None:
    db = str(tmp_path / "x.db")
    first = load_or_create_secret(db)
    assert len(first) == 32 and load_or_create_secret(db) == first


# --------------------------------------------------------------------------- shutdown


async def test_shutdown_says_going_away_and_stops_the_grace_timers() -> None:
    async with relay(resume_grace_s=LONG_GRACE_S) as (connect, hub, _):
        a, b = await _joined(connect, "r", "a", "b")
        crash(b)
        await until(lambda: hub.is_away(b.peer_id))
        readers = watch_close(a)
        await asyncio.sleep(0.05)
    await closed_going_away(readers)
    assert hub.away_count == 0 and hub.closing


# --------------------------------------------------------------------------- a real client process


async def _callbot_join(url: str, name: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cli", "join", "k", "--server", url, "--name", name,
        "--source", "none", "--no-receive",
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip


async def _signal(client: Client, kind: str, timeout: float = 20.0) -> dict[str, Any]:
    """The next ``kind`` frame, skipping the media negotiation the bots try with us."""
    while (frame := await client.recv(timeout))["type"] in ("offer", "answer", "ice_candidate"):
        pass
    assert frame["type"] == kind, frame
    return frame


@pytest.mark.timeout(120)
async def test_a_killed_callbot_join_leaves_after_the_grace_a_stopped_one_at_once() -> None:
    async with relay(resume_grace_s=1.0) as (connect, hub, url):
        watcher = await connect()
        await watcher.join("k", "watcher")
        killed = await _callbot_join(url, "killed")
        stopped = await _callbot_join(url, "stopped")
        try:
            joined = {}
            for _ in range(2):
                frame = await _signal(watcher, "peer_joined", timeout=60)
                joined[frame["name"]] = frame["peer_id"]
            killed.send_signal(signal.SIGKILL)
            await killed.wait()
            await until(lambda: hub.is_away(joined["killed"]))
            await watcher.send(type="list_peers", id="roster")
            frame = await _signal(watcher, "peer_list")
            assert {p["name"] for p in frame["peers"]} == {"killed", "stopped"}
            frame = await _signal(watcher, "peer_left")
            assert frame == {"type": "peer_left", "peer_id": joined["killed"], "reason": "timeout"}
            stopped.send_signal(signal.SIGTERM)  # a clean exit says leave: no grace
            frame = await _signal(watcher, "peer_left")
            assert frame == {"type": "peer_left", "peer_id": joined["stopped"], "reason": "left"}
            assert await asyncio.wait_for(stopped.wait(), 30) == 0
        finally:
            for proc in (killed, stopped):
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()


def test_grace_settings_are_validated() -> None:
    assert ServerSettings().resume_grace_s == DEFAULT_RESUME_GRACE_S == 20.0
    assert ServerSettings(resume_grace_s=0.25).resume_grace_s == 0.25
    for bad in (-1, float("nan"), float("inf"), True, "5"):
        with pytest.raises(ValueError, match="resume_grace_s"):
            ServerSettings(resume_grace_s=bad)  # type: ignore[arg-type]
    for secret in ("short", b"bytes-are-not-a-string"):
        with pytest.raises(ValueError, match="secret"):
            ServerSettings(secret=secret)  # type: ignore[arg-type]
