"""The call state machine, pure: a call is an append-only list of events; its state is their fold.

No I/O, no clock, no asyncio: every command takes the call's events so far, the command and the
time (``now``, Unix seconds, passed in) and returns the events to append — or raises
``ProtocolError(invalid_transition)`` and changes nothing. The relay (``call_service``) stores the
events and tells the peers; the store keeps them; history and restarts only ever fold them again.

States and moves (``CallStatus``)::

    ringing --accept (a target)------------------------------> active
    ringing --end/leave/disconnect (initiator)----------------> ended  cancelled
    ringing --decline/disconnect (the last undeclined target)-> ended  all_declined
    ringing --ring timeout-----------------------------------> ended  no_answer
    active  --accept (another target) / leave (a participant)-> active
    active  --leave/disconnect (the last participant)---------> ended  last_left
    active  --end (a participant)-----------------------------> ended  ended
    (restored after a restart, nobody back in time) ----------> ended  relay_restart

Each target accepts or declines at most once; a target that disconnects before answering counts as
declining. ``ended`` is terminal. Anything else is an ``invalid_transition``.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .protocol import CallEvent, CallInfo, CallStatus, EndReason, ErrorCode, ProtocolError

CALL_ID_PREFIX = "c_"


def new_call_id() -> str:
    """A fresh random call id (64 random bits: unique across restarts, not enumerable)."""
    return CALL_ID_PREFIX + secrets.token_hex(8)


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """One stored fact about a call. ``seq`` counts from 1 within the call; ``at`` is Unix seconds.

    ``peer_id`` is who caused it (``None`` for the ring timeout and a relay restart). ``targets``
    is set on ``call_started`` only, ``reason`` on ``call_ended`` only. Every event carries its
    call's room so that a store can index any event on its own.
    """

    call_id: str
    room: str
    seq: int
    kind: CallEvent
    at: float
    peer_id: str | None
    targets: tuple[str, ...] = ()
    reason: EndReason | None = None


# --------------------------------------------------------------------------- fold


@dataclass(slots=True)
class _State:
    call_id: str
    room: str
    started_by: str
    started_at: float
    targets: list[str]
    participants: list[str]
    joined: list[str]  # everyone who ever accepted, in order
    declined: list[str]
    answered_at: float | None = None
    ended_at: float | None = None
    reason: EndReason | None = None
    last_seq: int = 0
    last_at: float = 0.0

    @property
    def status(self) -> CallStatus:
        if self.reason is not None:
            return CallStatus.ENDED
        return CallStatus.RINGING if self.answered_at is None else CallStatus.ACTIVE

    @property
    def pending(self) -> list[str]:
        """Targets that have neither accepted nor declined (their devices ring)."""
        return [t for t in self.targets if t not in self.joined and t not in self.declined]

    def info(self) -> CallInfo:
        ended = self.reason is not None
        # Once ended, "participants" lists everyone who took part: what history wants to show.
        participants = [self.started_by, *self.joined] if ended else list(self.participants)
        duration = None
        if ended:
            assert self.ended_at is not None
            duration = 0.0 if self.answered_at is None else self.ended_at - self.answered_at
        return CallInfo(
            call_id=self.call_id,
            room=self.room,
            status=self.status,
            started_by=self.started_by,
            participants=participants,
            targets=list(self.targets),
            declined_by=list(self.declined),
            started_at=self.started_at,
            answered_at=self.answered_at,
            ended_at=self.ended_at,
            reason=self.reason,
            duration_s=duration,
        )


def _replay(events: Sequence[Event]) -> _State:
    if not events:
        raise ValueError("a call has at least its call_started event")
    first = events[0]
    if first.kind is not CallEvent.CALL_STARTED or first.seq != 1:
        raise ValueError(f"call {first.call_id} does not begin with call_started (seq 1)")
    assert first.peer_id is not None
    state = _State(
        call_id=first.call_id,
        room=first.room,
        started_by=first.peer_id,
        started_at=first.at,
        targets=list(first.targets),
        participants=[first.peer_id],
        joined=[],
        declined=[],
        last_seq=first.seq,
        last_at=first.at,
    )
    for event in events[1:]:
        if event.call_id != state.call_id or event.seq != state.last_seq + 1:
            raise ValueError(f"event {event.call_id}#{event.seq} out of place in {state.call_id}")
        if state.reason is not None:
            raise ValueError(f"event {event.call_id}#{event.seq} after the call ended")
        state.last_seq, state.last_at = event.seq, event.at
        peer = event.peer_id
        match event.kind:
            case CallEvent.PARTICIPANT_JOINED:
                assert peer is not None
                state.participants.append(peer)
                state.joined.append(peer)
                if state.answered_at is None:
                    state.answered_at = event.at
            case CallEvent.CALL_DECLINED:
                assert peer is not None
                state.declined.append(peer)
            case CallEvent.PARTICIPANT_LEFT:
                assert peer is not None
                state.participants.remove(peer)
            case CallEvent.CALL_ENDED:
                state.reason = event.reason
                state.ended_at = event.at
            case CallEvent.CALL_STARTED:
                raise ValueError(f"second call_started in {state.call_id}")
    return state


def fold(events: Sequence[Event]) -> CallInfo:
    """The call's state after ``events`` (which must be a valid history, as commands make)."""
    return _replay(events).info()


