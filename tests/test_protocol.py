"""Wire protocol v1: parse/dump round trips, every parse-time error code, the caps."""

from __future__ import annotations

import json
from typing import Any

import pytest

from signaling_server.protocol import (
    CLIENT_MESSAGES,
    MAX_ID_LENGTH,
    MAX_MESSAGE_BYTES,
    MAX_NAME_LENGTH,
    MAX_ROOM_LENGTH,
    PROTOCOL_VERSION,
    SERVER_MESSAGES,
    AcceptCall,
    Answer,
    CallEvent,
    CallInfo,
    CallState,
    CallStatus,
    DeclineCall,
    EndCall,
    EndReason,
    Error,
    ErrorCode,
    IceCandidate,
    IceServerInfo,
    IncomingCall,
    Join,
    Leave,
    LeaveCall,
    ListPeers,
    Offer,
    PeerInfo,
    PeerJoined,
    PeerLeft,
    PeerList,
    Ping,
    Pong,
    ProtocolError,
    RelayedAnswer,
    RelayedIceCandidate,
    RelayedOffer,
    StartCall,
    Welcome,
    dump_message,
    parse_message,
)

SDP = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"

# Every message type, once with every field set and once with only the required ones.
CLIENT_EXAMPLES: dict[str, list[Any]] = {
    "join": [
        Join(room="lobby"),
        Join(room="lobby", name="bot 1", resume_token="r", token="t", id="j1"),
    ],
    "leave": [Leave(), Leave(id=3)],
    "list_peers": [ListPeers(), ListPeers(id="x")],
    "offer": [
        Offer(target_peer_id="p_1", sdp=SDP),
        Offer(target_peer_id="p_1", sdp=SDP, call_id="c1", id=1),
    ],
    "answer": [
        Answer(target_peer_id="p_1", sdp=SDP),
        Answer(target_peer_id="p_1", sdp=SDP, call_id="c1", id=2),
    ],
    "ice_candidate": [
        IceCandidate(target_peer_id="p_1", candidate=""),
        IceCandidate(
            target_peer_id="p_1",
            candidate="candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host",
            sdp_mid="0",
            sdp_m_line_index=0,
            id="c",
        ),
    ],
    "start_call": [StartCall(), StartCall(targets=["p_1", "p_2"], id=9)],
    "accept_call": [AcceptCall(call_id="c1"), AcceptCall(call_id="c1", id=1)],
    "decline_call": [DeclineCall(call_id="c1"), DeclineCall(call_id="c1", id=1)],
    "leave_call": [LeaveCall(call_id="c1"), LeaveCall(call_id="c1", id=1)],
    "end_call": [EndCall(call_id="c1"), EndCall(call_id="c1", id=1)],
    "ping": [Ping(), Ping(id=-1), Ping(id="")],
}

RINGING_CALL = CallInfo(
    call_id="c1",
    room="r",
    status=CallStatus.RINGING,
    started_by="p_1",
    participants=["p_1"],
    targets=["p_2", "p_3"],
    declined_by=[],
    started_at=1.0,
)
ENDED_CALL = CallInfo(
    call_id="c1",
    room="r",
    status=CallStatus.ENDED,
    started_by="p_1",
    participants=[],
    targets=["p_2"],
    declined_by=["p_2"],
    started_at=1.0,
    answered_at=2.0,
    ended_at=3.5,
    reason=EndReason.LAST_LEFT,
    duration_s=1.5,
)

