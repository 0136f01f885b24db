"""The HTTP call API on a real relay: history, commands as a peer, auth, restarts."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from signaling_server import RunningServer, ServerSettings, start_server
from signaling_server.calls import Event
from signaling_server.protocol import CallEvent
from signaling_server.store import SQLiteStore

from .test_relay import Client, _connector, _joined
from .test_relay_calls import everyone, ring, state


class Api:
    """A thin JSON client for the relay's HTTP side."""

    def __init__(self, http: aiohttp.ClientSession, base: str) -> None:
        self.http = http
        self.base = base

    async def call(
        self, method: str, path: str, *, token: str | None = None, body: Any = None,
        data: str | None = None,
    ) -> tuple[int, Any]:  # fmt: skip
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        async with self.http.request(
            method, self.base + path, headers=headers, json=body, data=data
        ) as resp:
            assert resp.content_type == "application/json", await resp.text()
            return resp.status, await resp.json()

    async def history(self, room: str, **query: Any) -> tuple[int, Any]:
        qs = "&".join(f"{k}={v}" for k, v in query.items())
        return await self.call("GET", f"/rooms/{room}/calls" + (f"?{qs}" if qs else ""))


@pytest.fixture
async def relay_api() -> AsyncIterator[tuple[RunningServer, Api]]:
    async with start_server(ServerSettings(port=0)) as running, aiohttp.ClientSession() as http:
        yield running, Api(http, running.http_url)


def token(client: Client) -> str:
    assert client.session_token
    return client.session_token


def error(status: int, body: Any, want_status: int, code: str) -> None:
    assert (status, body["code"]) == (want_status, code), body
    assert body["message"]


# --------------------------------------------------------------------------- commands and auth


async def test_a_call_started_over_rest_rings_a_websocket_peer(
    relay_api: tuple[RunningServer, Api],
) -> None:
    running, api = relay_api
    async for connect in _connector(running.ws_url):
        a, b = await _joined(connect, "r", "a", "b")
        status, body = await api.call(
            "POST", "/rooms/r/calls", token=token(a), body={"targets": [b.peer_id]}
        )
        assert status == 201, body
        call = body["call"]
        assert (call["status"], call["started_by"], call["targets"]) == (
            "ringing",
            a.peer_id,
            [b.peer_id],
        )
        # Exactly what a socket-started call sends: a's socket hears call_started (no ref) ...
        await state(a, "call_started", call_id=call["call_id"])
        # ... and b is rung.
        await b.expect("incoming_call", call_id=call["call_id"], from_peer_id=a.peer_id)
        await state(b, "call_started", call_id=call["call_id"])
        status, body = await api.call(
            "POST", f"/calls/{call['call_id']}/accept", token=token(b), data=""
        )
        assert (status, body["call"]["status"]) == (200, "active")
        await everyone((a, b), "participant_joined", participants=[a.peer_id, b.peer_id])
        status, body = await api.call("POST", f"/calls/{call['call_id']}/leave", token=token(a))
        assert (status, body["call"]["participants"]) == (200, [b.peer_id])
        await everyone((a, b), "participant_left")
        status, body = await api.call("POST", f"/calls/{call['call_id']}/end", token=token(b))
        assert (status, body["call"]["reason"]) == (200, "ended")
        await everyone((a, b), "call_ended", reason="ended")


async def test_rest_start_without_targets_and_decline(relay_api: tuple[RunningServer, Api]) -> None:
    running, api = relay_api
    async for connect in _connector(running.ws_url):
        a, b = await _joined(connect, "r", "a", "b")
        status, body = await api.call("POST", "/rooms/r/calls", token=token(a))  # no body
        assert status == 201
        call_id = body["call"]["call_id"]
        assert body["call"]["targets"] == [b.peer_id]
        status, body = await api.call("POST", f"/calls/{call_id}/decline", token=token(b))
        assert (status, body["call"]["reason"]) == (200, "all_declined")
        await state(a, "call_started")
        await state(a, "call_declined")
        await state(a, "call_ended", reason="all_declined")


