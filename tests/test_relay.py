"""The relay end to end: a real server on 127.0.0.1 and real WebSocket clients."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import types
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, cast

import aiohttp
import pytest

from signaling_server import (
    RunningServer,
    ServerSettings,
    create_app,
    serve_forever,
    start_server,
)
from signaling_server.handlers import HUB_KEY, Connection, Hub
from signaling_server.protocol import (
    MAX_MESSAGE_BYTES,
    MAX_NAME_LENGTH,
    MAX_ROOM_LENGTH,
    IceServerInfo,
    parse_message,
)
from signaling_server.rooms import Rooms

SDP = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
QUIET_S = 0.3  # how long "receives nothing" waits


class Client:
    """A test client: raw JSON out, every frame in checked against the protocol."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.peer_id = ""
        self.session_token = ""

    async def send(self, **fields: Any) -> None:
        await self.ws.send_str(json.dumps(fields))

    async def recv(self, timeout: float = 5.0) -> dict[str, Any]:
        msg = await self.ws.receive(timeout=timeout)
        assert msg.type is aiohttp.WSMsgType.TEXT, msg
        parse_message(msg.data, origin="server")  # the relay only ever sends valid frames
        frame: dict[str, Any] = json.loads(msg.data)
        return frame

    async def expect(self, kind: str, **fields: Any) -> dict[str, Any]:
        frame = await self.recv()
        assert frame["type"] == kind, frame
        for key, value in fields.items():
            assert frame.get(key) == value, (key, frame)
        return frame

    async def expect_error(self, code: str, ref: Any = None) -> dict[str, Any]:
        frame = await self.expect("error", code=code)
        assert frame.get("ref") == ref, frame
        assert frame["message"]
        return frame

    async def expect_quiet(self, wait: float = QUIET_S) -> None:
        try:
            msg = await self.ws.receive(timeout=wait)
        except TimeoutError:
            return
        pytest.fail(f"expected nothing, got {msg}")

    async def expect_closed(self, code: int) -> None:
        msg = await self.ws.receive(timeout=5.0)
        assert msg.type is aiohttp.WSMsgType.CLOSE, msg
        assert msg.data == code, msg
        assert self.ws.close_code == code

    async def join(self, room: str, name: str | None = None, **extra: Any) -> dict[str, Any]:
        fields: dict[str, Any] = {"type": "join", "room": room, **extra}
        if name is not None:
            fields["name"] = name
        await self.send(**fields)
        welcome = await self.expect("welcome", room=room)
        self.peer_id = welcome["peer_id"]
        self.session_token = welcome["session_token"]
        return welcome

    async def ping_roundtrip(self) -> None:
        """Proves the connection works and that nothing was queued ahead of the pong."""
        await self.send(type="ping", id="probe")
        await self.expect("pong", ref="probe")


Connect = Callable[[], Awaitable[Client]]


@pytest.fixture
async def server() -> AsyncIterator[RunningServer]:
    # No resume grace: these tests are about what the room sees the moment a socket goes.
    async with start_server(ServerSettings(port=0, resume_grace_s=0)) as running:
        yield running


async def _connector(url: str) -> AsyncIterator[Connect]:
    async with aiohttp.ClientSession() as session:
        clients: list[Client] = []

        async def connect() -> Client:
            client = Client(await session.ws_connect(url, max_msg_size=4 * MAX_MESSAGE_BYTES))
            clients.append(client)
            return client

        yield connect
        for client in clients:
            await client.ws.close()


@pytest.fixture
async def connect(server: RunningServer) -> AsyncIterator[Connect]:
    async for c in _connector(server.ws_url):
        yield c


async def _joined(connect: Connect, room: str, *names: str) -> list[Client]:
    clients = []
    for name in names:
        client = await connect()
        await client.join(room, name)
        clients.append(client)
    # Drain the peer_joined notices so each test starts from a quiet inbox.
    for i, client in enumerate(clients):
        for later in clients[i + 1 :]:
            await client.expect("peer_joined", peer_id=later.peer_id)
    return clients


# --------------------------------------------------------------------------- join, leave, list