SERVER_EXAMPLES: dict[str, list[Any]] = {
    "welcome": [
        Welcome(peer_id="p_1", room="lobby", peers=[], ice_servers=[], resume_token="r"),
        Welcome(
            peer_id="p_1",
            room="lobby",
            peers=[PeerInfo(peer_id="p_2", name="two"), PeerInfo(peer_id="p_3", name="p_3")],
            ice_servers=[
                IceServerInfo(urls=["stun:127.0.0.1:3478"]),
                IceServerInfo(urls=["turn:127.0.0.1:3478"], username="u", credential="c"),
            ],
            resume_token="r",
            ref="j1",
        ),
    ],
    "peer_joined": [PeerJoined(peer_id="p_2", name="two")],
    "peer_left": [PeerLeft(peer_id="p_2", reason="left"), PeerLeft(peer_id="p", reason="x")],
    "peer_list": [PeerList(peers=[]), PeerList(peers=[PeerInfo(peer_id="p", name="n")], ref=4)],
    "offer": [
        RelayedOffer(from_peer_id="p_2", sdp=SDP),
        RelayedOffer(from_peer_id="p_2", sdp=SDP, call_id="c1"),
    ],
    "answer": [
        RelayedAnswer(from_peer_id="p_2", sdp=SDP),
        RelayedAnswer(from_peer_id="p_2", sdp=SDP, call_id="c1"),
    ],
    "ice_candidate": [
        RelayedIceCandidate(from_peer_id="p_2", candidate=""),
        RelayedIceCandidate(from_peer_id="p_2", candidate="c", sdp_mid="a", sdp_m_line_index=1),
    ],
    "incoming_call": [
        IncomingCall(call_id="c1", from_peer_id="p_1", participants=["p_1"], targets=["p_2"])
    ],
    "call_state": [
        CallState(event=event, call=RINGING_CALL, peer_id="p_1", ref=ref)
        for event, ref in zip(CallEvent, [None, "s1", 7, None, "x"], strict=True)
    ]
    + [CallState(event=CallEvent.CALL_ENDED, call=ENDED_CALL)],
    "pong": [Pong(), Pong(ref="x")],
    "error": [
        Error(code=code, message=f"about {code}", ref=ref)
        for code, ref in zip(ErrorCode, [None, 1, "a"] * 5, strict=False)
    ],
}


def _cases(examples: dict[str, list[Any]]) -> list[Any]:
    return [
        pytest.param(m, id=f"{kind}-{i}") for kind, ms in examples.items() for i, m in enumerate(ms)
    ]


def _error(data: str | bytes, **kwargs: Any) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        parse_message(data, **kwargs)
    return info.value


def test_examples_cover_every_message_type() -> None:
    assert set(CLIENT_EXAMPLES) == set(CLIENT_MESSAGES)
    assert set(SERVER_EXAMPLES) == set(SERVER_MESSAGES)
    assert {e.code for e in SERVER_EXAMPLES["error"]} == set(ErrorCode)


@pytest.mark.parametrize("message", _cases(CLIENT_EXAMPLES))
def test_client_message_round_trip(message: Any) -> None:
    text = dump_message(message)
    assert json.loads(text)["type"] == message.type
    assert parse_message(text, origin="client") == message
    assert parse_message(text.encode(), origin="client") == message


@pytest.mark.parametrize("message", _cases(SERVER_EXAMPLES))
def test_server_message_round_trip(message: Any) -> None:
    text = dump_message(message)
    assert parse_message(text, origin="server") == message


def test_dump_leaves_out_none_fields_and_is_compact() -> None:
    assert dump_message(Offer(target_peer_id="p", sdp="s")) == (
        '{"type":"offer","target_peer_id":"p","sdp":"s"}'
    )
    assert json.loads(dump_message(Pong())) == {"type": "pong"}
    welcome = json.loads(
        dump_message(Welcome(peer_id="p", room="r", peers=[], ice_servers=[], resume_token="t"))
    )
    assert welcome["protocol"] == PROTOCOL_VERSION
    assert "ref" not in welcome
    assert json.loads(dump_message(Error(code=ErrorCode.NOT_JOINED, message="m")))["code"] == (
        "not_joined"
    )


def test_same_type_means_different_shapes_by_origin() -> None:
    client = '{"type":"offer","target_peer_id":"p_2","sdp":"s"}'
    relayed = '{"type":"offer","from_peer_id":"p_1","sdp":"s"}'
    assert parse_message(client, origin="client") == Offer(target_peer_id="p_2", sdp="s")
    assert parse_message(relayed, origin="server") == RelayedOffer(from_peer_id="p_1", sdp="s")
    assert _error(relayed, origin="client").code is ErrorCode.BAD_MESSAGE
    assert _error(client, origin="server").code is ErrorCode.BAD_MESSAGE