async def test_rest_auth_and_errors(relay_api: tuple[RunningServer, Api]) -> None:
    running, api = relay_api
    async for connect in _connector(running.ws_url):
        a, b = await _joined(connect, "r", "a", "b")
        (x,) = await _joined(connect, "other", "x")
        call_id = await ring(a, b)
        # 401: no token, a malformed header, an unknown token.
        for headers in ({}, {"Authorization": "Basic abc"}, {"Authorization": "Bearer "},
                        {"Authorization": "Bearer not-a-token"}):  # fmt: skip
            async with api.http.post(f"{api.base}/calls/{call_id}/accept", headers=headers) as resp:
                error(resp.status, await resp.json(), 401, "unauthorized")
                assert resp.headers["WWW-Authenticate"] == "Bearer"
        status, body = await api.call("POST", "/rooms/r/calls", token="nope")
        error(status, body, 401, "unauthorized")
        # Another room: 403 to start a call there, 404 for its calls.
        status, body = await api.call("POST", "/rooms/r/calls", token=token(x))
        error(status, body, 403, "not_in_room")
        for action in ("accept", "decline", "leave", "end"):
            status, body = await api.call("POST", f"/calls/{call_id}/{action}", token=token(x))
            error(status, body, 404, "call_not_found")
        status, body = await api.call("POST", "/calls/c_nope/accept", token=token(a))
        error(status, body, 404, "call_not_found")
        # 409: an invalid transition, with the WebSocket's code and message.
        status, body = await api.call("POST", f"/calls/{call_id}/end", token=token(b))
        error(status, body, 409, "invalid_transition")
        status, body = await api.call("POST", "/rooms/r/calls", token=token(a))
        error(status, body, 409, "invalid_transition")
        assert body["message"].startswith(f"busy: already in call {call_id}")
        # 400 / 404 for bad bodies and targets.
        status, body = await api.call("POST", "/rooms/r/calls", token=token(b), data="{nope")
        error(status, body, 400, "bad_json")
        for bad in ([1], {"targets": "p_x"}, {"targets": [1]}):
            status, body = await api.call("POST", "/rooms/r/calls", token=token(b), body=bad)
            error(status, body, 400, "bad_message")
        status, body = await api.call(
            "POST", "/rooms/r/calls", token=token(b), body={"targets": ["p_000000000000"]}
        )
        error(status, body, 404, "unknown_peer")
        status, body = await api.call(
            "POST", "/rooms/r/calls", token=token(b), body={"targets": [x.peer_id]}
        )
        error(status, body, 403, "not_in_room")
        status, body = await api.call("POST", "/rooms/r/calls", token=token(b), data="x" * 300_000)
        error(status, body, 413, "too_large")
        # None of that reached anyone.
        for client in (a, b, x):
            await client.ping_roundtrip()


async def test_a_token_dies_with_its_peer(relay_api: tuple[RunningServer, Api]) -> None:
    running, api = relay_api
    async for connect in _connector(running.ws_url):
        a, b = await _joined(connect, "r", "a", "b")
        old = token(a)
        await a.send(type="leave")
        await b.expect("peer_left")
        status, body = await api.call("POST", "/rooms/r/calls", token=old)
        error(status, body, 401, "unauthorized")
        welcome = await a.join("r")
        assert welcome["session_token"] != old
        status, _ = await api.call("POST", "/rooms/r/calls", token=welcome["session_token"])
        assert status == 201


# --------------------------------------------------------------------------- history


