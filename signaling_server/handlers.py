"""The WebSocket loop at ``/ws``: parse each frame, apply it to the rooms, queue the frames out.

Every connection has one reader (the aiohttp handler task) and one writer task draining a FIFO
outbox. Handling a room or relay frame is synchronous: it updates :class:`~.rooms.Rooms` and
*enqueues* outgoing frames without awaiting. So those frames are applied one at a time across the
whole relay (no interleaving to reason about), each socket sees its frames in the order they were
produced, and a slow or dying receiver can never stall the sender. A receiver whose outbox
outgrows ``ServerSettings.max_send_queue_bytes`` is not reading; it is dropped rather than
buffered forever.

Call commands must be stored before they are told, so they go to the :class:`CallService`'s
single worker; the reader waits for the outcome before reading the socket's next frame, which
keeps each socket's replies in the order of its requests.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from typing import assert_never

from aiohttp import WSCloseCode, WSMsgType, web

from .call_service import Action, CallService
from .protocol import (
    AcceptCall,
    Answer,
    ClientMessage,
    DeclineCall,
    EndCall,
    Error,
    ErrorCode,
    IceCandidate,
    Join,
    Leave,
    LeaveCall,
    ListPeers,
    MessageId,
    Offer,
    PeerJoined,
    PeerLeft,
    PeerList,
    Ping,
    Pong,
    ProtocolError,
    RelayedAnswer,
    RelayedIceCandidate,
    RelayedOffer,
    ServerMessage,
    StartCall,
    Welcome,
    dump_message,
    parse_message,
)
from .resume import ResumeTokens, random_secret
from .rooms import Member, Rooms
from .settings import ServerSettings

log = logging.getLogger(__name__)

#: How long a server-initiated close waits for the client's close frame.
CLOSE_TIMEOUT_S = 5.0
#: Close code for a socket whose session a newer socket resumed: do not reconnect on it.
CLOSE_REPLACED = 4001
#: How many ended sessions the relay remembers, to refuse their resume tokens.
MAX_RETIRED = 65536


def frame_limit(max_message_bytes: int) -> int:
    """aiohttp's hard frame limit: twice the protocol cap.

    Frames between the two get a polite ``too_large`` error and the connection lives on; only
    frames grossly over the cap make aiohttp close the socket (1009) before buffering them.
    """
    return 2 * max_message_bytes


class Hub:
    """Relay state shared by the connections of one app: the rooms and each member's socket.

    A member is *linked* (its socket is up) or *away* (its socket dropped without ``leave`` and
    its grace timer runs). Frames for an away member are dropped; the room is told nothing until
    the grace is over. The grace timers and the closes of taken-over sockets are owned here and
    ended by :meth:`close_all`.
    """

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        #: Replaced at startup by the secret kept in the database, when there is one.
        self.tokens = ResumeTokens(
            random_secret() if settings.secret is None else settings.secret.encode("utf-8")
        )
        self.rooms = Rooms(
            max_peers_per_room=settings.max_peers_per_room, issue_token=self._issue_token
        )
        self.connections: set[Connection] = set()
        self.closing = False
        self._links: dict[str, Connection] = {}
        self._away: dict[str, asyncio.TimerHandle] = {}
        # Peers whose session ended in this process (left, or grace over): their tokens are
        # spent. Bounded, oldest forgotten first; a restart forgets all (see docs/protocol.md).
        self._retired: OrderedDict[str, None] = OrderedDict()
        self._closers: set[asyncio.Task[None]] = set()
        self.calls = CallService(
            rooms=self.rooms, deliver=self.deliver, ring_timeout_s=settings.ring_timeout_s
        )

    def _issue_token(self, room: str, peer_id: str, name: str) -> str:
        return self.tokens.issue(room=room, peer_id=peer_id, name=name)

    @property
    def away_count(self) -> int:
        return len(self._away)

    def is_away(self, peer_id: str) -> bool:
        return peer_id in self._away

    def join(self, conn: Connection, room: str, name: str | None) -> Member:
        member = self.rooms.join(room, name)
        self._links[member.peer_id] = conn
        return member

    def admit(
        self, conn: Connection, room: str, name: str | None, resume_token: str | None
    ) -> tuple[Member, bool | None, bool]:
        """Join ``conn``, resuming the token's peer if it can: (member, resumed, announce).

        ``resumed`` is ``None`` without a token. ``announce``: the room must hear ``peer_joined``
        (a new peer, one restored after a restart, or a resumed one that changed its name).
        """
        claim = self.tokens.verify(resume_token) if resume_token is not None else None
        why = "no token"
        if resume_token is not None:
            if claim is None:
                why = "not a token this relay signed"
            elif claim.room != room:
                why = f"the token is for another room ({claim.room!r})"
            elif claim.peer_id in self._retired:
                why = "that session has ended (left, or its grace ran out)"
            else:
                existing = self.rooms.get(claim.peer_id)
                if existing is None:  # unknown here: the relay restarted since it was issued
                    try:
                        member = self.rooms.join(
                            room, claim.name if name is None else name, peer_id=claim.peer_id
                        )
                    except ValueError:  # pragma: no cover - a 48-bit id clash
                        why = "its peer id is in use"
                    else:
                        self._links[member.peer_id] = conn
                        return member, True, True
                elif existing.room != room:  # pragma: no cover - a 48-bit id clash
                    why = "its peer id is in use"
                else:
                    self._cancel_grace(existing.peer_id)
                    old = self._links.get(existing.peer_id)
                    if old is not None and old is not conn:
                        self._take_over(old)
                    member = self.rooms.renew(existing.peer_id, name)
                    self._links[member.peer_id] = conn
                    return member, True, member.name != existing.name
            log.info("resume_token refused (%s): joining %r as a new peer", why, room)
        member = self.join(conn, room, name)
        return member, (None if resume_token is None else False), True

    def leave(self, peer_id: str) -> Member | None:
        self._links.pop(peer_id, None)
        self._cancel_grace(peer_id)
        return self.rooms.leave(peer_id)

    def depart(self, peer_id: str, reason: str) -> None:
        """End a peer's session: tell its room ``peer_left``, take it out of its calls."""
        member = self.leave(peer_id)
        if member is None:
            return
        self._retire(peer_id)
        # On shutdown everyone is going and the 1001 close says it all: no peer_left storm, and
        # calls stay as stored (the next start restores them; no last_left storm).
        if not self.closing:
            self.broadcast(member.room, PeerLeft(peer_id=member.peer_id, reason=reason))
            self.calls.peer_gone(member.peer_id)
        log.info("%s left room %r (%s)", member.peer_id, member.room, reason)

    def dropped(self, conn: Connection, member: Member) -> None:
        """``conn``'s socket ended without ``leave``: start the grace, or depart at once."""
        if self._links.get(member.peer_id) is not conn:
            return  # taken over by a newer socket: the session lives on there
        grace = self.settings.resume_grace_s
        if self.closing or grace <= 0:
            self.depart(member.peer_id, "disconnected")
            return
        del self._links[member.peer_id]
        loop = asyncio.get_running_loop()
        self._away[member.peer_id] = loop.call_later(grace, self._grace_over, member.peer_id)
        log.info("%s is away; it may resume within %.1f s", member.peer_id, grace)

    def _grace_over(self, peer_id: str) -> None:
        self._away.pop(peer_id, None)
        self.depart(peer_id, "timeout")

    def _cancel_grace(self, peer_id: str) -> None:
        timer = self._away.pop(peer_id, None)
        if timer is not None:
            timer.cancel()

    def _retire(self, peer_id: str) -> None:
        self._retired[peer_id] = None
        while len(self._retired) > MAX_RETIRED:
            self._retired.popitem(last=False)

    def _take_over(self, old: Connection) -> None:
        """A newer socket resumed ``old``'s session: ``old`` goes quiet and is closed (4001)."""
        old.detach()
        if self.closing:
            return  # close_all is closing it already
        task = asyncio.create_task(
            old.close(code=CLOSE_REPLACED, message=b"session resumed on another connection"),
            name=f"callbot-relay-replaced-{id(old):x}",
        )
        self._closers.add(task)
        task.add_done_callback(self._closers.discard)

    def deliver(self, peer_id: str, text: str) -> None:
        """Queue an encoded frame for a member (dropped if it is away or has just gone)."""
        conn = self._links.get(peer_id)
        if conn is not None:
            conn.send_text(text)

    def broadcast(self, room: str, message: ServerMessage, *, exclude: str | None = None) -> None:
        text = dump_message(message)
        for member in self.rooms.members(room):
            if member.peer_id != exclude:
                self.deliver(member.peer_id, text)

    async def close_all(self, *, code: int, message: bytes) -> None:
        """Close every socket (graceful shutdown); each handler then cleans up after itself.

        Grace timers stop too: the room is not told about away peers (everyone is going).
        """
        self.closing = True
        for timer in self._away.values():
            timer.cancel()
        self._away.clear()
        conns = list(self.connections)
        results = await asyncio.gather(
            *(c.close(code=code, message=message) for c in conns),
            *list(self._closers),
            return_exceptions=True,
        )
        for conn, result in zip(conns, results, strict=False):
            if isinstance(result, Exception):
                log.warning("closing %s failed: %r", conn, result)


