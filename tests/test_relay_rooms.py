"""Pure parts of the relay: room membership and routing, and settings validation."""

from __future__ import annotations

import re
from typing import Any

import pytest

from signaling_server.protocol import (
    MAX_MESSAGE_BYTES,
    ErrorCode,
    IceServerInfo,
    PeerInfo,
    ProtocolError,
)
from signaling_server.rooms import Rooms, new_peer_id, new_resume_token
from signaling_server.settings import ServerSettings, worst_case_welcome_bytes


def test_peer_ids_and_tokens_look_random() -> None:
    ids = {new_peer_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(re.fullmatch(r"p_[0-9a-f]{12}", i) for i in ids)
    tokens = {new_resume_token() for _ in range(100)}
    assert len(tokens) == 100
    assert all(len(t) >= 32 for t in tokens)


def test_session_tokens_find_the_member_only_while_it_is_joined() -> None:
    rooms = Rooms(max_peers_per_room=10)
    a, b = rooms.join("lobby"), rooms.join("other")
    assert len(a.session_token) >= 43  # 256 random bits
    assert a.session_token not in (b.session_token, a.resume_token)
    assert rooms.by_session_token(a.session_token) is a
    assert rooms.by_session_token(b.session_token) is b
    assert rooms.by_session_token(a.resume_token) is None
    assert rooms.by_session_token("") is None
    rooms.leave(a.peer_id)
    assert rooms.by_session_token(a.session_token) is None
    assert rooms.by_session_token(b.session_token) is b


def test_join_assigns_unique_ids_and_default_names() -> None:
    rooms = Rooms(max_peers_per_room=10)
    a = rooms.join("lobby", "alice")
    b = rooms.join("lobby")
    assert a.peer_id != b.peer_id
    assert (a.name, a.room) == ("alice", "lobby")
    assert b.name == b.peer_id  # no name given: the id stands in
    assert a.resume_token != b.resume_token
    assert a.info() == PeerInfo(peer_id=a.peer_id, name="alice")
    assert rooms.get(a.peer_id) is a
    assert rooms.get("p_nobody") is None


def test_duplicate_names_are_fine() -> None:
    rooms = Rooms(max_peers_per_room=10)
    a, b = rooms.join("r", "bot"), rooms.join("r", "bot")
    assert a.peer_id != b.peer_id


def test_members_and_others_keep_join_order() -> None:
    rooms = Rooms(max_peers_per_room=10)
    a, b, c = (rooms.join("r", n) for n in "abc")
    x = rooms.join("elsewhere")
    assert rooms.members("r") == [a, b, c]
    assert rooms.others(b.peer_id) == [a, c]
    assert rooms.others(x.peer_id) == []
    assert rooms.others("p_unknown") == []
    assert rooms.members("no such room") == []
    assert (rooms.room_count, rooms.peer_count) == (2, 4)


def test_leave_removes_and_empty_rooms_vanish() -> None:
    rooms = Rooms(max_peers_per_room=10)
    a, b = rooms.join("r"), rooms.join("r")
    assert rooms.leave(a.peer_id) is a
    assert rooms.leave(a.peer_id) is None  # idempotent
    assert rooms.get(a.peer_id) is None
    assert rooms.members("r") == [b]
    assert rooms.leave(b.peer_id) is b
    assert (rooms.room_count, rooms.peer_count) == (0, 0)
    assert rooms.leave("p_never") is None


def test_room_capacity_is_per_room() -> None:
    rooms = Rooms(max_peers_per_room=2)
    a = rooms.join("r")
    rooms.join("r")
    with pytest.raises(ProtocolError) as info:
        rooms.join("r")
    assert info.value.code is ErrorCode.RATE_LIMITED
    assert "full" in info.value.message
    assert rooms.peer_count == 2
    rooms.join("other")  # another room is unaffected
    rooms.leave(a.peer_id)
    rooms.join("r")  # a freed seat can be taken again


def test_route_only_within_a_room() -> None:
    rooms = Rooms(max_peers_per_room=10)
    a, b = rooms.join("r"), rooms.join("r")
    c = rooms.join("other")
    assert rooms.route(a.peer_id, b.peer_id) is b
    assert rooms.route(a.peer_id, a.peer_id) is a
    for sender, target, code in [
        (a.peer_id, c.peer_id, ErrorCode.NOT_IN_ROOM),
        (c.peer_id, a.peer_id, ErrorCode.NOT_IN_ROOM),
        (a.peer_id, "p_ghost", ErrorCode.UNKNOWN_PEER),
        ("p_ghost", a.peer_id, ErrorCode.NOT_JOINED),
    ]:
        with pytest.raises(ProtocolError) as info:
            rooms.route(sender, target)
        assert info.value.code is code
    rooms.leave(b.peer_id)
    with pytest.raises(ProtocolError) as info:
        rooms.route(a.peer_id, b.peer_id)
    assert info.value.code is ErrorCode.UNKNOWN_PEER


def test_rooms_rejects_zero_capacity() -> None:
    with pytest.raises(ValueError, match="max_peers_per_room"):
        Rooms(max_peers_per_room=0)


# --------------------------------------------------------------------------- settings


def test_settings_defaults() -> None:
    s = ServerSettings()
    assert (s.host, s.port, s.ice_servers) == ("127.0.0.1", 8080, ())
    assert s.max_message_bytes == MAX_MESSAGE_BYTES
    assert s.heartbeat_s == 20.0
    assert s.max_peers_per_room == 64
    assert s.max_send_queue_bytes >= s.max_message_bytes
    assert (s.db_path, s.ring_timeout_s) == (None, 90.0)
    with pytest.raises(AttributeError):
        s.port = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"host": ""}, "host"),
        ({"port": -1}, "port"),
        ({"port": 65536}, "port"),
        ({"port": "80"}, "port"),
        ({"port": True}, "port"),
        ({"ice_servers": [IceServerInfo(urls=["stun:h"])]}, "tuple"),
        ({"ice_servers": ("stun:h",)}, "IceServerInfo"),
        ({"ice_servers": (IceServerInfo(urls=[]),)}, "non-empty"),
        ({"ice_servers": (IceServerInfo(urls="stun:h"),)}, "non-empty"),  # type: ignore[arg-type]
        ({"ice_servers": (IceServerInfo(urls=["http://h"]),)}, "stun:"),
        ({"max_message_bytes": 100}, "max_message_bytes"),
        ({"max_message_bytes": 1.5e6}, "max_message_bytes"),
        ({"heartbeat_s": 0}, "heartbeat_s"),
        ({"heartbeat_s": -1.0}, "heartbeat_s"),
        ({"heartbeat_s": float("nan")}, "heartbeat_s"),
        ({"max_peers_per_room": 0}, "max_peers_per_room"),
        ({"max_send_queue_bytes": 1000}, "max_send_queue_bytes"),
        ({"db_path": ""}, "db_path"),
        ({"db_path": 3}, "db_path"),
        ({"ring_timeout_s": 0}, "ring_timeout_s"),
        ({"ring_timeout_s": float("inf")}, "ring_timeout_s"),
        ({"ring_timeout_s": True}, "ring_timeout_s"),
        # A full room's welcome must fit under the cap clients enforce.
        ({"max_peers_per_room": 10_000}, "welcome for a full room"),
        ({"max_message_bytes": 8192, "max_send_queue_bytes": 8192}, "welcome for a full room"),
    ],
)
def test_settings_validation(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ServerSettings(**kwargs)


def test_settings_accept_valid_custom_values() -> None:
    ice = (
        IceServerInfo(urls=["stun:127.0.0.1:3478"]),
        IceServerInfo(urls=["turn:127.0.0.1:3478?transport=udp"], username="u", credential="p"),
    )
    s = ServerSettings(host="::1", port=0, ice_servers=ice, heartbeat_s=1, max_peers_per_room=2,
                       max_message_bytes=8192, max_send_queue_bytes=8192, db_path="calls.db",
                       ring_timeout_s=0.25)  # fmt: skip
    assert s.ice_servers == ice
    assert (s.db_path, s.ring_timeout_s) == ("calls.db", 0.25)


def test_worst_case_welcome_grows_with_the_room() -> None:
    small = worst_case_welcome_bytes((), 1)
    big = worst_case_welcome_bytes((), 64)
    assert 0 < small < big < MAX_MESSAGE_BYTES
    assert big - small > 63 * 64 * 6  # every name escapes to many bytes per character