def test_unknown_fields_are_ignored_and_null_means_absent() -> None:
    msg = parse_message('{"type":"join","room":"r","name":null,"future":{"x":[1]},"id":7}')
    assert msg == Join(room="r", id=7)


@pytest.mark.parametrize(
    "data",
    [
        "",
        "{",
        "not json",
        '{"type":"ping",}',
        "{'type': 'ping'}",
        b"\xff\xfe{}",
        "[" * 100_000,  # deeper than the decoder's recursion limit
        '{"type":"ping","id":' + "1" * 5000 + "}",  # int longer than Python converts
    ],
)
def test_bad_json(data: str | bytes) -> None:
    err = _error(data)
    assert err.code is ErrorCode.BAD_JSON
    assert err.ref is None
    assert err.message.startswith("not valid JSON")


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ("[]", "JSON object"),
        ('"ping"', "JSON object"),
        ("42", "JSON object"),
        ("null", "JSON object"),
        ("{}", "'type'"),
        ('{"type":7}', "'type'"),
        ('{"type":null}', "'type'"),
        ('{"type":"join"}', "missing required field 'room'"),
        ('{"type":"join","room":5}', "join.room"),
        ('{"type":"join","room":""}', "'room' must not be empty"),
        ('{"type":"join","room":"   "}', "'room' must not be empty"),
        ('{"type":"join","room":"a\\u0000b"}', "control characters"),
        ('{"type":"join","room":"r","name":"a\\nb"}', "control characters"),
        ('{"type":"join","room":"r","name":""}', "'name' must not be empty"),
        ('{"type":"join","room":"r","name":["n"]}', "join.name"),
        ('{"type":"offer","sdp":"s"}', "target_peer_id"),
        ('{"type":"offer","target_peer_id":"p"}', "'sdp'"),
        ('{"type":"answer","target_peer_id":"p","sdp":{"s":1}}', "answer.sdp"),
        ('{"type":"ice_candidate","target_peer_id":"p"}', "'candidate'"),
        (
            '{"type":"ice_candidate","target_peer_id":"p","candidate":"","sdp_m_line_index":true}',
            "sdp_m_line_index",
        ),
        (
            '{"type":"ice_candidate","target_peer_id":"p","candidate":"","sdp_m_line_index":1.5}',
            "sdp_m_line_index",
        ),
        ('{"type":"start_call","targets":"p_1"}', "expected a list"),
        ('{"type":"start_call","targets":["p_1",2]}', "targets[1]"),
        ('{"type":"accept_call"}', "call_id"),
        ('{"type":"ping","id":1.5}', "ping.id"),
        ('{"type":"ping","id":[1]}', "ping.id"),
    ],
)
def test_bad_message(data: str, fragment: str) -> None:
    err = _error(data)
    assert err.code is ErrorCode.BAD_MESSAGE
    assert fragment in err.message


@pytest.mark.parametrize(
    ("data", "origin"),
    [
        ('{"type":"dance"}', "client"),
        (
            '{"type":"welcome","peer_id":"p","room":"r","peers":[],"ice_servers":[],'
            '"resume_token":"t"}',
            "client",
        ),
        ('{"type":"pong"}', "client"),
        ('{"type":"join","room":"r"}', "server"),
        ('{"type":"OFFER"}', "client"),
    ],
)
def test_unknown_type(data: str, origin: Any) -> None:
    err = _error(data, origin=origin)
    assert err.code is ErrorCode.UNKNOWN_TYPE


def test_unknown_type_message_is_clipped() -> None:
    err = _error(json.dumps({"type": "x" * 10_000}))
    assert err.code is ErrorCode.UNKNOWN_TYPE
    assert len(err.message) < 200


def test_error_with_unknown_code_from_server_is_bad_message() -> None:
    assert _error('{"type":"error","code":"nope","message":"m"}', origin="server").code is (
        ErrorCode.BAD_MESSAGE
    )


def _padded_ping(size: int) -> str:
    head = '{"type":"ping","pad":"'
    text = head + "x" * (size - len(head) - 2) + '"}'
    assert len(text) == size
    return text