# --------------------------------------------------------------------------- commands


def start(
    *, call_id: str, room: str, initiator: str, targets: Sequence[str], now: float
) -> list[Event]:
    """A new call ringing ``targets`` (duplicates dropped, order kept).

    Raises ``bad_message`` for no targets or the initiator among them: those are malformed
    requests, not moves of an existing call. Whether the targets exist is the relay's business.
    """
    unique = list(dict.fromkeys(targets))
    if not unique:
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "a call needs at least one target")
    if initiator in unique:
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "a peer cannot call itself")
    return [
        Event(
            call_id=call_id,
            room=room,
            seq=1,
            kind=CallEvent.CALL_STARTED,
            at=now,
            peer_id=initiator,
            targets=tuple(unique),
        )
    ]


def accept(events: Sequence[Event], peer_id: str, now: float) -> list[Event]:
    """A target answers: it joins, and a ringing call becomes active."""
    state = _live(events)
    if peer_id in state.joined:
        raise _refuse(state, f"{peer_id} has already accepted")
    if peer_id in state.declined:
        raise _refuse(state, f"{peer_id} has declined it")
    if peer_id not in state.targets:
        raise _refuse(state, f"{peer_id} is not a target of it")
    return _Builder(state, now).add(CallEvent.PARTICIPANT_JOINED, peer_id).events


def decline(events: Sequence[Event], peer_id: str, now: float) -> list[Event]:
    """A target refuses; if it was the last target still ringing and nobody answered, the call
    ends ``all_declined``."""
    state = _live(events)
    if peer_id in state.joined:
        raise _refuse(state, f"{peer_id} has accepted it; use leave_call")
    if peer_id in state.declined:
        raise _refuse(state, f"{peer_id} has already declined")
    if peer_id not in state.targets:
        raise _refuse(state, f"{peer_id} is not a target of it")
    return _decline(state, peer_id, now)


def leave(events: Sequence[Event], peer_id: str, now: float) -> list[Event]:
    """A participant leaves. The initiator leaving a ringing call cancels it; the last participant
    leaving an active call ends it ``last_left``."""
    state = _live(events)
    if state.status is CallStatus.RINGING and peer_id == state.started_by:
        return _Builder(state, now).end(EndReason.CANCELLED, peer_id).events
    if peer_id not in state.participants:
        hint = "; decline it instead" if peer_id in state.pending else ""
        raise _refuse(state, f"{peer_id} is not in it{hint}")
    return _leave(state, peer_id, now)


def end(events: Sequence[Event], peer_id: str, now: float) -> list[Event]:
    """End the call for everyone: the initiator of a ringing call (``cancelled``) or any
    participant of an active one (``ended``)."""
    state = _live(events)
    if state.status is CallStatus.RINGING:
        if peer_id != state.started_by:
            hint = "; decline it instead" if peer_id in state.pending else ""
            raise _refuse(state, f"only its initiator can end a ringing call{hint}")
        return _Builder(state, now).end(EndReason.CANCELLED, peer_id).events
    if peer_id not in state.participants:
        raise _refuse(state, f"{peer_id} is not in it")
    return _Builder(state, now).end(EndReason.ENDED, peer_id).events