async def test_history_newest_first_with_pagination(relay_api: tuple[RunningServer, Api]) -> None:
    running, api = relay_api
    async for connect in _connector(running.ws_url):
        a, b = await _joined(connect, "r", "a", "b")
        ids = []
        for _ in range(5):
            call_id = await ring(a, b)
            await a.send(type="end_call", call_id=call_id)
            await everyone((a, b), "call_ended")
            ids.append(call_id)
        status, page = await api.history("r", limit=2)
        assert status == 200
        seen = [c["call_id"] for c in page["calls"]]
        while page["next_cursor"] is not None:
            status, page = await api.history("r", limit=2, cursor=page["next_cursor"])
            assert status == 200
            seen += [c["call_id"] for c in page["calls"]]
        assert seen == ids[::-1]
        status, page = await api.history("r")
        assert [c["reason"] for c in page["calls"]] == ["cancelled"] * 5
        assert page["next_cursor"] is None
        status, page = await api.history("empty-room")
        assert (status, page) == (200, {"calls": [], "next_cursor": None})
        for query in ({"limit": 0}, {"limit": 101}, {"limit": "x"}, {"cursor": "bogus!"}):
            status, body = await api.history("r", **query)
            error(status, body, 400, "bad_message")
        status, body = await api.call("GET", f"/calls/{ids[0]}")  # no auth for reads
        assert status == 200
        assert body["call"]["call_id"] == ids[0]
        assert [e["event"] for e in body["events"]] == ["call_started", "call_ended"]
        assert body["events"][0]["targets"] == [b.peer_id]
        status, body = await api.call("GET", "/calls/c_nope")
        error(status, body, 404, "call_not_found")


async def _ended(api: Api, call_id: str) -> dict[str, Any]:
    """The call once the relay has ended it (a restored call waits for its members first)."""
    async with asyncio.timeout(20):
        while True:
            status, body = await api.call("GET", f"/calls/{call_id}")
            assert status == 200, body
            if body["call"]["status"] == "ended":
                return dict(body)
            await asyncio.sleep(0.05)


async def test_history_survives_a_restart_and_a_call_nobody_resumes_ends_relay_restart(
    tmp_path: Path,
) -> None:
    settings = ServerSettings(port=0, db_path=str(tmp_path / "calls.db"), resume_grace_s=0.3)
    async with aiohttp.ClientSession() as session, start_server(settings) as running:

        async def connect() -> Client:
            return Client(await session.ws_connect(running.ws_url))

        a, b, c, d = await _joined(connect, "r", "a", "b", "c", "d")
        done = await ring(a, b)
        await b.send(type="accept_call", call_id=done)
        await everyone((a, b), "participant_joined")
        await a.send(type="end_call", call_id=done)
        await everyone((a, b), "call_ended", reason="ended")
        live = await ring(c, d)
        await d.send(type="accept_call", call_id=live)
        joined = await everyone((c, d), "participant_joined")
        await asyncio.sleep(0.2)  # the call runs for a while before the relay stops
        stopping = time.time()
        # Leaving the block stops the relay gracefully, the call active, its peers connected.
    stopped = time.time()
    # A new relay on the same file. Nobody comes back to the call within the resume window.
    async with start_server(settings) as running, aiohttp.ClientSession() as http:
        api = Api(http, running.http_url)
        body = await _ended(api, live)
        status, page = await api.history("r")
        assert status == 200
        first, second = page["calls"]
        assert first == body["call"]
        assert first["reason"] == "relay_restart"
        assert first["participants"] == [c.peer_id, d.peer_id]
        # Ended when the old relay stopped (its shutdown stamp), not at its last event.
        assert stopping <= first["ended_at"] <= stopped
        answered = joined["call"]["answered_at"]
        assert first["duration_s"] == pytest.approx(first["ended_at"] - answered)
        assert first["duration_s"] >= 0.2
        assert (second["call_id"], second["reason"]) == (done, "ended")
        assert second["duration_s"] >= 0
        assert [e["event"] for e in body["events"]] == [
            "call_started",
            "participant_joined",
            "call_ended",
        ]
        assert body["events"][-1]["reason"] == "relay_restart"
        assert "peer_id" in body["events"][-1] and body["events"][-1]["peer_id"] is None


