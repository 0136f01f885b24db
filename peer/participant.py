"""The participant: the object a bot, a test or the CLI holds to be in a room.

::

    async with Participant(ParticipantConfig(room="demo"), video=pattern, audio=tone) as me:
        async for track in me.tracks():   # RemoteTrack objects, as remote peers' media arrives
            ...

It keeps one :class:`~peer.negotiation.PeerLink` per peer it should have media with: everyone in
the room (room mode), or the other active participants of its call (call mode). One task it owns
reads the relay; after every message it brings the set of links in line with that wish. Call
state is mirrored synchronously as messages arrive (see :mod:`peer.calls`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote, urlsplit, urlunsplit

import aiohttp
from aiortc import MediaStreamTrack

from signaling_server.protocol import (
    CallEvent,
    CallInfo,
    CallState,
    CallStatus,
    ClientMessage,
    EndReason,
    Error,
    IncomingCall,
    Join,
    Leave,
    ListPeers,
    PeerInfo,
    PeerJoined,
    PeerLeft,
    PeerList,
    ProtocolError,
    RelayedAnswer,
    RelayedIceCandidate,
    RelayedOffer,
    StartCall,
    Welcome,
    parse_message,
)

from .backoff import Backoff, ConnectionState, LinkState
from .calls import Call
from .config import IceServer, Mode, ParticipantConfig
from .errors import (
    CallbotError,
    ConfigError,
    ConnectError,
    JoinRefused,
    NegotiationError,
    ServerError,
    WaitTimeout,
)
from .negotiation import LinkOptions, PeerLink
from .renegotiation import ice_ufrag
from .signaling import SignalingClient
from .tracks import DataMessage, RemoteTrack, TrackPump

logger = logging.getLogger(__name__)

SESSION_TAKEN_OVER = 4001
"""WebSocket close code: the relay handed our session to a newer connection."""
DATA_QUEUE_MAX = 1024
"""Data-channel messages kept for a reader that is behind; older ones are dropped."""


class Participant:
    """Joins a room on the relay, publishes its tracks to every peer, yields what they send.

    ``video``/``audio`` are local tracks to publish (at most one of each kind; each is read once
    and fanned out to every peer connection). They are not stopped on close: the caller owns them.
    """

    def __init__(
        self,
        config: ParticipantConfig,
        *,
        video: MediaStreamTrack | None = None,
        audio: MediaStreamTrack | None = None,
    ) -> None:
        if video is not None and video.kind != "video":
            raise ConfigError(f"the video track is of kind {video.kind!r}")
        if audio is not None and audio.kind != "audio":
            raise ConfigError(f"the audio track is of kind {audio.kind!r}")
        self.config = config
        self._pumps = [
            TrackPump(track, capacity=2 if track.kind == "video" else 8, name=track.kind)
            for track in (video, audio)
            if track is not None
        ]
        self._signaling = self._new_signaling()
        self._links: dict[str, PeerLink] = {}
        self._calls: dict[str, Call] = {}
        self._live_seq = 0  # call messages from the relay so far
        self._live_touched: dict[str, int] = {}  # call id -> _live_seq of its latest message
        self._invites: asyncio.Queue[Call | None] = asyncio.Queue()
        self._closing: set[asyncio.Task[None]] = set()
        self._peers: dict[str, PeerInfo] = {}
        self._tracks: asyncio.Queue[RemoteTrack | None] = asyncio.Queue()
        self._all_tracks: list[RemoteTrack] = []
        self._router: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()
        self._welcome: Welcome | None = None
        self._closed = False
        self._state = ConnectionState(state=LinkState.CONNECTING)
        self._state_queues: set[asyncio.Queue[ConnectionState]] = set()
        self._puller: asyncio.Task[None] | None = None
        self._lingering: dict[str, float] = {}  # peer id -> loop time its link is dropped
        self._rebuilds: dict[str, int] = {}  # peer id -> failed links in a row
        self._rebuilding: dict[str, asyncio.Task[None]] = {}
        self._linger_timer: asyncio.TimerHandle | None = None
        self._data: asyncio.Queue[DataMessage | None] = asyncio.Queue()
        self._data_dropped = 0
        self._calls_stale = False  # the last call resync failed: the roster pull retries it

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Self:
        try:
            await self.join()
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def join(self) -> Welcome:
        """Connect to the relay and join the room; raises ``ConnectError`` or ``JoinRefused``."""
        if self._closed:
            raise CallbotError("the participant is closed")
        if self._welcome is not None:
            return self._welcome
        await self._signaling.connect()
        welcome = await self._join(resume_token=None)
        logger.info(
            "joined room %r as %s (%d others)", welcome.room, welcome.peer_id, len(welcome.peers)
        )
        self._set_state(ConnectionState(state=LinkState.CONNECTED))
        self._router = asyncio.create_task(self._route(), name="callbot-participant-router")
        return welcome

    async def _join(self, *, resume_token: str | None) -> Welcome:
        """Send ``join`` on the current socket; the roster comes from the welcome."""
        request = Join(
            room=self.config.room,
            name=self.config.name,
            resume_token=resume_token,
            id=self._signaling.next_id(),
        )
        try:
            welcome = await self._signaling.request(
                request, timeout_s=self.config.connect_timeout_s
            )
        except ServerError as exc:
            raise JoinRefused(exc.code, exc.message) from None
        if not isinstance(welcome, Welcome):
            raise CallbotError(f"the relay answered join with {welcome.type!r}")
        self._welcome = welcome
        self._replace_roster(welcome.peers)
        return welcome

    async def leave(self) -> None:
        """Say goodbye to the room, then close everything (same as ``aclose()``)."""
        await self.aclose(say_goodbye=True)

    async def aclose(self, *, say_goodbye: bool = True) -> None:
        """Close every peer connection, the relay connection and every task. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            if say_goodbye and self._welcome is not None:
                with contextlib.suppress(CallbotError):
                    await self._signaling.send(Leave())
            if self._linger_timer is not None:
                self._linger_timer.cancel()
            rebuilds = list(self._rebuilding.values())
            for rebuild in rebuilds:
                rebuild.cancel()
            await asyncio.gather(*rebuilds, return_exceptions=True)
            for task in (self._router, self._puller):
                if task is not None:
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
            for peer_id in list(self._links):
                self._close_link(peer_id)
            # Shielded: a caller cancelled mid-close still leaves no half-closed connection.
            while self._closing:
                await asyncio.shield(asyncio.gather(*self._closing, return_exceptions=True))
            for pump in self._pumps:
                await pump.aclose()
        finally:
            await self._signaling.aclose()
            self._set_state(ConnectionState(state=LinkState.CLOSED, reason="closed"))
            for call in self._calls.values():
                call._abandon("the participant is closed")
            self._tracks.put_nowait(None)
            self._invites.put_nowait(None)
            self._data.put_nowait(None)
            self._changed.set()

    # ------------------------------------------------------------------ what users read

    @property
    def connection(self) -> ConnectionState:
        """Whether we are in touch with the relay right now (media links do not depend on it)."""
        return self._state

    async def connection_states(self) -> AsyncGenerator[ConnectionState, None]:
        """The current connection state, then every change, until ``closed``."""
        queue: asyncio.Queue[ConnectionState] = asyncio.Queue()
        queue.put_nowait(self._state)
        self._state_queues.add(queue)
        try:
            while True:
                state = await queue.get()
                yield state
                if state.state is LinkState.CLOSED:
                    return
        finally:
            self._state_queues.discard(queue)

    def _set_state(self, state: ConnectionState) -> None:
        if self._state.state is LinkState.CLOSED:
            return  # closed is final
        if state.state is self._state.state and state.attempt == self._state.attempt:
            return
        self._state = state
        logger.info(
            "relay connection: %s%s", state.state, f" ({state.reason})" if state.reason else ""
        )
        for queue in self._state_queues:
            queue.put_nowait(state)

    def _new_signaling(self) -> SignalingClient:
        return SignalingClient(
            self.config.server_url,
            connect_timeout_s=self.config.connect_timeout_s,
            observer=self._observe_live,
        )

    async def _send(self, message: ClientMessage) -> None:
        """Send on whichever relay connection is current (links outlive reconnects)."""
        await self._signaling.send(message)

    @property
    def peer_id(self) -> str:
        if self._welcome is None:
            raise CallbotError("not joined yet")
        return self._welcome.peer_id

    @property
    def ice_servers(self) -> tuple[IceServer, ...]:
        """Configured servers, then (unless disabled) those the relay serves in ``welcome``."""
        served: tuple[IceServer, ...] = ()
        if self._welcome is not None and self.config.use_server_ice_servers:
            served = tuple(IceServer.from_info(s) for s in self._welcome.ice_servers)
        return self.config.ice_servers + served

    @property
    def peers(self) -> dict[str, PeerInfo]:
        """Remote peers currently in the room, by peer id."""
        return dict(self._peers)

    @property
    def received_tracks(self) -> list[RemoteTrack]:
        """Every remote track received so far (ended ones included), for stats."""
        return list(self._all_tracks)

    def link(self, peer_id: str) -> PeerLink | None:
        return self._links.get(peer_id)

    async def tracks(self) -> AsyncIterator[RemoteTrack]:
        """Remote tracks as they arrive; ends when the participant closes. One reader."""
        while True:
            track = await self._tracks.get()
            if track is None:
                self._tracks.put_nowait(None)  # later iterators end too
                return
            yield track

    async def add_track(self, track: MediaStreamTrack) -> None:
        """Publish one more local track to every peer, now and later (renegotiates live links).

        Like the tracks given to the constructor, it is read once, fanned out, and not stopped
        on close: the caller owns it.
        """
        if self._closed:
            raise CallbotError("the participant is closed")
        if any(pump.source is track for pump in self._pumps):
            raise ConfigError("that track is published already")
        capacity = 2 if track.kind == "video" else 8
        pump = TrackPump(track, capacity=capacity, name=f"{track.kind}-{len(self._pumps)}")
        self._pumps.append(pump)
        for link in self._links.values():
            link.add_local(pump)

    async def send_data(
        self, data: str | bytes, *, to: str | None = None, timeout_s: float = 10.0
    ) -> int:
        """Send a message on the data channel to one peer (id or name) or, with ``to=None``, to
        every peer whose channel is open. Returns how many peers it was sent to.

        For one peer, waits up to ``timeout_s`` for its channel to open (``WaitTimeout``);
        ``NegotiationError`` at once if that link has no data channel (``data_channel=False``
        here, or the peer's offer had none).
        """
        if to is None:
            open_links = [link for link in self._links.values() if link.channel_open]
            for open_link in open_links:
                open_link.channel.send(data)
            return len(open_links)
        info = self._find_peer(to)
        link = self._links.get(info.peer_id if info is not None else to)
        if link is None:
            raise CallbotError(f"no media link to {to!r}")
        try:
            await link.send_data(data, timeout_s=timeout_s)
        except TimeoutError:
            raise WaitTimeout(
                f"the data channel to {to!r} did not open within {timeout_s:g} s"
            ) from None
        return 1

    async def data_messages(self) -> AsyncIterator[DataMessage]:
        """Data-channel messages from every peer as they arrive; ends on close. One reader."""
        while True:
            message = await self._data.get()
            if message is None:
                self._data.put_nowait(None)
                return
            yield message

    def _on_data(self, message: DataMessage) -> None:
        if self._data.qsize() >= DATA_QUEUE_MAX:
            self._data.get_nowait()
            self._data_dropped += 1
            if self._data_dropped == 1 or self._data_dropped % 100 == 0:
                logger.warning("data messages dropped: %d (nobody reads them)", self._data_dropped)
        self._data.put_nowait(message)

    async def wait_connected(self, count: int = 1, *, timeout_s: float = 30.0) -> None:
        """Wait until media connections to ``count`` peers are up.

        A failed link does not end the wait (others may still connect, or peers may still join);
        if time runs out, the first failure is raised instead of a bare ``TimeoutError``.
        """
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    self._changed.clear()
                    if sum(link.state == "connected" for link in self._links.values()) >= count:
                        return
                    if self._closed:
                        raise CallbotError("participant closed")
                    await self._changed.wait()
        except TimeoutError:
            failed = [link.failed for link in self._links.values() if link.failed]
            if failed:
                raise failed[0] from None
            up = sum(link.state == "connected" for link in self._links.values())
            raise WaitTimeout(
                f"only {up} of {count} media connections came up within {timeout_s:g} s"
            ) from None

    async def wait_for_peers(
        self, names: Sequence[str] = (), *, count: int = 1, timeout_s: float | None = 30.0
    ) -> list[PeerInfo]:
        """Wait until every peer in ``names`` (peer ids or display names) is in the room, or,
        with no names, until ``count`` others are; returns them."""
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    self._changed.clear()
                    if self._closed:
                        raise CallbotError("participant closed")
                    found = [self._find_peer(n) for n in names]
                    if names and all(found):
                        return [p for p in found if p is not None]
                    if not names and len(self._peers) >= count:
                        return list(self._peers.values())
                    await self._changed.wait()
        except TimeoutError:
            wanted = ", ".join(names) if names else f"{count} other peer(s)"
            raise WaitTimeout(f"{wanted} did not join within {timeout_s:g} s") from None

    def _find_peer(self, name_or_id: str) -> PeerInfo | None:
        if name_or_id in self._peers:
            return self._peers[name_or_id]
        return next((p for p in self._peers.values() if p.name == name_or_id), None)

    # ------------------------------------------------------------------ calls

    @property
    def calls(self) -> dict[str, Call]:
        """Every call we started or were invited to, by call id (ended ones included)."""
        return dict(self._calls)

    @property
    def active_call(self) -> Call | None:
        """The call we are a participant of right now, if any."""
        return next((c for c in self._calls.values() if c.joined), None)

    async def start_call(self, targets: Sequence[str] | None = None) -> Call:
        """Ring ``targets`` (peer ids; ``None``: everyone else in the room).

        Raises :class:`ServerError` (``unknown_peer``, ``not_in_room``, ``invalid_transition`` if
        we are busy in another call, ``bad_message`` if there is nobody to call).
        """
        reply = await self._request(StartCall(targets=list(targets) if targets else None))
        if not isinstance(reply, CallState):
            raise CallbotError(f"the relay answered start_call with {reply.type!r}")
        return self._calls[reply.call.call_id]

    async def incoming_calls(self) -> AsyncIterator[Call]:
        """Calls we are rung for, as they arrive: ``await call.accept()`` or ``decline()``."""
        while True:
            call = await self._invites.get()
            if call is None:
                self._invites.put_nowait(None)
                return
            yield call

    async def _request(self, message: ClientMessage) -> Any:
        with_id = dataclasses.replace(message, id=self._signaling.next_id())
        return await self._signaling.request(with_id)

    def _observe_live(self, message: Any) -> None:
        """The relay's own messages: also note which calls they touched, so a REST snapshot
        taken meanwhile (``_resync_calls``) never overwrites them with older state."""
        if isinstance(message, CallState | IncomingCall):
            self._live_seq += 1
            call_id = message.call.call_id if isinstance(message, CallState) else message.call_id
            self._live_touched[call_id] = self._live_seq
        self._observe(message)

    def _touched_since(self, call_id: str, seq: int) -> bool:
        return self._live_touched.get(call_id, -1) > seq

    def _observe(self, message: Any) -> None:
        """Runs in the signaling reader, in arrival order: mirror call state before anyone
        awaiting a reply resumes."""
        if isinstance(message, Welcome):
            # Recorded here, not when join() resumes: a call can arrive right behind it.
            self._welcome = message
        elif isinstance(message, CallState):
            call = self._calls.get(message.call.call_id)
            if call is None:
                call = self._calls[message.call.call_id] = Call(
                    message.call, request=self._request, local_peer_id=self.peer_id
                )
            call._apply(message)
        elif isinstance(message, IncomingCall):
            call = self._calls.get(message.call_id)
            if call is None:
                info = CallInfo(
                    call_id=message.call_id,
                    room=self.config.room,
                    status=CallStatus.RINGING,
                    started_by=message.from_peer_id,
                    participants=message.participants,
                    targets=message.targets,
                    declined_by=[],
                    started_at=time.time(),
                )
                call = self._calls[message.call_id] = Call(
                    info, request=self._request, local_peer_id=self.peer_id
                )
            self._invites.put_nowait(call)

    # ------------------------------------------------------------------ routing

    async def _route(self) -> None:
        """Read the relay; when it is lost, reconnect (if configured) and read on."""
        while True:
            self._sync_links()
            self._start_puller()
            async for message in self._signaling.messages():
                try:
                    await self._dispatch(message)
                    self._sync_links()
                except CallbotError as exc:  # one bad message must not end the participant
                    logger.warning("while handling %s: %s", message.type, exc)
                self._changed.set()
            if self._closed:
                return
            reason = self._signaling.close_reason or "connection closed"
            logger.warning("lost the relay: %s", reason)
            self._set_state(ConnectionState(state=LinkState.DISCONNECTED, reason=reason))
            if self._puller is not None:
                self._puller.cancel()
            if self._signaling.close_code == SESSION_TAKEN_OVER:
                # Another connection resumed our session: reconnecting would take it back,
                # and the two would keep taking it from each other.
                self._set_state(
                    ConnectionState(
                        state=LinkState.CLOSED, reason="another connection took over the session"
                    )
                )
                self._relay_gone_for_good("another connection took over the session")
                return
            if not await self._reconnect(reason):
                self._relay_gone_for_good(self._state.reason or reason)
                return

    def _relay_gone_for_good(self, why: str) -> None:
        """No call news will ever come again: end the waits on our calls and on new ones."""
        for call in self._calls.values():
            call._abandon(f"lost the relay for good ({why})")
        self._invites.put_nowait(None)

    async def _reconnect(self, reason: str) -> bool:
        """Back off and rejoin with our resume token; False if we gave up (state ``closed``).

        Only transport failures are retried: a relay that refuses the join (other than an
        unusable resume token, after which we join afresh) ends the participant's signaling.
        Media links stay up throughout; the roster from the new welcome then decides which
        of them to keep.
        """
        backoff = self.config.reconnect
        if backoff is None:
            return False
        attempt = 0
        token = self._welcome.resume_token if self._welcome is not None else None
        old_id = self._welcome.peer_id if self._welcome is not None else None
        while True:
            attempt += 1
            self._set_state(
                ConnectionState(state=LinkState.RECONNECTING, reason=reason, attempt=attempt)
            )
            await asyncio.sleep(backoff.delay(attempt))
            await self._signaling.aclose()
            self._signaling = self._new_signaling()
            try:
                await self._signaling.connect()
                try:
                    welcome = await self._join(resume_token=token)
                except JoinRefused as exc:
                    if token is None:
                        raise
                    logger.warning("the relay refused our resume token (%s); joining afresh", exc)
                    token = None
                    welcome = await self._join(resume_token=None)
            except ConnectError as exc:
                reason = str(exc)
                if backoff.gives_up_after(attempt):
                    self._set_state(
                        ConnectionState(
                            state=LinkState.CLOSED, reason=f"gave up after {attempt}: {reason}"
                        )
                    )
                    return False
                continue
            except JoinRefused as exc:
                self._set_state(
                    ConnectionState(state=LinkState.CLOSED, reason=f"join refused: {exc}")
                )
                return False
            new_identity = welcome.peer_id != old_id
            if new_identity:
                # A new identity: everyone sees a new peer, so every link starts over.
                logger.warning("rejoined as a new peer %s (was %s)", welcome.peer_id, old_id)
                for peer_id in list(self._links):
                    self._close_link(peer_id)
            logger.info("rejoined room %r as %s", welcome.room, welcome.peer_id)
            await self._resync_calls(new_identity=new_identity)
            self._set_state(ConnectionState(state=LinkState.CONNECTED))
            return True

    async def _resync_calls(self, *, new_identity: bool = False) -> None:
        """Calls may have moved on while we were away (their ``call_state`` messages were not
        delivered): read them from the relay's REST API and bring our mirrors up to date, as if
        the missed messages had arrived.

        A call the relay no longer knows (it restarted without its database) ends here, locally,
        ``relay_restart``: no message will ever end it. So does, after we came back as a new
        peer, every call that still counts on our old identity, which can never act again. If
        the relay cannot be read, the roster pull tries again later.
        """
        me = self.peer_id
        since = self._live_seq  # live call_state from here on is newer than the snapshot
        timeout = aiohttp.ClientTimeout(total=self.config.connect_timeout_s)
        try:
            async with aiohttp.ClientSession(timeout=timeout) as session:
                room = f"/rooms/{quote(self.config.room, safe='')}/calls"
                page = 100  # the relay's largest
                query = f"limit={page}"
                items = await self._read_json(session, self._rest_url(room, query), "calls")
                listed = set()
                for item in items:
                    call_id = item.get("call_id") if isinstance(item, dict) else None
                    listed.add(call_id)
                    if not self._touched_since(str(call_id), since):
                        self._resync_item(item, me)
                # Ours but not listed: with a short history the relay does not know it; with a
                # full page it may just be older, so ask for it on its own.
                for call in list(self._calls.values()):
                    if call.status is CallStatus.ENDED or call.call_id in listed:
                        continue
                    if self._touched_since(call.call_id, since):
                        continue  # the relay spoke of it meanwhile: it knows it
                    found = None
                    if len(items) >= page:
                        path = f"/calls/{quote(call.call_id, safe='')}"
                        found = await self._read_json(session, self._rest_url(path), "call")
                        if self._touched_since(call.call_id, since):
                            continue
                    if found is None:
                        logger.warning("the relay no longer knows call %s: ended", call.call_id)
                        call._end_locally(EndReason.RELAY_RESTART)
                    else:
                        self._resync_item(found, me)
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError) as exc:
            logger.warning("could not resync calls with the relay: %s", exc)
            self._calls_stale = True
        else:
            self._calls_stale = False
        if new_identity:
            for call in self._calls.values():
                if call._holds_us():
                    logger.warning("call %s was our old identity's: ended", call.call_id)
                    call._end_locally(EndReason.RELAY_RESTART)
        self._sync_links()
        self._changed.set()

    def _rest_url(self, path: str, query: str = "") -> str:
        parts = urlsplit(self.config.server_url)
        scheme = "https" if parts.scheme == "wss" else "http"
        return urlunsplit((scheme, parts.netloc, path, query, ""))

    @staticmethod
    async def _read_json(session: aiohttp.ClientSession, url: str, key: str) -> Any:
        """``body[key]`` of a 200 answer; ``None`` for a 404; ``ValueError`` for anything else."""
        async with session.get(url) as response:
            if response.status == 404:
                return None
            body = await response.json(content_type=None)
            if response.status != 200 or not isinstance(body, dict):
                raise ValueError(f"GET {url}: HTTP {response.status}")
        return body[key]

    def _resync_item(self, item: Any, me: str) -> None:
        try:
            self._resync_call(item, me)
        except (ProtocolError, KeyError, TypeError) as exc:
            logger.warning("ignoring a call the relay listed: %s", exc)

    def _resync_call(self, item: dict[str, Any], me: str) -> None:
        known = self._calls.get(item["call_id"])
        involved = me in item["participants"] or me in item["targets"]
        if known is None and not involved:
            return
        if known is not None and known.info.status is CallStatus.ENDED:
            return
        if item["status"] == CallStatus.ENDED:
            event = CallEvent.CALL_ENDED
        elif known is None:
            event = CallEvent.CALL_STARTED
        elif len(item["participants"]) < len(known.info.participants):
            event = CallEvent.PARTICIPANT_LEFT
        else:
            event = CallEvent.PARTICIPANT_JOINED
        frame = json.dumps({"type": "call_state", "event": event, "call": item})
        state = parse_message(frame, origin="server")
        if known is not None and known.info == state.call:
            return
        self._observe(state)
        ringing_us = (
            state.call.status is CallStatus.RINGING
            and me in state.call.targets
            and me not in state.call.participants
            and me not in state.call.declined_by
        )
        if known is None and ringing_us:
            self._invites.put_nowait(self._calls[state.call.call_id])

    def _start_puller(self) -> None:
        interval = self.config.peer_list_interval_s
        if interval is None or (self._puller is not None and not self._puller.done()):
            return
        self._puller = asyncio.create_task(self._pull(interval), name="callbot-peer-list")

    async def _pull(self, interval: float) -> None:
        """Ask for the roster now and then: heals a peer_joined/peer_left we missed (and calls
        we could not resync after a reconnect)."""
        while True:
            await asyncio.sleep(interval)
            if self._calls_stale:
                await self._resync_calls()
            try:
                reply = await self._request(ListPeers())
            except CallbotError as exc:
                logger.debug("peer list pull failed: %s", exc)
                return  # the connection is going; the router restarts us after a reconnect
            if isinstance(reply, PeerList):
                self._replace_roster(reply.peers)
                self._sync_links()
                self._changed.set()

    async def _dispatch(self, message: Any) -> None:
        match message:
            case PeerJoined(peer_id=peer_id, name=name):
                self._peers[peer_id] = PeerInfo(peer_id=peer_id, name=name)
                self._lingering.pop(peer_id, None)  # back: its link carries on
            case PeerLeft(peer_id=peer_id):
                self._peers.pop(peer_id, None)
                self._lingering.pop(peer_id, None)
            case RelayedOffer() | RelayedAnswer() | RelayedIceCandidate():
                sender = message.from_peer_id
                link = self._links.get(sender)
                if link is None and sender in self._wanted():
                    link = self._open_link(sender)
                elif (
                    link is not None
                    and isinstance(message, RelayedOffer)
                    and link.has_remote
                    and ice_ufrag(message.sdp) != link.remote_ufrag
                ):
                    # An offer with new ICE credentials: the remote side rebuilt its connection
                    # (ICE failed there first, or its link was replaced); start over with it.
                    # The same credentials are a renegotiation on the live connection.
                    logger.info("%s offers a new connection; replacing ours", sender)
                    link = self._replace_link(sender)
                if link is None:
                    logger.info(
                        "ignoring %s from %s: no media wanted with it", message.type, sender
                    )
                else:
                    link.deliver(message)
            case Error(code=code, message=text, ref=None):
                logger.warning("relay error %s: %s", code, text)
            case _:
                pass  # replies reach their requester; call state was mirrored by _observe

    def _replace_roster(self, peers: Sequence[PeerInfo]) -> None:
        """Adopt a full roster (a welcome, a peer list).

        A peer missing from it while we still have a media link to it is not dropped at once:
        after a relay restart peers come back one by one, and the link does not need the relay.
        It lingers for ``peer_linger_s``; a ``peer_joined`` or a later roster brings it back,
        a ``peer_left`` or the deadline ends it.
        """
        roster = {info.peer_id: info for info in peers}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.peer_linger_s
        for peer_id in self._links.keys() - roster.keys():
            if peer_id in self._peers or peer_id in self._lingering:
                self._lingering.setdefault(peer_id, deadline)
        for peer_id in roster:
            self._lingering.pop(peer_id, None)
        self._peers = roster
        if self._lingering and self._linger_timer is None:
            self._linger_timer = loop.call_later(
                self.config.peer_linger_s + 0.01, self._expire_lingering
            )

    def _expire_lingering(self) -> None:
        self._linger_timer = None
        if self._closed:
            return
        now = asyncio.get_running_loop().time()
        for peer_id, deadline in list(self._lingering.items()):
            if deadline <= now:
                logger.info("peer %s did not come back; closing its link", peer_id)
                del self._lingering[peer_id]
        if self._lingering:
            wait = min(self._lingering.values()) - now + 0.01
            self._linger_timer = asyncio.get_running_loop().call_later(wait, self._expire_lingering)
        self._sync_links()
        self._changed.set()

    def _wanted(self) -> set[str]:
        """Peers we should have a media connection with right now."""
        if self.config.mode is Mode.ROOM:
            return set(self._peers) | set(self._lingering)
        me = self.peer_id
        return {
            peer
            for call in self._calls.values()
            if call.joined
            for peer in call.participants
            if peer != me and (peer in self._peers or peer in self._lingering)
        }

    def _sync_links(self) -> None:
        wanted = self._wanted()
        for peer_id in wanted - self._links.keys():
            self._open_link(peer_id)
        for peer_id in self._links.keys() - wanted:
            self._close_link(peer_id)

    def _close_link(self, peer_id: str, *, keep_tracks: bool = False) -> None:
        """Close in a task of our own: cancelling the router must not cut a close in half
        (aiortc then leaves ICE tasks and sockets behind)."""
        link = self._links.pop(peer_id)
        logger.debug("closing the link to %s (%s)", peer_id, link.state)
        task = asyncio.create_task(
            link.aclose(keep_tracks=keep_tracks), name=f"callbot-close-{peer_id}"
        )
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)
        task.add_done_callback(lambda _: self._changed.set())

    def _open_link(self, peer_id: str) -> PeerLink:
        info = self._peers.get(peer_id) or PeerInfo(peer_id=peer_id, name=peer_id)
        options = LinkOptions(
            local_peer_id=self.peer_id,
            ice_servers=self.ice_servers,
            ice_addresses=self.config.ice_addresses,
            receive=self.config.receive,
            video_buffer_frames=self.config.video_buffer_frames,
            audio_buffer_frames=self.config.audio_buffer_frames,
            negotiation_timeout_s=self.config.negotiation_timeout_s,
            video_codecs=self.config.video_codecs,
            data_channel=self.config.data_channel,
        )
        link = PeerLink(
            info,
            options=options,
            local_media=self._pumps,
            send=self._send,
            on_track=self._on_track,
            on_change=lambda: self._link_changed(peer_id),
            track_for=lambda kind, index: self._reusable_track(peer_id, kind, index),
            on_data=self._on_data,
        )
        self._links[peer_id] = link
        logger.debug("opening a link to %s (we %s)", peer_id, "offer" if link.offerer else "answer")
        link.start()
        return link

    def _on_track(self, track: RemoteTrack) -> None:
        self._all_tracks.append(track)
        self._tracks.put_nowait(track)

    def _reusable_track(self, peer_id: str, kind: str, index: int) -> RemoteTrack | None:
        """The ``index``-th live track of this peer and kind, kept from a link that was rebuilt
        (a renegotiated link asks for the next index, which does not exist yet)."""
        live = [
            track
            for track in self._all_tracks
            if track.peer_id == peer_id and track.kind == kind and not track.ended
        ]
        return live[index] if index < len(live) else None

    # ------------------------------------------------------------------ rebuilding links

    def _link_changed(self, peer_id: str) -> None:
        self._changed.set()
        link = self._links.get(peer_id)
        if link is None or self._closed:
            return
        if link.state == "connected":
            self._rebuilds.pop(peer_id, None)
        elif (
            link.failed is not None
            and (link.lost or peer_id in self._rebuilds)  # not for a peer's broken SDP
            and peer_id not in self._rebuilding
        ):
            task = asyncio.create_task(self._rebuild(peer_id, link), name="callbot-rebuild")
            self._rebuilding[peer_id] = task
            task.add_done_callback(lambda _: self._rebuilding.pop(peer_id, None))

    async def _rebuild(self, peer_id: str, failed: PeerLink) -> None:
        """aiortc has no ICE restart: a failed connection is replaced by a new one, after a
        backoff delay (per peer; reset once a link connects). The remote tracks carry on."""
        attempt = self._rebuilds.get(peer_id, 0) + 1
        self._rebuilds[peer_id] = attempt
        backoff = self.config.reconnect or Backoff()
        await asyncio.sleep(backoff.delay(attempt))
        if self._closed or self._links.get(peer_id) is not failed or peer_id not in self._wanted():
            return
        logger.info("rebuilding the link to %s (attempt %d): %s", peer_id, attempt, failed.failed)
        self._replace_link(peer_id)

    def _replace_link(self, peer_id: str) -> PeerLink:
        self._close_link(peer_id, keep_tracks=True)
        return self._open_link(peer_id)


__all__ = ["NegotiationError", "Participant"]