async def test_join_welcome_and_peer_joined(connect: Connect) -> None:
    a = await connect()
    welcome = await a.join("lobby", "alice")
    assert welcome["peers"] == []
    assert welcome["ice_servers"] == []
    assert welcome["protocol"] == 1
    assert welcome["resume_token"]
    assert len(welcome["session_token"]) >= 32
    assert "ref" not in welcome
    b = await connect()
    welcome_b = await b.join("lobby")  # no name: the peer id is the name
    assert welcome_b["peers"] == [{"peer_id": a.peer_id, "name": "alice"}]
    await a.expect("peer_joined", peer_id=b.peer_id, name=b.peer_id)
    assert welcome_b["resume_token"] != welcome["resume_token"]
    assert welcome_b["session_token"] != welcome["session_token"]
    c = await connect()
    welcome_c = await c.join("lobby", "carol")
    assert [p["peer_id"] for p in welcome_c["peers"]] == [a.peer_id, b.peer_id]  # oldest first
    await a.expect("peer_joined", peer_id=c.peer_id, name="carol")
    await b.expect("peer_joined", peer_id=c.peer_id, name="carol")


async def test_rooms_are_separate(connect: Connect) -> None:
    a, _ = await _joined(connect, "one", "a", "b")
    c = await connect()
    welcome = await c.join("two")
    assert welcome["peers"] == []
    await a.expect_quiet(0.1)  # no peer_joined across rooms


async def test_unique_peer_ids(connect: Connect) -> None:
    clients = [await connect() for _ in range(24)]
    welcomes = await asyncio.gather(*(c.join(f"room-{i % 3}") for i, c in enumerate(clients)))
    ids = {w["peer_id"] for w in welcomes}
    assert len(ids) == len(clients)


async def test_join_ignores_unknown_fields_and_unimplemented_resume(connect: Connect) -> None:
    a = await connect()
    welcome = await a.join("r", future_field={"x": 1}, resume_token="not-restored-yet", token="t")
    assert welcome["peer_id"].startswith("p_")


async def test_second_join_is_already_joined(connect: Connect) -> None:
    a = await connect()
    await a.join("r")
    await a.send(type="join", room="other", id="j2")
    await a.expect_error("already_joined", ref="j2")
    await a.send(type="list_peers", id=1)
    await a.expect("peer_list", peers=[], ref=1)  # still in the first room


async def test_leave_tells_the_room_and_the_socket_can_join_again(connect: Connect) -> None:
    a, b = await _joined(connect, "r", "a", "b")
    old_id = a.peer_id
    await a.send(type="leave", id="bye")
    await b.expect("peer_left", peer_id=old_id, reason="left")
    await a.send(type="list_peers", id=2)
    await a.expect_error("not_joined", ref=2)
    await a.send(type="leave", id=3)
    await a.expect_error("not_joined", ref=3)
    welcome = await a.join("r", "again")
    assert welcome["peer_id"] != old_id
    assert welcome["peers"] == [{"peer_id": b.peer_id, "name": "b"}]
    await b.expect("peer_joined", peer_id=a.peer_id, name="again")


async def test_dropped_socket_is_peer_left_disconnected(connect: Connect) -> None:
    a, b, c = await _joined(connect, "r", "a", "b", "c")
    await b.ws.close()
    await a.expect("peer_left", peer_id=b.peer_id, reason="disconnected")
    await c.expect("peer_left", peer_id=b.peer_id, reason="disconnected")
    await a.send(type="list_peers")
    assert (await a.expect("peer_list"))["peers"] == [{"peer_id": c.peer_id, "name": "c"}]


async def test_abruptly_dropped_socket_is_peer_left_disconnected(connect: Connect) -> None:
    a, b = await _joined(connect, "r", "a", "b")
    sock = b.ws.get_extra_info("socket")
    sock.shutdown(socket.SHUT_RDWR)  # no close frame: like a crashed client
    await a.expect("peer_left", peer_id=b.peer_id, reason="disconnected")


async def test_sending_to_a_vanishing_peer_does_not_disturb_the_sender(connect: Connect) -> None:
    a, b, c = await _joined(connect, "r", "a", "b", "c")
    b.ws.get_extra_info("socket").shutdown(socket.SHUT_RDWR)
    for i in range(50):  # some land while b's socket is closing, some after b is gone
        await a.send(type="offer", target_peer_id=b.peer_id, sdp=SDP, id=i)
    await a.send(type="ping", id="probe")
    frames = []
    while (frame := await a.recv())["type"] != "pong":
        frames.append(frame)
    if not frames or frames[0]["type"] != "peer_left":  # b's departure was noticed later
        frames.insert(0, await a.expect("peer_left"))
    assert frames[0] == {"type": "peer_left", "peer_id": b.peer_id, "reason": "disconnected"}
    # Offers handled once b was gone were refused, in order; earlier ones vanished quietly.
    assert all(f["type"] == "error" and f["code"] == "unknown_peer" for f in frames[1:])
    refs = [f["ref"] for f in frames[1:]]
    assert refs == list(range(50 - len(refs), 50))
    await c.expect("peer_left", peer_id=b.peer_id)
    await a.ping_roundtrip()


