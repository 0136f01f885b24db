"""Room membership and routing: who is where, and may A's message reach B (pure, no I/O).

The relay consults this for every frame; keeping it free of sockets makes the routing rules
(unique ids, same-room-only delivery, room capacity) testable without a server. Rule violations
raise :class:`~signaling_server.protocol.ProtocolError` with the code the client should see.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass, replace

from .protocol import ErrorCode, PeerInfo, ProtocolError

PEER_ID_PREFIX = "p_"

#: Makes a member's resume token from (room, peer_id, name); the relay signs them (``resume``).
TokenIssuer = Callable[[str, str, str], str]


def new_peer_id() -> str:
    """A fresh random peer id (48 random bits: unguessable enough to not be enumerable)."""
    return PEER_ID_PREFIX + secrets.token_hex(6)


def new_resume_token() -> str:
    """An opaque secret a client may later present to reclaim its peer id."""
    return secrets.token_urlsafe(24)


def new_session_token() -> str:
    """The bearer secret for the REST call API (256 random bits; valid while the peer is joined)."""
    return secrets.token_urlsafe(32)


def _token_key(token: str) -> bytes:
    # Looked up by digest, so that a dict probe's timing says nothing about the secret itself.
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


@dataclass(frozen=True, slots=True, kw_only=True)
class Member:
    """One joined peer."""

    peer_id: str
    name: str
    room: str
    resume_token: str
    session_token: str

    def info(self) -> PeerInfo:
        return PeerInfo(peer_id=self.peer_id, name=self.name)


class Rooms:
    """All rooms of one relay; a room exists while it has at least one member."""

    def __init__(self, *, max_peers_per_room: int, issue_token: TokenIssuer | None = None) -> None:
        if max_peers_per_room < 1:
            raise ValueError("max_peers_per_room must be at least 1")
        self._max_peers = max_peers_per_room
        self._issue_token = issue_token or (lambda _room, _peer, _name: new_resume_token())
        self._members: dict[str, Member] = {}
        # room -> peer_id -> Member; dicts keep join order, so lists come out oldest first.
        self._rooms: dict[str, dict[str, Member]] = {}
        self._sessions: dict[bytes, Member] = {}

    @property
    def room_count(self) -> int:
        return len(self._rooms)

    @property
    def peer_count(self) -> int:
        return len(self._members)

    def join(self, room: str, name: str | None = None, *, peer_id: str | None = None) -> Member:
        """Add a new peer to ``room`` (the name defaults to its peer id).

        ``peer_id`` restores a known id (a resume after a relay restart); ``ValueError`` if that id
        is taken. Raises ``ProtocolError(rate_limited)`` when the room is full: capacity, like a
        rate, is a limit the client may retry against later.
        """
        if peer_id is not None and peer_id in self._members:
            raise ValueError(f"peer id {peer_id!r} is taken")
        members = self._rooms.get(room)
        if members is not None and len(members) >= self._max_peers:
            raise ProtocolError(
                ErrorCode.RATE_LIMITED,
                f"room {room!r} is full ({self._max_peers} peers); try again later",
            )
        while peer_id is None or peer_id in self._members:
            peer_id = new_peer_id()  # 48 random bits: a clash is rare but cheap to rule out
        name = peer_id if name is None else name
        member = Member(
            peer_id=peer_id,
            name=name,
            room=room,
            resume_token=self._issue_token(room, peer_id, name),
            session_token=new_session_token(),
        )
        self._members[peer_id] = member
        self._sessions[_token_key(member.session_token)] = member
        self._rooms.setdefault(room, {})[peer_id] = member
        return member

    def renew(self, peer_id: str, name: str | None = None) -> Member:
        """A resumed member: a fresh resume token and, if given, a new name (``KeyError`` if gone).

        The session token stays: REST clients holding it carry on across the resume.
        """
        old = self._members[peer_id]
        name = old.name if name is None else name
        member = replace(old, name=name, resume_token=self._issue_token(old.room, peer_id, name))
        self._members[peer_id] = member
        self._sessions[_token_key(member.session_token)] = member
        self._rooms[member.room][peer_id] = member  # an existing key keeps its (join) position
        return member

    def leave(self, peer_id: str) -> Member | None:
        """Remove a peer; returns it, or ``None`` if it was not (or no longer) a member."""
        member = self._members.pop(peer_id, None)
        if member is None:
            return None
        del self._sessions[_token_key(member.session_token)]
        members = self._rooms[member.room]
        del members[peer_id]
        if not members:
            del self._rooms[member.room]
        return member

    def get(self, peer_id: str) -> Member | None:
        return self._members.get(peer_id)

    def by_session_token(self, token: str) -> Member | None:
        """The joined peer a REST request acts as; ``None`` once it has left (or never was)."""
        return self._sessions.get(_token_key(token))

    def members(self, room: str) -> list[Member]:
        """Everyone in ``room``, oldest first (empty for a room that does not exist)."""
        return list(self._rooms.get(room, {}).values())

    def others(self, peer_id: str) -> list[Member]:
        """The other members of ``peer_id``'s room, oldest first."""
        member = self._members.get(peer_id)
        if member is None:
            return []
        return [m for m in self._rooms[member.room].values() if m.peer_id != peer_id]

    def route(self, sender_id: str, target_id: str) -> Member:
        """The target of a relayed message, if the sender may reach it.

        Raises ``ProtocolError``: ``not_joined`` if the sender is not a member, ``unknown_peer``
        if no such target exists, ``not_in_room`` if the target is in another room (messages never
        cross rooms).
        """
        sender = self._members.get(sender_id)
        if sender is None:
            raise ProtocolError(ErrorCode.NOT_JOINED, "join a room first")
        target = self._members.get(target_id)
        if target is None:
            raise ProtocolError(ErrorCode.UNKNOWN_PEER, f"no peer {target_id[:64]!r}")
        if target.room != sender.room:
            raise ProtocolError(
                ErrorCode.NOT_IN_ROOM, f"peer {target_id!r} is not in room {sender.room!r}"
            )
        return target