def disconnect(events: Sequence[Event], peer_id: str, now: float) -> list[Event]:
    """``peer_id`` left the room or lost its socket: whatever it was doing in the call, it stops.

    Never refuses (a departure is a fact, not a request): a participant leaves (the initiator of a
    ringing call cancels it), a target still ringing declines, anyone else changes nothing (``[]``).
    """
    state = _replay(events)
    if state.reason is not None:
        return []
    if peer_id in state.participants:  # the initiator is one from the start
        return leave(events, peer_id, now)
    if peer_id in state.pending:
        return _decline(state, peer_id, now)
    return []


def ring_timeout(events: Sequence[Event], now: float) -> list[Event]:
    """Nobody answered in time: a call still ringing ends ``no_answer``."""
    state = _live(events)
    if state.status is not CallStatus.RINGING:
        raise _refuse(state, "only a ringing call can time out")
    return _Builder(state, now).end(EndReason.NO_ANSWER, None).events


def interrupted(events: Sequence[Event], at: float) -> list[Event]:
    """End a call that nobody came back to after a relay restart (``relay_restart``).

    ``at`` is when the previous relay run was last known to be up with the call live (its
    shutdown, or its last liveness stamp before a crash): the call cannot have gone on through
    the relay after that. Never dated before the call's last event.
    """
    state = _live(events)
    return _Builder(state, at).end(EndReason.RELAY_RESTART, None).events


def is_participant(events: Sequence[Event], peer_id: str) -> bool:
    """Is ``peer_id`` in this unfinished call (the initiator counts while it rings)?"""
    state = _replay(events)
    return state.reason is None and peer_id in state.participants


# --------------------------------------------------------------------------- JSON


def event_to_json(event: Event) -> dict[str, Any]:
    """An event as the REST API shows it (its call and room are implied by where it is shown)."""
    out: dict[str, Any] = {
        "seq": event.seq,
        "event": str(event.kind),
        "at": event.at,
        "peer_id": event.peer_id,
    }
    if event.kind is CallEvent.CALL_STARTED:
        out["targets"] = list(event.targets)
    if event.reason is not None:
        out["reason"] = str(event.reason)
    return out


def info_to_json(info: CallInfo) -> dict[str, Any]:
    """A ``CallInfo`` as on the wire: absent optional fields are left out."""
    out: dict[str, Any] = {}
    for name in CallInfo.__dataclass_fields__:
        value = getattr(info, name)
        if value is not None:
            out[name] = str(value) if isinstance(value, CallStatus | EndReason) else value
    return out


# --------------------------------------------------------------------------- internals


def _live(events: Sequence[Event]) -> _State:
    state = _replay(events)
    if state.reason is not None:
        raise _refuse(state, f"it has ended ({state.reason})")
    return state


def _refuse(state: _State, why: str) -> ProtocolError:
    return ProtocolError(
        ErrorCode.INVALID_TRANSITION, f"call {state.call_id} ({state.status}): {why}"
    )


def _decline(state: _State, peer_id: str, now: float) -> list[Event]:
    builder = _Builder(state, now).add(CallEvent.CALL_DECLINED, peer_id)
    if state.status is CallStatus.RINGING and set(state.declined) | {peer_id} >= set(state.targets):
        builder.end(EndReason.ALL_DECLINED, peer_id)
    return builder.events


def _leave(state: _State, peer_id: str, now: float) -> list[Event]:
    builder = _Builder(state, now).add(CallEvent.PARTICIPANT_LEFT, peer_id)
    if state.participants == [peer_id]:
        builder.end(EndReason.LAST_LEFT, peer_id)
    return builder.events


class _Builder:
    """Numbers new events after the stored ones; never dates one before its predecessor (a clock
    stepping back must not make a duration negative)."""

    def __init__(self, state: _State, now: float) -> None:
        self._state = state
        self._at = max(now, state.last_at)
        self.events: list[Event] = []

    def add(
        self, kind: CallEvent, peer_id: str | None, *, reason: EndReason | None = None
    ) -> _Builder:
        self.events.append(
            Event(
                call_id=self._state.call_id,
                room=self._state.room,
                seq=self._state.last_seq + len(self.events) + 1,
                kind=kind,
                at=self._at,
                peer_id=peer_id,
                reason=reason,
            )
        )
        return self

    def end(self, reason: EndReason, peer_id: str | None) -> _Builder:
        return self.add(CallEvent.CALL_ENDED, peer_id, reason=reason)