class FakeSocket:
    """Stands in for the server side of a WebSocket, to pin down the closing-socket path."""

    def __init__(self, *, closing: bool) -> None:
        self.closing = closing
        self.inbox: asyncio.Queue[aiohttp.WSMessage | None] = asyncio.Queue()
        self.sent: list[dict[str, Any]] = []
        self.got_frame = asyncio.Event()

    def feed(self, **fields: Any) -> None:
        self.inbox.put_nowait(aiohttp.WSMessage(aiohttp.WSMsgType.TEXT, json.dumps(fields), None))

    def __aiter__(self) -> FakeSocket:
        return self

    async def __anext__(self) -> aiohttp.WSMessage:
        msg = await self.inbox.get()
        if msg is None:
            raise StopAsyncIteration
        return msg

    async def send_str(self, data: str) -> None:
        if self.closing:  # what aiohttp raises once the socket is closing
            raise aiohttp.ClientConnectionResetError("Cannot write to closing transport")
        self.sent.append(json.loads(data))
        self.got_frame.set()

    def exception(self) -> BaseException | None:
        return None


async def test_sending_to_a_closing_socket_does_not_disturb_the_sender() -> None:
    hub = Hub(ServerSettings(port=0, resume_grace_s=0))
    request: Any = types.SimpleNamespace(transport=None, remote="test")
    closing, sender = FakeSocket(closing=True), FakeSocket(closing=False)
    tasks = [
        asyncio.create_task(Connection(hub, cast(Any, ws), request).run())
        for ws in (closing, sender)
    ]

    async def next_frame(ws: FakeSocket) -> dict[str, Any]:
        async with asyncio.timeout(5):
            while not ws.sent:
                ws.got_frame.clear()
                await ws.got_frame.wait()
        return ws.sent.pop(0)

    closing.feed(type="join", room="r")  # its welcome already fails to send
    sender.feed(type="join", room="r")
    welcome = await next_frame(sender)
    (target,) = welcome["peers"]
    for i in range(20):
        sender.feed(type="offer", target_peer_id=target["peer_id"], sdp=SDP, id=i)
    sender.feed(type="ping", id="after")
    assert await next_frame(sender) == {"type": "pong", "ref": "after"}  # no error, no crash
    closing.inbox.put_nowait(None)  # the closing socket's reader ends
    assert await next_frame(sender) == {
        "type": "peer_left", "peer_id": target["peer_id"], "reason": "disconnected"
    }  # fmt: skip
    sender.inbox.put_nowait(None)
    await asyncio.gather(*tasks)
    assert hub.rooms.peer_count == 0
    assert hub.connections == set()


async def test_peer_missing_heartbeats_is_dropped() -> None:
    settings = ServerSettings(port=0, heartbeat_s=0.2, resume_grace_s=0)
    async with start_server(settings) as running, aiohttp.ClientSession() as session:
        # autoping=False: this client never answers the relay's pings (it sees them instead).
        mute = Client(await session.ws_connect(running.ws_url, autoping=False))
        await mute.join("r")
        pings = 0
        while (msg := await mute.ws.receive(timeout=30)).type is aiohttp.WSMsgType.PING:
            pings += 1
        ended = (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR)
        assert pings >= 1 and msg.type in ended, msg  # pinged, then cut off
        # Whoever joins now finds it gone, or is told it went. (A peer waiting all along would be
        # pinged too, and a loaded machine could make it miss the 100 ms pong deadline itself.)
        live = Client(await session.ws_connect(running.ws_url))
        welcome = await live.join("r")
        if welcome["peers"]:
            assert welcome["peers"] == [{"peer_id": mute.peer_id, "name": mute.peer_id}]
            await live.expect("peer_left", peer_id=mute.peer_id, reason="disconnected")
        await live.send(type="list_peers", id="after")
        await live.expect("peer_list", ref="after", peers=[])
        for client in (mute, live):
            await client.ws.close()


async def test_list_peers_lists_the_others(connect: Connect) -> None:
    a, b, c = await _joined(connect, "r", "a", "b", "c")
    await b.send(type="list_peers", id="lp")
    frame = await b.expect("peer_list", ref="lp")
    assert frame["peers"] == [
        {"peer_id": a.peer_id, "name": "a"},
        {"peer_id": c.peer_id, "name": "c"},
    ]