#: Where an app created by ``create_app`` keeps its relay state.
HUB_KEY = web.AppKey("callbot_relay_hub", Hub)


class Connection:
    """One client socket: a sequential reader, a FIFO outbox and the writer task draining it."""

    def __init__(self, hub: Hub, ws: web.WebSocketResponse, request: web.Request) -> None:
        self._hub = hub
        self._ws = ws
        self._transport = request.transport
        self._remote = request.remote
        self._member: Member | None = None
        self._outbox: asyncio.Queue[str] = asyncio.Queue()
        self._queued_bytes = 0
        self._dead = False  # the writer gave up or the peer was dropped: discard further frames
        self._writer: asyncio.Task[None] | None = None
        self._close_done: asyncio.Event | None = None  # set once close() from outside finished

    def __repr__(self) -> str:
        who = self._member.peer_id if self._member else "unjoined"
        return f"<Connection {who} from {self._remote}>"

    @property
    def peer_id(self) -> str | None:
        return self._member.peer_id if self._member else None

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        """Serve the socket until it closes, then leave the room and stop the writer."""
        self._hub.connections.add(self)
        self._writer = asyncio.create_task(
            self._write_loop(), name=f"callbot-relay-writer-{id(self):x}"
        )
        try:
            if self._hub.closing:  # raced with shutdown: the site was already stopping
                await self._ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutting down")
                return
            async for msg in self._ws:
                if msg.type is WSMsgType.TEXT:
                    await self._on_text(msg.data)
                elif msg.type is WSMsgType.BINARY:
                    self.send(
                        Error(
                            code=ErrorCode.BAD_MESSAGE,
                            message="binary frames are not part of the protocol; "
                            "send JSON in text frames",
                        )
                    )
                elif msg.type is WSMsgType.ERROR:
                    log.info("%r: connection error: %r", self, self._ws.exception())
                    break
        finally:
            self._hub.connections.discard(self)
            member, self._member = self._member, None
            if member is not None:
                self._hub.dropped(self, member)
            await self._stop_writer()
            if self._close_done is not None:
                # Returning would make aiohttp drop the transport mid-handshake; let close()
                # collect the client's close frame (bounded by CLOSE_TIMEOUT_S).
                await self._close_done.wait()

    def detach(self) -> None:
        """Hand the session to a newer socket: this one sends nothing more and leaves nobody."""
        self._member = None
        self._dead = True

    async def close(self, *, code: int, message: bytes) -> None:
        """Close from another task (shutdown): ends :meth:`run`'s loop, completes the handshake."""
        done = self._close_done = asyncio.Event()
        try:
            await self._ws.close(code=code, message=message)
        finally:
            done.set()

    async def _stop_writer(self) -> None:
        writer = self._writer
        if writer is None:
            return
        writer.cancel()
        try:
            await writer
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise

    # ------------------------------------------------------------------ sending

    def send(self, message: ServerMessage) -> None:
        self.send_text(dump_message(message))

    def send_text(self, text: str) -> None:
        """Queue a frame without waiting; a peer that lets its outbox overflow is dropped."""
        if self._dead:
            return
        self._queued_bytes += len(text)
        if self._queued_bytes > self._hub.settings.max_send_queue_bytes:
            log.warning(
                "%r is not reading (%d bytes queued); dropping it", self, self._queued_bytes
            )
            self._dead = True
            # A peer that does not read would never answer a close handshake either: abort.
            if self._transport is not None:
                self._transport.abort()
            return
        self._outbox.put_nowait(text)

    async def _write_loop(self) -> None:
        while True:
            text = await self._outbox.get()
            try:
                await self._ws.send_str(text)
            except ConnectionError as exc:  # the socket is closing; the reader will notice
                log.debug("%r: send failed: %r", self, exc)
                self._dead = True
                return
            self._queued_bytes -= len(text)

    # ------------------------------------------------------------------ receiving

    async def _on_text(self, data: str) -> None:
        """Handle one frame; any failure becomes an ``error`` reply and the socket stays up."""
        ref: MessageId | None = None
        try:
            message: ClientMessage = parse_message(
                data, origin="client", max_bytes=self._hub.settings.max_message_bytes
            )
            ref = message.id
            log.debug("%r: received %s", self, message.type)
            if isinstance(message, StartCall | AcceptCall | DeclineCall | LeaveCall | EndCall):
                await self._call(message)
            else:
                self._dispatch(message)
        except ProtocolError as exc:
            log.debug("%r: refused: %s", self, exc)
            self.send(
                Error(code=exc.code, message=exc.message, ref=ref if exc.ref is None else exc.ref)
            )
        except Exception:
            log.exception("%r: internal error while handling a frame", self)
            self.send(
                Error(
                    code=ErrorCode.INTERNAL,
                    message="internal error while handling this message",
                    ref=ref,
                )
            )

    def _joined(self, message: ClientMessage) -> Member:
        if self._member is None:
            raise ProtocolError(
                ErrorCode.NOT_JOINED, f"join a room before sending {message.type!r}"
            )
        return self._member

    async def _call(
        self, message: StartCall | AcceptCall | DeclineCall | LeaveCall | EndCall
    ) -> None:
        """A call command; its outcome reaches this socket as ``call_state`` (or an ``error``)."""
        me = self._joined(message)
        service = self._hub.calls
        match message:
            case StartCall():
                await service.start_call(me.peer_id, message.targets, ref=message.id)
            case AcceptCall():
                await service.act(me.peer_id, message.call_id, Action.ACCEPT, ref=message.id)
            case DeclineCall():
                await service.act(me.peer_id, message.call_id, Action.DECLINE, ref=message.id)
            case LeaveCall():
                await service.act(me.peer_id, message.call_id, Action.LEAVE, ref=message.id)
            case EndCall():
                await service.act(me.peer_id, message.call_id, Action.END, ref=message.id)
            case _:
                assert_never(message)

    def _dispatch(
        self, message: Join | Leave | ListPeers | Offer | Answer | IceCandidate | Ping
    ) -> None:
        match message:
            case Ping():
                self.send(Pong(ref=message.id))
                return
            case Join():
                self._join(message)
                return
        me = self._joined(message)
        match message:
            case Leave():
                self._depart("left")
            case ListPeers():
                peers = [m.info() for m in self._hub.rooms.others(me.peer_id)]
                self.send(PeerList(peers=peers, ref=message.id))
            case Offer():
                self._relay(
                    me,
                    message.target_peer_id,
                    RelayedOffer(from_peer_id=me.peer_id, sdp=message.sdp, call_id=message.call_id),
                )
            case Answer():
                self._relay(
                    me,
                    message.target_peer_id,
                    RelayedAnswer(
                        from_peer_id=me.peer_id, sdp=message.sdp, call_id=message.call_id
                    ),
                )
            case IceCandidate():
                self._relay(
                    me,
                    message.target_peer_id,
                    RelayedIceCandidate(
                        from_peer_id=me.peer_id,
                        candidate=message.candidate,
                        sdp_mid=message.sdp_mid,
                        sdp_m_line_index=message.sdp_m_line_index,
                    ),
                )
            case _:
                assert_never(message)

    def _join(self, message: Join) -> None:
        if self._member is not None:
            raise ProtocolError(
                ErrorCode.ALREADY_JOINED,
                f"already in room {self._member.room!r} as {self._member.peer_id}; "
                "send leave first",
            )
        hub = self._hub
        member, resumed, announce = hub.admit(
            self, message.room, message.name, message.resume_token
        )
        self._member = member
        others = hub.rooms.others(member.peer_id)
        self.send(
            Welcome(
                peer_id=member.peer_id,
                room=member.room,
                peers=[m.info() for m in others],
                ice_servers=list(hub.settings.ice_servers),
                resume_token=member.resume_token,
                session_token=member.session_token,
                resumed=resumed,
                ref=message.id,
            )
        )
        if announce:
            hub.broadcast(
                member.room,
                PeerJoined(peer_id=member.peer_id, name=member.name),
                exclude=member.peer_id,
            )
        log.info(
            "%s (%r) %s room %r from %s; %d in the room",
            member.peer_id,
            member.name,
            "resumed in" if resumed else "joined",
            member.room,
            self._remote,
            len(others) + 1,
        )

    def _depart(self, reason: str) -> None:
        member, self._member = self._member, None
        if member is not None:
            self._hub.depart(member.peer_id, reason)

    def _relay(
        self,
        me: Member,
        target_id: str,
        relayed: RelayedOffer | RelayedAnswer | RelayedIceCandidate,
    ) -> None:
        target = self._hub.rooms.route(me.peer_id, target_id)
        text = dump_message(relayed)
        limit = self._hub.settings.max_message_bytes
        # JSON escaping can grow a frame (non-ASCII becomes \uXXXX): never send over the cap.
        # dump_message output is ASCII, so len() counts bytes.
        if len(text) > limit:
            raise ProtocolError(
                ErrorCode.TOO_LARGE,
                f"the relayed {relayed.type} would be {len(text)} bytes; the limit is {limit}",
            )
        self._hub.deliver(target.peer_id, text)
        log.debug(
            "relayed %s %s -> %s (%d bytes)", relayed.type, me.peer_id, target.peer_id, len(text)
        )


async def websocket_handler(request: web.Request) -> web.WebSocketResponse:
    """``GET /ws``: upgrade and serve one protocol v1 connection."""
    hub = request.app[HUB_KEY]
    ws = web.WebSocketResponse(
        timeout=CLOSE_TIMEOUT_S,
        heartbeat=hub.settings.heartbeat_s,
        max_msg_size=frame_limit(hub.settings.max_message_bytes),
    )
    await ws.prepare(request)
    await Connection(hub, ws, request).run()
    return ws