async def test_calls_found_unfinished_in_the_file_end_relay_restart(tmp_path: Path) -> None:
    """As after a crash: events in the file that no graceful stop ever saw."""
    path = tmp_path / "crashed.db"
    async with SQLiteStore(path) as store:
        await store.append(
            [
                Event(
                    call_id="c_crash",
                    room="r",
                    seq=1,
                    kind=CallEvent.CALL_STARTED,
                    at=100.0,
                    peer_id="p_a",
                    targets=("p_b",),
                )
            ]
        )
        await store.append(
            [
                Event(
                    call_id="c_crash",
                    room="r",
                    seq=2,
                    kind=CallEvent.PARTICIPANT_JOINED,
                    at=103.0,
                    peer_id="p_b",
                )
            ]
        )
    settings = ServerSettings(port=0, db_path=str(path), resume_grace_s=0)
    async with start_server(settings) as running, aiohttp.ClientSession() as http:
        # No sign of life after its last event: the call ends there (a lower bound).
        body = await _ended(Api(http, running.http_url), "c_crash")
        assert body["call"]["reason"] == "relay_restart"
        assert (body["call"]["ended_at"], body["call"]["duration_s"]) == (103.0, 0.0)
        # The restarted relay starts a fresh call in the same room normally.
        async for connect in _connector(running.ws_url):
            a, b = await _joined(connect, "r", "a", "b")
            await ring(a, b)
            _, page = await Api(http, running.http_url).history("r")
            assert [c["status"] for c in page["calls"]] == ["ringing", "ended"]


async def test_a_crashed_relays_call_ends_at_its_last_liveness_stamp(tmp_path: Path) -> None:
    """The relay stamps the store while calls are live: a crash loses at most one interval."""
    path = tmp_path / "crashed.db"
    started = Event(call_id="c_crash", room="r", seq=1, kind=CallEvent.CALL_STARTED, at=100.0,
                    peer_id="p_a", targets=("p_b",))  # fmt: skip
    answered = Event(call_id="c_crash", room="r", seq=2, kind=CallEvent.PARTICIPANT_JOINED,
                     at=103.0, peer_id="p_b")  # fmt: skip
    async with SQLiteStore(path) as store:
        await store.append([started])
        await store.append([answered])
        await store.mark_alive(160.0)
    settings = ServerSettings(port=0, db_path=str(path), resume_grace_s=0)
    async with start_server(settings) as running, aiohttp.ClientSession() as http:
        body = await _ended(Api(http, running.http_url), "c_crash")
        assert (body["call"]["ended_at"], body["call"]["duration_s"]) == (160.0, 57.0)


async def test_concurrent_commands_are_applied_one_at_a_time(
    relay_api: tuple[RunningServer, Api],
) -> None:
    running, api = relay_api
    async for connect in _connector(running.ws_url):
        a, b, c, d = await _joined(connect, "r", "a", "b", "c", "d")
        call_id = await ring(a, b, c, d)
        # Three declines at once: exactly one of them is the last and ends the call.
        results = await asyncio.gather(
            *(api.call("POST", f"/calls/{call_id}/decline", token=token(t)) for t in (b, c, d))
        )
        assert [status for status, _ in results] == [200, 200, 200]
        reasons = [body["call"].get("reason") for _, body in results]
        assert (reasons.count("all_declined"), reasons.count(None)) == (1, 2)
        events = [(await a.expect("call_state"))["event"] for _ in range(4)]
        assert events == ["call_declined"] * 3 + ["call_ended"]
        # Two peers calling each other at once: both calls ring (being rung is not being busy),
        # but each caller is now in its own ringing call, so neither can accept the other's.
        first, second = await asyncio.gather(
            api.call("POST", "/rooms/r/calls", token=token(a), body={"targets": [b.peer_id]}),
            api.call("POST", "/rooms/r/calls", token=token(b), body={"targets": [a.peer_id]}),
        )
        assert (first[0], second[0]) == (201, 201)
        status, body = await api.call(
            "POST", f"/calls/{first[1]['call']['call_id']}/accept", token=token(b)
        )
        error(status, body, 409, "invalid_transition")  # b is ringing a in its own call
        assert body["message"].startswith("busy: ")