async def test_room_full_is_rate_limited() -> None:
    async with start_server(ServerSettings(port=0, max_peers_per_room=2)) as running:
        async for connect in _connector(running.ws_url):
            await _joined(connect, "r", "a", "b")
            c = await connect()
            await c.send(type="join", room="r", id="full")
            frame = await c.expect_error("rate_limited", ref="full")
            assert "full" in frame["message"]
            await c.join("elsewhere")  # the socket is fine and may join another room


async def test_room_and_name_length_caps(connect: Connect) -> None:
    a = await connect()
    for fields in (
        {"room": "r" * (MAX_ROOM_LENGTH + 1)},
        {"room": ""},
        {"room": "r", "name": "n" * (MAX_NAME_LENGTH + 1)},
        {"room": "r\n"},
    ):
        await a.send(type="join", id="cap", **fields)
        await a.expect_error("bad_message", ref="cap")
    welcome = await a.join("r" * MAX_ROOM_LENGTH, "n" * MAX_NAME_LENGTH)
    assert welcome["room"] == "r" * MAX_ROOM_LENGTH


# --------------------------------------------------------------------------- relay


async def test_offer_answer_candidates_are_relayed_with_sender(connect: Connect) -> None:
    a, b = await _joined(connect, "r", "a", "b")
    await a.send(type="offer", target_peer_id=b.peer_id, sdp=SDP, call_id="c1", id="o1")
    frame = await b.expect("offer", from_peer_id=a.peer_id, sdp=SDP, call_id="c1")
    assert set(frame) == {"type", "from_peer_id", "sdp", "call_id"}  # no target, no id/ref
    await b.send(type="answer", target_peer_id=a.peer_id, sdp=SDP + "a=x\r\n")
    await a.expect("answer", from_peer_id=b.peer_id, sdp=SDP + "a=x\r\n")
    cand = "candidate:1 1 udp 2130706431 127.0.0.1 40000 typ host"
    await a.send(
        type="ice_candidate", target_peer_id=b.peer_id, candidate=cand, sdp_mid="0",
        sdp_m_line_index=0,
    )  # fmt: skip
    await b.expect(
        "ice_candidate", from_peer_id=a.peer_id, candidate=cand, sdp_mid="0", sdp_m_line_index=0
    )
    await a.send(type="ice_candidate", target_peer_id=b.peer_id, candidate="")  # end of candidates
    frame = await b.expect("ice_candidate", from_peer_id=a.peer_id, candidate="")
    assert "sdp_mid" not in frame
    await a.expect_quiet(0.1)  # a successful relay is not acknowledged


async def test_relay_preserves_order(connect: Connect) -> None:
    a, b = await _joined(connect, "r", "a", "b")
    for i in range(200):
        await a.send(type="ice_candidate", target_peer_id=b.peer_id, candidate=f"c{i}")
    got = [(await b.expect("ice_candidate"))["candidate"] for _ in range(200)]
    assert got == [f"c{i}" for i in range(200)]


async def test_offer_to_unknown_peer(connect: Connect) -> None:
    (a,) = await _joined(connect, "r", "a")
    await a.send(type="offer", target_peer_id="p_000000000000", sdp=SDP, id=11)
    await a.expect_error("unknown_peer", ref=11)
    await a.send(type="ice_candidate", target_peer_id="nobody", candidate="", id=12)
    await a.expect_error("unknown_peer", ref=12)


async def test_offer_to_a_departed_peer_is_unknown_peer(connect: Connect) -> None:
    a, b = await _joined(connect, "r", "a", "b")
    await b.send(type="leave")
    await a.expect("peer_left", peer_id=b.peer_id, reason="left")
    await a.send(type="answer", target_peer_id=b.peer_id, sdp=SDP, id="late")
    await a.expect_error("unknown_peer", ref="late")
    await b.expect_quiet(0.1)


async def test_offer_to_another_room_is_refused_and_never_arrives(connect: Connect) -> None:
    a, b = await _joined(connect, "r", "a", "b")
    (c,) = await _joined(connect, "other", "c")
    for kind, extra in (("offer", {"sdp": SDP}), ("answer", {"sdp": SDP}),
                        ("ice_candidate", {"candidate": ""})):  # fmt: skip
        await a.send(type=kind, target_peer_id=c.peer_id, id=f"x-{kind}", **extra)
        await a.expect_error("not_in_room", ref=f"x-{kind}")
    # The same kind of message to a same-room peer does arrive...
    await a.send(type="offer", target_peer_id=b.peer_id, sdp=SDP)
    await b.expect("offer", from_peer_id=a.peer_id)
    # ...while the other room's peer gets nothing: neither after a wait nor ahead of its pong.
    await c.expect_quiet()
    await c.ping_roundtrip()
    # And the other direction.
    await c.send(type="offer", target_peer_id=a.peer_id, sdp=SDP, id="back")
    await c.expect_error("not_in_room", ref="back")
    await a.expect_quiet(0.1)