def test_too_large_default_cap() -> None:
    assert parse_message(_padded_ping(MAX_MESSAGE_BYTES)) == Ping()
    err = _error(_padded_ping(MAX_MESSAGE_BYTES + 1))
    assert err.code is ErrorCode.TOO_LARGE
    assert str(MAX_MESSAGE_BYTES) in err.message
    assert err.ref is None


def test_too_large_counts_utf8_bytes_not_characters() -> None:
    # 2-byte characters: under the cap in characters, over it in bytes.
    text = '{"type":"ping","pad":"' + "é" * (MAX_MESSAGE_BYTES // 2) + '"}'
    assert len(text) < MAX_MESSAGE_BYTES
    assert _error(text).code is ErrorCode.TOO_LARGE


def test_too_large_custom_cap() -> None:
    assert parse_message(_padded_ping(1000), max_bytes=1000) == Ping()
    assert _error(_padded_ping(1001), max_bytes=1000).code is ErrorCode.TOO_LARGE
    # A larger cap admits what the default refuses.
    big = _padded_ping(MAX_MESSAGE_BYTES + 10)
    assert parse_message(big, max_bytes=2 * MAX_MESSAGE_BYTES) == Ping()


@pytest.mark.parametrize("ref", ["abc", 17, 0, -5, "x" * MAX_ID_LENGTH])
def test_errors_carry_the_id_as_ref(ref: str | int) -> None:
    for data in (
        {"type": "join", "id": ref},  # missing room
        {"type": "offer", "id": ref, "target_peer_id": 3, "sdp": "s"},
        {"type": "teleport", "id": ref},
    ):
        assert _error(json.dumps(data)).ref == ref


@pytest.mark.parametrize("bad_id", [True, False, 1.5, None, [1], {"a": 1}])
def test_ref_is_absent_when_the_id_is_not_a_string_or_integer(bad_id: Any) -> None:
    assert _error(json.dumps({"type": "teleport", "id": bad_id})).ref is None


def test_id_length_cap() -> None:
    assert parse_message(json.dumps({"type": "ping", "id": "i" * MAX_ID_LENGTH})) == Ping(
        id="i" * MAX_ID_LENGTH
    )
    err = _error(json.dumps({"type": "ping", "id": "i" * (MAX_ID_LENGTH + 1)}))
    assert err.code is ErrorCode.BAD_MESSAGE
    assert err.ref is None
    assert "'id'" in err.message
    err = _error('{"type":"ping","id":' + "9" * (MAX_ID_LENGTH + 1) + "}")
    assert err.code is ErrorCode.BAD_MESSAGE


def test_room_and_name_length_caps() -> None:
    assert parse_message(json.dumps({"type": "join", "room": "r" * MAX_ROOM_LENGTH})) == Join(
        room="r" * MAX_ROOM_LENGTH
    )
    ok = {"type": "join", "room": "r", "name": "n" * MAX_NAME_LENGTH}
    assert parse_message(json.dumps(ok)) == Join(room="r", name="n" * MAX_NAME_LENGTH)
    for data in (
        {"type": "join", "room": "r" * (MAX_ROOM_LENGTH + 1), "id": 1},
        {"type": "join", "room": "r", "name": "n" * (MAX_NAME_LENGTH + 1), "id": 1},
    ):
        err = _error(json.dumps(data))
        assert err.code is ErrorCode.BAD_MESSAGE
        assert "the limit is 64" in err.message
        assert err.ref == 1
    # Characters, not bytes: a full-length room of non-ASCII characters is fine.
    wide = "\U0001f600" * MAX_ROOM_LENGTH
    assert parse_message(json.dumps({"type": "join", "room": wide})) == Join(room=wide)


def test_join_validates_when_built_directly() -> None:
    with pytest.raises(ValueError, match="room"):
        Join(room="")
    with pytest.raises(ValueError, match="name"):
        Join(room="r", name="n" * (MAX_NAME_LENGTH + 1))


def test_protocol_error_str_names_the_code() -> None:
    err = ProtocolError(ErrorCode.NOT_IN_ROOM, "elsewhere", ref=3)
    assert str(err) == "not_in_room: elsewhere"
    assert (err.code, err.message, err.ref) == (ErrorCode.NOT_IN_ROOM, "elsewhere", 3)
