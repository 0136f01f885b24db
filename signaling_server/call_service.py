"""The relay's call service: applies call commands one at a time, stores them, tells the peers.

Every command — from a socket, from REST, a departure, a ring timeout — is a job on one queue,
run by one worker task: look the call up, ask the pure state machine (``calls``) for the new
events, append them to the store (off the loop, durably), then update the in-memory view of live
calls and send ``incoming_call``/``call_state``. One job at a time means no two commands can
interleave around the store's ``await``; a job whose requester stopped waiting (a closed REST
request) still finishes, so memory and store never disagree. A failed append changes nothing.

Restarts: the calls an earlier run left unfinished are restored as they were (ringing or active)
when the service starts, because their media never needed the relay and their members resume
with their old peer ids. Members get the resume window (``ServerSettings.resume_grace_s``) to
come back; then whoever is not back leaves each call as on a departure. A call nobody came back
to (and nothing happened in) ends ``relay_restart``, dated at the earlier run's last sign of life:
while calls are live the service stamps the store every few seconds, and once more when it
closes.

Who hears what: ``incoming_call`` goes to each target when the call starts; every stored event
becomes one ``call_state`` to everyone involved — the initiator and every target, whatever they
did since. The requester's copy of the first ``call_state`` its command caused carries its ``ref``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from . import calls
from .calls import Event
from .protocol import (
    CallEvent,
    CallInfo,
    CallState,
    CallStatus,
    ErrorCode,
    IncomingCall,
    MessageId,
    ProtocolError,
    dump_message,
)
from .rooms import Member, Rooms
from .store import EventStore

log = logging.getLogger(__name__)

#: While calls are live, the store is told the relay is up this often (see the module doc).
ALIVE_EVERY_S = 5.0


class Action(StrEnum):
    """A command on an existing call (the REST path segment and the ``*_call`` message)."""

    ACCEPT = "accept"
    DECLINE = "decline"
    LEAVE = "leave"
    END = "end"


_COMMANDS: dict[Action, Callable[[Sequence[Event], str, float], list[Event]]] = {
    Action.ACCEPT: calls.accept,
    Action.DECLINE: calls.decline,
    Action.LEAVE: calls.leave,
    Action.END: calls.end,
}


@dataclass(slots=True)
class _Live:
    """A ringing or active call, as the worker last stored it."""

    events: list[Event]
    info: CallInfo
    timer: asyncio.TimerHandle | None = None


@dataclass(slots=True)
class _Job:
    run: Callable[[], Awaitable[CallInfo | None]]
    future: asyncio.Future[CallInfo | None] | None = field(default=None)


class CallService:
    """Owns the worker task, the ring timers and the view of live calls; see the module doc."""

    def __init__(
        self,
        *,
        rooms: Rooms,
        deliver: Callable[[str, str], None],
        ring_timeout_s: float,
        clock: Callable[[], float] = time.time,
        alive_every_s: float = ALIVE_EVERY_S,
    ) -> None:
        self._rooms = rooms
        self._deliver = deliver
        self._ring_timeout_s = ring_timeout_s
        self._clock = clock
        self._alive_every_s = alive_every_s
        self._store: EventStore | None = None
        self._queue: asyncio.Queue[_Job] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None
        self._live: dict[str, _Live] = {}
        self._involved: dict[str, set[str]] = {}  # peer id -> live calls it started or is rung in
        # Restored calls whose members may still come back: call id -> events when restored.
        self._restored: dict[str, int] = {}
        self._down_at: float | None = None
        self._window: asyncio.TimerHandle | None = None
        self._alive_timer: asyncio.TimerHandle | None = None

    @property
    def store(self) -> EventStore:
        if self._store is None:
            raise RuntimeError("the call service is not running")
        return self._store

    @property
    def live_count(self) -> int:
        return len(self._live)

    def start(
        self,
        store: EventStore,
        *,
        restore: Sequence[Sequence[Event]] = (),
        down_at: float | None = None,
        window_s: float = 0.0,
    ) -> None:
        """Begin taking commands, storing in ``store`` (opened).

        ``restore``: the calls an earlier run left unfinished (``store.unfinished()``), live
        again at once; their members have ``window_s`` to come back. ``down_at``: the earlier
        run's last sign of life (``store.last_alive()``), when a call nobody came back to ends.
        """
        if self._worker is not None:
            raise RuntimeError("the call service is already running")
        self._store = store
        now = self._clock()
        for restored in restore:
            events = list(restored)
            info = calls.fold(events)
            # A ringing call rings on for what is left of its ring time (the downtime counts).
            ring_left = max(0.0, info.started_at + self._ring_timeout_s - now)
            self._track(info, events, ring_in=ring_left)
            self._restored[info.call_id] = len(events)
        self._down_at = down_at
        loop = asyncio.get_running_loop()
        self._worker = asyncio.create_task(self._work(), name="callbot-relay-calls")
        if self._restored:
            log.info("restored %d call(s) of the previous run; their members have %.1f s to "
                     "come back", len(self._restored), window_s)  # fmt: skip
            self._window = loop.call_later(window_s, self._later, self._window_over)
        self._alive_timer = loop.call_later(self._alive_every_s, self._later, self._stamp_alive)

    async def aclose(self) -> None:
        """Stop the worker and the timers; pending commands fail (``internal``). Idempotent.

        Live calls are left as stored (the next start restores them); the store is told when
        the relay stopped, which is when a restored call that nobody comes back to ends.
        """
        worker, self._worker = self._worker, None
        had_live = bool(self._live)
        for timer in (self._window, self._alive_timer):
            if timer is not None:
                timer.cancel()
        self._window = self._alive_timer = None
        for live in self._live.values():
            if live.timer is not None:
                live.timer.cancel()
        self._live.clear()
        self._involved.clear()
        self._restored.clear()
        if worker is not None:
            worker.cancel()
            try:
                await worker
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise
        while not self._queue.empty():
            _settle(self._queue.get_nowait(), _shutting_down())
        if had_live and self._store is not None:
            try:
                await self._store.mark_alive(self._clock())
            except Exception:  # the calls are stored; only their end time gets less precise
                log.exception("could not note the shutdown time in the call store")

    # ------------------------------------------------------------------ commands

    async def start_call(
        self, peer_id: str, targets: Sequence[str] | None, *, ref: MessageId | None = None
    ) -> CallInfo:
        """Ring ``targets`` (``None``: everyone else in the room) from ``peer_id``."""
        return await self._submit(lambda: self._start(peer_id, targets, ref))

    async def act(
        self, peer_id: str, call_id: str, action: Action, *, ref: MessageId | None = None
    ) -> CallInfo:
        """``peer_id`` accepts, declines, leaves or ends ``call_id``; returns the call's state."""
        return await self._submit(lambda: self._act(peer_id, call_id, action, ref))

    def peer_gone(self, peer_id: str) -> None:
        """``peer_id`` left its room or disconnected: it leaves its calls (no reply to wait for)."""
        if self._worker is not None:
            self._queue.put_nowait(_Job(lambda: self._gone(peer_id)))

    async def _submit(self, run: Callable[[], Awaitable[CallInfo | None]]) -> CallInfo:
        if self._worker is None:
            raise ProtocolError(ErrorCode.INTERNAL, "the relay is not taking call commands")
        future: asyncio.Future[CallInfo | None] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Job(run, future))
        info = await future
        assert info is not None
        return info

    async def _work(self) -> None:
        while True:
            job = await self._queue.get()
            try:
                result = await job.run()
            except ProtocolError as exc:
                _settle(job, exc)
            except asyncio.CancelledError:
                _settle(job, _shutting_down())
                raise
            except Exception:
                log.exception("call command failed")
                _settle(
                    job, ProtocolError(ErrorCode.INTERNAL, "internal error while handling the call")
                )
            else:
                if job.future is not None and not job.future.done():
                    job.future.set_result(result)

    # ------------------------------------------------------------------ jobs (on the worker)

    async def _start(
        self, peer_id: str, targets: Sequence[str] | None, ref: MessageId | None
    ) -> CallInfo:
        me = self._member(peer_id)
        if targets is None:
            resolved = [m.peer_id for m in self._rooms.others(peer_id)]
            if not resolved:
                raise ProtocolError(
                    ErrorCode.BAD_MESSAGE, f"nobody else is in room {me.room!r} to call"
                )
        else:
            resolved = list(dict.fromkeys(targets))
            if not resolved:
                raise ProtocolError(
                    ErrorCode.BAD_MESSAGE,
                    "'targets' is empty; leave it out to call everyone else in the room",
                )
            for target in resolved:
                if target == peer_id:
                    raise ProtocolError(ErrorCode.BAD_MESSAGE, "a peer cannot call itself")
                self._rooms.route(peer_id, target)  # unknown_peer, not_in_room
        self._check_not_busy(peer_id)
        call_id = calls.new_call_id()
        new = calls.start(
            call_id=call_id, room=me.room, initiator=peer_id, targets=resolved, now=self._clock()
        )
        return await self._commit([], new, requester=peer_id, ref=ref)

    async def _act(
        self, peer_id: str, call_id: str, action: Action, ref: MessageId | None
    ) -> CallInfo:
        me = self._member(peer_id)
        events = await self._load(call_id, me.room)
        new = _COMMANDS[action](events, peer_id, self._clock())
        if action is Action.ACCEPT:
            self._check_not_busy(peer_id)
        return await self._commit(events, new, requester=peer_id, ref=ref)

    async def _gone(self, peer_id: str) -> None:
        for call_id in sorted(self._involved.get(peer_id, ())):
            live = self._live.get(call_id)
            if live is None:
                continue
            new = calls.disconnect(live.events, peer_id, self._clock())
            if not new:
                continue
            try:
                await self._commit(live.events, new, requester=None, ref=None)
            except Exception:  # one call's failure must not keep the peer in its other calls
                log.exception("could not record %s leaving call %s", peer_id, call_id)

    async def _ring_timeout(self, call_id: str) -> None:
        live = self._live.get(call_id)
        if live is None or live.info.status is not CallStatus.RINGING:
            return  # answered or ended while the job waited in the queue
        # When it stopped ringing (a restored call may have timed out during the downtime).
        at = min(self._clock(), live.info.started_at + self._ring_timeout_s)
        await self._commit(
            live.events, calls.ring_timeout(live.events, at), requester=None, ref=None
        )

    async def _window_over(self) -> None:
        """The members of restored calls had their chance to come back: settle who did not."""
        restored, self._restored = self._restored, {}
        for call_id, count in restored.items():
            live = self._live.get(call_id)
            if live is None:
                continue  # it ended meanwhile
            involved = list(dict.fromkeys([live.info.started_by, *live.info.targets]))
            gone = [p for p in involved if self._rooms.get(p) is None]
            try:
                if len(gone) == len(involved) and len(live.events) == count:
                    at = live.info.started_at if self._down_at is None else self._down_at
                    new = calls.interrupted(live.events, at)
                    await self._commit(live.events, new, requester=None, ref=None)
                    continue
                for peer in gone:
                    live = self._live.get(call_id)
                    if live is None:
                        break
                    new = calls.disconnect(live.events, peer, self._clock())
                    if new:
                        await self._commit(live.events, new, requester=None, ref=None)
            except Exception:  # one call's failure must not leave the others unsettled
                log.exception("could not settle restored call %s", call_id)

    async def _stamp_alive(self) -> None:
        """While calls are live, tell the store we are up (see the module doc); then again."""
        try:
            if self._live:
                await self.store.mark_alive(self._clock())
        finally:
            if self._worker is not None:
                self._alive_timer = asyncio.get_running_loop().call_later(
                    self._alive_every_s, self._later, self._stamp_alive
                )

    # ------------------------------------------------------------------ helpers

    def _member(self, peer_id: str) -> Member:
        member = self._rooms.get(peer_id)
        if member is None:  # only a REST request can race a departure like this
            raise ProtocolError(ErrorCode.UNAUTHORIZED, f"{peer_id} has left; its session is over")
        return member

    async def _load(self, call_id: str, room: str) -> list[Event]:
        live = self._live.get(call_id)
        events = live.events if live is not None else await self.store.events(call_id)
        if not events or events[0].room != room:  # another room's call is nobody's business
            raise ProtocolError(
                ErrorCode.CALL_NOT_FOUND, f"no call {call_id[:64]!r} in room {room!r}"
            )
        return events

    def _check_not_busy(self, peer_id: str) -> None:
        for call_id in sorted(self._involved.get(peer_id, ())):
            if peer_id in self._live[call_id].info.participants:
                raise ProtocolError(
                    ErrorCode.INVALID_TRANSITION,
                    f"busy: already in call {call_id}; leave it first",
                )

    async def _commit(
        self,
        before: list[Event],
        new: list[Event],
        *,
        requester: str | None,
        ref: MessageId | None,
    ) -> CallInfo:
        """Store ``new``, then (and only then) update the live view and tell everyone."""
        await self.store.append(new)
        events = [*before, *new]
        info = calls.fold(events)
        self._track(info, events)
        involved = [info.started_by, *info.targets]
        if new[0].kind is CallEvent.CALL_STARTED:
            ring = dump_message(
                IncomingCall(
                    call_id=info.call_id,
                    from_peer_id=info.started_by,
                    participants=list(info.participants),
                    targets=list(info.targets),
                )
            )
            for target in info.targets:
                self._deliver(target, ring)
            log.info("call %s started in %r: %s -> %s", info.call_id, info.room,
                     info.started_by, ", ".join(info.targets))  # fmt: skip
        for i, event in enumerate(new):
            state = CallState(
                event=event.kind,
                call=info if i == len(new) - 1 else calls.fold(events[: len(before) + i + 1]),
                peer_id=event.peer_id,
            )
            text = dump_message(state)
            for peer in involved:
                if i == 0 and peer == requester and ref is not None:
                    self._deliver(peer, dump_message(dataclasses.replace(state, ref=ref)))
                else:
                    self._deliver(peer, text)
        if info.status is CallStatus.ENDED:
            log.info("call %s ended: %s after %.1f s", info.call_id, info.reason, info.duration_s)
        return info

    def _track(self, info: CallInfo, events: list[Event], *, ring_in: float | None = None) -> None:
        call_id = info.call_id
        live = self._live.get(call_id)
        if info.status is CallStatus.ENDED:
            if live is not None:
                del self._live[call_id]
                if live.timer is not None:
                    live.timer.cancel()
            for peer in (info.started_by, *info.targets):
                ids = self._involved.get(peer)
                if ids is not None:
                    ids.discard(call_id)
                    if not ids:
                        del self._involved[peer]
            return
        if live is None:
            live = self._live[call_id] = _Live(events=events, info=info)
            if info.status is CallStatus.RINGING:
                live.timer = asyncio.get_running_loop().call_later(
                    self._ring_timeout_s if ring_in is None else ring_in,
                    self._ring_timeout_due,
                    call_id,
                )
            for peer in (info.started_by, *info.targets):
                self._involved.setdefault(peer, set()).add(call_id)
        live.events, live.info = events, info
        if info.status is not CallStatus.RINGING and live.timer is not None:
            live.timer.cancel()
            live.timer = None

    def _later(self, run: Callable[[], Awaitable[None]]) -> None:
        """A timer came due: queue its job behind the commands (none once closed)."""
        if self._worker is not None:
            self._queue.put_nowait(_Job(run))

    def _ring_timeout_due(self, call_id: str) -> None:
        live = self._live.get(call_id)
        if live is not None:
            live.timer = None
        if self._worker is not None:
            self._queue.put_nowait(_Job(lambda: self._ring_timeout(call_id)))


def _settle(job: _Job, exc: ProtocolError) -> None:
    """Fail a job's requester, if one is still waiting (a fire-and-forget job has none)."""
    if job.future is not None and not job.future.done():
        job.future.set_exception(exc)


def _shutting_down() -> ProtocolError:
    return ProtocolError(ErrorCode.INTERNAL, "the relay is shutting down")