async def test_relay_that_would_exceed_the_cap_is_too_large(connect: Connect) -> None:
    a, b = await _joined(connect, "r", "a", "b")
    # 2 bytes per character on the way in; JSON-escaped to 6 bytes on the way out.
    sdp = "é" * (MAX_MESSAGE_BYTES // 3)
    frame = json.dumps(
        {"type": "offer", "target_peer_id": b.peer_id, "sdp": sdp, "id": "wide"},
        ensure_ascii=False,
    )
    assert len(frame.encode()) <= MAX_MESSAGE_BYTES
    await a.ws.send_str(frame)
    await a.expect_error("too_large", ref="wide")
    await b.expect_quiet(0.1)
    await b.ping_roundtrip()
    # A non-ASCII SDP that fits once escaped is relayed intact.
    await a.send(type="offer", target_peer_id=b.peer_id, sdp="é" * 1000)
    await b.expect("offer", sdp="é" * 1000)


async def test_offer_to_self_is_relayed_back(connect: Connect) -> None:
    (a,) = await _joined(connect, "r", "a")
    await a.send(type="offer", target_peer_id=a.peer_id, sdp=SDP)
    await a.expect("offer", from_peer_id=a.peer_id)


# --------------------------------------------------------------------------- errors


async def test_bad_json(connect: Connect) -> None:
    a = await connect()
    for text in ("{", "not json", '{"type":"ping",}', "[" * 50_000, ""):
        await a.ws.send_str(text)
        await a.expect_error("bad_json")
    await a.ping_roundtrip()


async def test_bad_message(connect: Connect) -> None:
    a = await connect()
    await a.ws.send_str("[1, 2]")
    await a.expect_error("bad_message")
    await a.send(id=4)  # no type
    await a.expect_error("bad_message", ref=4)
    await a.send(type="join", id="j")  # no room
    await a.expect_error("bad_message", ref="j")
    await a.join("r")
    await a.send(type="offer", target_peer_id=5, sdp=SDP, id=6)
    await a.expect_error("bad_message", ref=6)
    await a.send(type="ping", id="x" * 1000)  # an id too long to echo
    await a.expect_error("bad_message")
    await a.ping_roundtrip()


async def test_binary_frame_is_bad_message(connect: Connect) -> None:
    a = await connect()
    await a.ws.send_bytes(b'{"type":"ping"}')
    frame = await a.expect_error("bad_message")
    assert "binary" in frame["message"]
    await a.ping_roundtrip()


async def test_unknown_type(connect: Connect) -> None:
    a = await connect()
    await a.send(type="teleport", id="t")
    await a.expect_error("unknown_type", ref="t")
    await a.send(type="welcome", id="w")  # a server->client type is not a request
    await a.expect_error("unknown_type", ref="w")
    await a.ping_roundtrip()


@pytest.mark.parametrize(
    "fields",
    [
        {"type": "start_call"},
        {"type": "start_call", "targets": ["p_1"]},
        {"type": "accept_call", "call_id": "c"},
        {"type": "decline_call", "call_id": "c"},
        {"type": "leave_call", "call_id": "c"},
        {"type": "end_call", "call_id": "c"},
    ],
)
async def test_call_messages_before_join_are_not_joined(
    connect: Connect, fields: dict[str, Any]
) -> None:
    a = await connect()
    await a.send(**fields, id="call")
    await a.expect_error("not_joined", ref="call")
    await a.ping_roundtrip()


async def test_too_large_frame_gets_an_error_and_the_socket_lives(connect: Connect) -> None:
    a, b = await _joined(connect, "r", "a", "b")
    pad = "x" * (MAX_MESSAGE_BYTES + 100)
    await a.send(type="offer", target_peer_id=b.peer_id, sdp=pad, id="big")
    frame = await a.expect_error("too_large")  # never parsed, so no ref
    assert str(MAX_MESSAGE_BYTES) in frame["message"]
    await b.expect_quiet(0.1)
    await a.ping_roundtrip()
    # Exactly at the cap is fine.
    head = json.dumps({"type": "offer", "target_peer_id": b.peer_id, "sdp": ""})[:-2]
    exact = head + "y" * (MAX_MESSAGE_BYTES - len(head) - 2) + '"}'
    assert len(exact) == MAX_MESSAGE_BYTES
    await a.ws.send_str(exact)
    assert len((await b.expect("offer"))["sdp"]) > MAX_MESSAGE_BYTES - 100


async def test_grossly_oversized_frame_closes_only_that_socket(connect: Connect) -> None:
    a, b = await _joined(connect, "r", "a", "b")
    await a.ws.send_str("x" * (3 * MAX_MESSAGE_BYTES))
    await a.expect_closed(aiohttp.WSCloseCode.MESSAGE_TOO_BIG)
    await b.expect("peer_left", peer_id=a.peer_id, reason="disconnected")
    await b.ping_roundtrip()


async def test_invalid_utf8_text_frame_closes_with_1007(connect: Connect) -> None:
    a, b = await _joined(connect, "r", "a", "b")
    await a.ws.send_frame(b'{"type":"ping","x":"\xff"}', aiohttp.WSMsgType.TEXT)
    await a.expect_closed(aiohttp.WSCloseCode.INVALID_TEXT)
    await b.expect("peer_left", peer_id=a.peer_id, reason="disconnected")


async def test_messages_before_join_are_not_joined(connect: Connect) -> None:
    a = await connect()
    b, _ = await _joined(connect, "r", "b", "c")
    for fields in (
        {"type": "list_peers"},
        {"type": "leave"},
        {"type": "offer", "target_peer_id": b.peer_id, "sdp": SDP},
        {"type": "answer", "target_peer_id": b.peer_id, "sdp": SDP},
        {"type": "ice_candidate", "target_peer_id": b.peer_id, "candidate": ""},
    ):
        await a.send(**fields, id=fields["type"])
        await a.expect_error("not_joined", ref=fields["type"])
    await b.expect_quiet(0.1)
    await a.send(type="ping", id=0)  # ping works before join
    await a.expect("pong", ref=0)


async def test_replies_echo_ref_and_omit_it_without_id(connect: Connect) -> None:
    a = await connect()
    await a.send(type="ping")
    assert await a.expect("pong") == {"type": "pong"}
    await a.send(type="ping", id=7)
    await a.expect("pong", ref=7)
    await a.send(type="join", room="r", id="join-1")
    await a.expect("welcome", ref="join-1")
    await a.send(type="list_peers", id=-3)
    await a.expect("peer_list", ref=-3)
    await a.send(type="list_peers")
    assert "ref" not in await a.expect("peer_list")
    await a.send(type="offer", target_peer_id="p_x", sdp="s")
    assert "ref" not in await a.expect_error("unknown_peer")


async def test_garbage_from_one_client_does_not_disturb_others(connect: Connect) -> None:
    a, b = await _joined(connect, "r", "a", "b")
    g = await connect()
    await g.join("r", "garbage")
    await a.expect("peer_joined", peer_id=g.peer_id)
    await b.expect("peer_joined", peer_id=g.peer_id)
    junk: list[tuple[str | bytes, str]] = [
        ("{{{", "bad_json"),
        (b"\x00\x01", "bad_message"),
        ('{"type":"hack"}', "unknown_type"),
        ('{"type":"offer"}', "bad_message"),
        ('{"type":"join","room":"r"}', "already_joined"),
        ('{"type":"offer","target_peer_id":"p_nope","sdp":"s"}', "unknown_peer"),
        ("z" * (MAX_MESSAGE_BYTES + 1), "too_large"),
    ]
    for round_ in range(5):
        for data, code in junk:
            if isinstance(data, bytes):
                await g.ws.send_bytes(data)
            else:
                await g.ws.send_str(data)
            await a.send(type="offer", target_peer_id=b.peer_id, sdp=f"{SDP}{round_}{code}")
            await b.send(type="answer", target_peer_id=a.peer_id, sdp=f"{SDP}{round_}{code}")
            await b.send(type="ice_candidate", target_peer_id=a.peer_id, candidate=code)
        for _data, code in junk:
            await g.expect_error(code)
            await b.expect("offer", from_peer_id=a.peer_id, sdp=f"{SDP}{round_}{code}")
            await a.expect("answer", from_peer_id=b.peer_id, sdp=f"{SDP}{round_}{code}")
            await a.expect("ice_candidate", from_peer_id=b.peer_id, candidate=code)
    for client in (a, b, g):
        await client.ping_roundtrip()


async def test_internal_error_is_reported_and_the_connection_survives(
    connect: Connect, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = await _joined(connect, "r", "a", "b")

    def broken(self: Rooms, peer_id: str) -> Any:
        raise RuntimeError("injected fault")

    with monkeypatch.context() as patch, caplog.at_level(logging.ERROR, "signaling_server"):
        patch.setattr(Rooms, "others", broken)
        await a.send(type="list_peers", id="boom")
        frame = await a.expect_error("internal", ref="boom")
        assert "injected" not in frame["message"]  # internals stay in the log
    records = [r for r in caplog.records if r.name.startswith("signaling_server")]
    assert records
    assert records[0].exc_info is not None
    assert "injected fault" in caplog.text
    await a.send(type="list_peers", id="ok")
    await a.expect("peer_list", ref="ok", peers=[{"peer_id": b.peer_id, "name": "b"}])
    await a.send(type="offer", target_peer_id=b.peer_id, sdp=SDP)
    await b.expect("offer", from_peer_id=a.peer_id)


async def test_sdp_is_not_logged_at_info(
    connect: Connect, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, "signaling_server"):
        a, b = await _joined(connect, "r", "a", "b")
        await a.send(type="offer", target_peer_id=b.peer_id, sdp="v=0 SECRET-SDP-BODY")
        await b.expect("offer")
        await b.ws.close()
        await a.expect("peer_left")
    assert "joined room" in caplog.text
    assert "SECRET-SDP-BODY" not in caplog.text


async def test_peer_that_does_not_read_is_dropped() -> None:
    settings = ServerSettings(port=0, max_send_queue_bytes=MAX_MESSAGE_BYTES, resume_grace_s=0)
    async with start_server(settings) as running:
        async for connect in _connector(running.ws_url):
            a, slow, c = await _joined(connect, "r", "a", "slow", "c")
            sdp = "s" * (MAX_MESSAGE_BYTES - 1000)
            # `slow` never reads: once the kernel buffers and its outbox are full, it is cut off
            # while the sender is neither blocked nor disturbed. Offers go out until the sender
            # hears of it (the count is what fills the buffers, the short waits only let the
            # relay keep up).
            sent = 0
            frame = None
            while frame is None and sent < 400:
                await a.send(type="offer", target_peer_id=slow.peer_id, sdp=sdp, id=sent)
                sent += 1
                try:
                    frame = await a.recv(timeout=0.01)
                except TimeoutError:
                    continue
            if frame is None:  # every offer is out; the relay may still be working through them
                frame = await a.recv(timeout=30)
            assert frame == {"type": "peer_left", "peer_id": slow.peer_id, "reason": "disconnected"}
            # Offers still in flight when `slow` went were refused, in order; the earlier ones
            # (relayed to it or dropped with it) were never answered.
            await a.send(type="ping", id="probe")
            refused = []
            while (frame := await a.recv())["type"] != "pong":
                assert frame["type"] == "error" and frame["code"] == "unknown_peer", frame
                refused.append(frame["ref"])
            assert frame == {"type": "pong", "ref": "probe"}
            assert refused == list(range(sent - len(refused), sent))
            await c.expect("peer_left", peer_id=slow.peer_id, reason="disconnected")
            await c.ping_roundtrip()


# --------------------------------------------------------------------------- config, HTTP, shutdown


async def test_welcome_serves_configured_ice_servers() -> None:
    ice = (
        IceServerInfo(urls=["stun:127.0.0.1:3478"]),
        IceServerInfo(urls=["turn:127.0.0.1:3478", "turns:127.0.0.1:5349"], username="u",
                      credential="secret"),
    )  # fmt: skip
    async with start_server(ServerSettings(port=0, ice_servers=ice)) as running:
        async for connect in _connector(running.ws_url):
            a = await connect()
            welcome = await a.join("r")
            assert welcome["ice_servers"] == [
                {"urls": ["stun:127.0.0.1:3478"]},
                {
                    "urls": ["turn:127.0.0.1:3478", "turns:127.0.0.1:5349"],
                    "username": "u",
                    "credential": "secret",
                },
            ]


async def test_healthz_counts_rooms_and_peers(server: RunningServer, connect: Connect) -> None:
    async with aiohttp.ClientSession() as http:

        async def health() -> Any:
            async with http.get(server.http_url + "/healthz") as resp:
                assert resp.status == 200
                return await resp.json()

        assert await health() == {"status": "ok", "rooms": 0, "peers": 0}
        a, _ = await _joined(connect, "r1", "a", "b")
        await _joined(connect, "r2", "c")
        await connect()  # connected but not joined: not a peer
        assert await health() == {"status": "ok", "rooms": 2, "peers": 3}
        await a.send(type="leave")
        await a.ping_roundtrip()
        assert await health() == {"status": "ok", "rooms": 2, "peers": 2}


async def test_plain_get_on_ws_is_refused(server: RunningServer) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.get(server.ws_url.replace("ws", "http", 1)) as resp,
    ):
        assert resp.status == 400


def test_running_server_urls() -> None:
    s = RunningServer(host="127.0.0.1", port=8123)
    assert s.ws_url == "ws://127.0.0.1:8123/ws"
    assert s.http_url == "http://127.0.0.1:8123"
    assert RunningServer(host="::1", port=1).ws_url == "ws://[::1]:1/ws"


async def test_port_zero_gets_a_real_port(server: RunningServer) -> None:
    assert server.host == "127.0.0.1"
    assert 0 < server.port < 65536
    with socket.create_connection((server.host, server.port), timeout=2):
        pass


async def test_graceful_shutdown_closes_clients_with_1001() -> None:
    async with aiohttp.ClientSession() as session:
        async with start_server(ServerSettings(port=0)) as running:
            a = Client(await session.ws_connect(running.ws_url))
            b = Client(await session.ws_connect(running.ws_url))
            unjoined = Client(await session.ws_connect(running.ws_url))
            await a.join("r")
            await b.join("r")
            await a.expect("peer_joined")
            await unjoined.ping_roundtrip()
            readers = [asyncio.create_task(c.ws.receive(timeout=10)) for c in (a, b, unjoined)]
            await asyncio.sleep(0.05)  # the readers are waiting when the server goes away
        # Leaving the block has shut the server down; every client saw a 1001 close (and no
        # peer_left storm before it)...
        for reader, client in zip(readers, (a, b, unjoined), strict=True):
            msg = await reader
            assert msg.type is aiohttp.WSMsgType.CLOSE, msg
            assert msg.data == aiohttp.WSCloseCode.GOING_AWAY
            assert client.ws.close_code == aiohttp.WSCloseCode.GOING_AWAY  # a clean handshake
        # ...and nothing is listening any more.
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((running.host, running.port), timeout=2).close()


async def test_serve_forever_runs_until_cancelled(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "signaling_server")
    started = asyncio.Event()

    class Spy(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "listening on" in record.getMessage():
                started.set()

    spy = Spy()
    logging.getLogger("signaling_server").addHandler(spy)
    try:
        task = asyncio.create_task(serve_forever(ServerSettings(port=0)))
        async with asyncio.timeout(5):
            await started.wait()
    finally:
        logging.getLogger("signaling_server").removeHandler(spy)
    (record,) = [r for r in caplog.records if "listening on" in r.getMessage()]
    ws_url = record.args[0] if isinstance(record.args, tuple) else None
    assert isinstance(ws_url, str)
    assert ws_url.startswith("ws://127.0.0.1:")
    async with aiohttp.ClientSession() as session:
        client = Client(await session.ws_connect(ws_url))
        await client.join("r")
        closed = asyncio.create_task(client.expect_closed(aiohttp.WSCloseCode.GOING_AWAY))
        await asyncio.sleep(0.01)  # like any live client, it is reading when the server stops
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await closed


async def test_no_task_left_pending_after_the_server_closes() -> None:
    before = asyncio.all_tasks()
    async with aiohttp.ClientSession() as session:
        async with start_server(ServerSettings(port=0)) as running:
            clients = [Client(await session.ws_connect(running.ws_url)) for _ in range(4)]
            for c in clients[:3]:
                await c.join("r")
            await clients[0].send(type="offer", target_peer_id=clients[1].peer_id, sdp=SDP)
            await clients[1].expect("peer_joined")
            await clients[3].ws.send_str("{garbage")
            await clients[3].expect_error("bad_json")
            await clients[2].ws.close()
        for c in clients:
            await c.ws.close()
    for _ in range(3):
        await asyncio.sleep(0)
    leftover = {t for t in asyncio.all_tasks() - before if not t.done()}
    assert leftover == set(), leftover


async def test_create_app_keeps_state_per_app() -> None:
    first, second = create_app(ServerSettings(port=0)), create_app(ServerSettings(port=0))
    assert first[HUB_KEY] is not second[HUB_KEY]
    assert first[HUB_KEY].rooms.peer_count == 0
