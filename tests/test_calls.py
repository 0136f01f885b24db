"""The pure call state machine: every transition, every refusal, the fold."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest

from signaling_server import calls
from signaling_server.calls import Event
from signaling_server.protocol import (
    CallEvent,
    CallInfo,
    CallStatus,
    EndReason,
    ErrorCode,
    ProtocolError,
)

A, B, C, X = "p_a", "p_b", "p_c", "p_x"  # A calls B and C; X is a stranger
T0 = 1000.0


def started(*targets: str) -> list[Event]:
    return calls.start(call_id="c_1", room="r", initiator=A, targets=targets or (B, C), now=T0)


def then(events: list[Event], new: Sequence[Event]) -> list[Event]:
    return [*events, *new]


def ringing() -> list[Event]:
    return started()


def active() -> list[Event]:
    """A called B and C; B answered at T0 + 5."""
    events = ringing()
    return then(events, calls.accept(events, B, T0 + 5))


def ended() -> list[Event]:
    events = ringing()
    return then(events, calls.end(events, A, T0 + 1))


def kinds(events: Sequence[Event]) -> list[CallEvent]:
    return [e.kind for e in events]


def refused(fn: Callable[[], object], *words: str) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        fn()
    assert info.value.code is ErrorCode.INVALID_TRANSITION
    assert "c_1" in info.value.message
    for word in words:
        assert word in info.value.message, info.value.message
    return info.value


# --------------------------------------------------------------------------- start and fold


def test_start_rings_the_targets() -> None:
    events = started()
    assert events == [
        Event(
            call_id="c_1", room="r", seq=1, kind=CallEvent.CALL_STARTED, at=T0, peer_id=A,
            targets=(B, C),
        )
    ]  # fmt: skip
    assert calls.fold(events) == CallInfo(
        call_id="c_1",
        room="r",
        status=CallStatus.RINGING,
        started_by=A,
        participants=[A],
        targets=[B, C],
        declined_by=[],
        started_at=T0,
    )


def test_start_drops_duplicate_targets_keeping_order() -> None:
    assert started(C, B, C, B)[0].targets == (C, B)


@pytest.mark.parametrize("targets", [(), (A,), (B, A)])
def test_start_without_targets_or_with_self_is_bad_message(targets: tuple[str, ...]) -> None:
    with pytest.raises(ProtocolError) as info:
        calls.start(call_id="c_1", room="r", initiator=A, targets=targets, now=T0)
    assert info.value.code is ErrorCode.BAD_MESSAGE


def test_new_call_ids_are_random() -> None:
    ids = {calls.new_call_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(i.startswith("c_") for i in ids)


def test_fold_refuses_a_broken_history() -> None:
    events = active()
    with pytest.raises(ValueError, match="at least"):
        calls.fold([])
    with pytest.raises(ValueError, match="begin"):
        calls.fold(events[1:])
    with pytest.raises(ValueError, match="out of place"):
        calls.fold([events[0], events[1], events[1]])
    done = then(ringing(), calls.end(ringing(), A, T0))
    with pytest.raises(ValueError, match="after the call ended"):
        calls.fold([*done, Event(**{**_fields(events[1]), "seq": 3})])


def _fields(event: Event) -> dict[str, object]:
    return {name: getattr(event, name) for name in Event.__dataclass_fields__}


# --------------------------------------------------------------------------- ringing


def test_accept_makes_a_ringing_call_active() -> None:
    events = ringing()
    new = calls.accept(events, B, T0 + 5)
    assert kinds(new) == [CallEvent.PARTICIPANT_JOINED]
    assert (new[0].seq, new[0].peer_id, new[0].at) == (2, B, T0 + 5)
    info = calls.fold(then(events, new))
    assert info.status is CallStatus.ACTIVE
    assert info.participants == [A, B]
    assert info.answered_at == T0 + 5
    assert info.duration_s is None and info.reason is None


def test_decline_by_one_target_keeps_ringing() -> None:
    events = ringing()
    new = calls.decline(events, B, T0 + 1)
    assert kinds(new) == [CallEvent.CALL_DECLINED]
    info = calls.fold(then(events, new))
    assert info.status is CallStatus.RINGING
    assert info.declined_by == [B]


def test_every_target_declining_ends_all_declined() -> None:
    events = ringing()
    events = then(events, calls.decline(events, C, T0 + 1))
    new = calls.decline(events, B, T0 + 2)
    assert kinds(new) == [CallEvent.CALL_DECLINED, CallEvent.CALL_ENDED]
    assert [e.seq for e in new] == [3, 4]
    assert new[1].peer_id == B
    info = calls.fold(then(events, new))
    assert info.status is CallStatus.ENDED
    assert info.reason is EndReason.ALL_DECLINED
    assert info.declined_by == [C, B]
    assert info.participants == [A]
    assert info.ended_at == T0 + 2
    assert info.duration_s == 0.0


def test_initiator_ending_a_ringing_call_cancels_it() -> None:
    events = ringing()
    new = calls.end(events, A, T0 + 3)
    assert kinds(new) == [CallEvent.CALL_ENDED]
    info = calls.fold(then(events, new))
    assert (info.status, info.reason, info.duration_s) == (
        CallStatus.ENDED,
        EndReason.CANCELLED,
        0.0,
    )


def test_initiator_leaving_a_ringing_call_cancels_it() -> None:
    events = ringing()
    new = calls.leave(events, A, T0 + 3)
    assert kinds(new) == [CallEvent.CALL_ENDED]
    assert calls.fold(then(events, new)).reason is EndReason.CANCELLED


def test_ring_timeout_ends_no_answer() -> None:
    events = ringing()
    events = then(events, calls.decline(events, B, T0 + 1))  # one declined, one never answered
    new = calls.ring_timeout(events, T0 + 90)
    assert kinds(new) == [CallEvent.CALL_ENDED]
    assert new[0].peer_id is None
    info = calls.fold(then(events, new))
    assert (info.reason, info.ended_at, info.duration_s) == (EndReason.NO_ANSWER, T0 + 90, 0.0)


def test_initiator_disconnecting_cancels_a_ringing_call() -> None:
    events = ringing()
    new = calls.disconnect(events, A, T0 + 1)
    assert calls.fold(then(events, new)).reason is EndReason.CANCELLED


def test_target_disconnecting_while_ringing_declines() -> None:
    events = ringing()
    new = calls.disconnect(events, B, T0 + 1)
    assert kinds(new) == [CallEvent.CALL_DECLINED]
    events = then(events, new)
    new = calls.disconnect(events, C, T0 + 2)
    assert kinds(new) == [CallEvent.CALL_DECLINED, CallEvent.CALL_ENDED]
    assert calls.fold(then(events, new)).reason is EndReason.ALL_DECLINED


def test_stranger_or_declined_target_disconnecting_changes_nothing() -> None:
    events = ringing()
    assert calls.disconnect(events, X, T0 + 1) == []
    events = then(events, calls.decline(events, B, T0 + 1))
    assert calls.disconnect(events, B, T0 + 2) == []


def test_disconnect_from_an_ended_call_changes_nothing() -> None:
    assert calls.disconnect(ended(), A, T0 + 5) == []
    assert calls.disconnect(ended(), B, T0 + 5) == []


@pytest.mark.parametrize(
    ("command", "peer", "words"),
    [
        (calls.accept, A, ("not a target",)),  # the initiator is no target
        (calls.accept, X, ("not a target",)),
        (calls.decline, A, ("not a target",)),
        (calls.decline, X, ("not a target",)),
        (calls.end, B, ("only its initiator", "decline")),  # a target ends a ringing call
        (calls.end, X, ("only its initiator",)),
        (calls.leave, B, ("not in it", "decline")),  # a target has not joined yet
        (calls.leave, X, ("not in it",)),
    ],
)
def test_refusals_while_ringing(
    command: Callable[[Sequence[Event], str, float], list[Event]], peer: str, words: tuple[str, ...]
) -> None:
    events = ringing()
    refused(lambda: command(events, peer, T0 + 1), "ringing", *words)
    assert calls.fold(events).status is CallStatus.RINGING


def test_declining_twice_is_refused() -> None:
    events = ringing()
    events = then(events, calls.decline(events, B, T0 + 1))
    refused(lambda: calls.decline(events, B, T0 + 2), "already declined")


def test_accepting_after_declining_is_refused() -> None:
    events = ringing()
    events = then(events, calls.decline(events, B, T0 + 1))
    refused(lambda: calls.accept(events, B, T0 + 2), "declined")


# --------------------------------------------------------------------------- active


def test_another_target_joins_an_active_call() -> None:
    events = active()
    new = calls.accept(events, C, T0 + 9)
    assert kinds(new) == [CallEvent.PARTICIPANT_JOINED]
    info = calls.fold(then(events, new))
    assert info.status is CallStatus.ACTIVE
    assert info.participants == [A, B, C]
    assert info.answered_at == T0 + 5  # the first answer counts


def test_a_participant_leaves_and_the_call_goes_on() -> None:
    events = active()
    new = calls.leave(events, A, T0 + 7)  # even the initiator may leave an active call
    assert kinds(new) == [CallEvent.PARTICIPANT_LEFT]
    info = calls.fold(then(events, new))
    assert info.status is CallStatus.ACTIVE
    assert info.participants == [B]


def test_the_last_participant_leaving_ends_last_left() -> None:
    events = active()
    events = then(events, calls.leave(events, A, T0 + 7))
    new = calls.leave(events, B, T0 + 20)
    assert kinds(new) == [CallEvent.PARTICIPANT_LEFT, CallEvent.CALL_ENDED]
    assert new[1].peer_id == B
    info = calls.fold(then(events, new))
    assert info.reason is EndReason.LAST_LEFT
    assert info.duration_s == 15.0  # from the answer at T0 + 5
    assert info.participants == [A, B]  # once ended: everyone who took part


def test_end_by_a_participant_of_an_active_call_ends_it() -> None:
    events = active()
    new = calls.end(events, B, T0 + 65)  # not only the initiator
    assert kinds(new) == [CallEvent.CALL_ENDED]
    info = calls.fold(then(events, new))
    assert (info.status, info.reason, info.duration_s) == (CallStatus.ENDED, EndReason.ENDED, 60)


def test_a_pending_target_may_still_decline_an_active_call() -> None:
    events = active()
    new = calls.decline(events, C, T0 + 6)
    assert kinds(new) == [CallEvent.CALL_DECLINED]  # no all_declined: B answered
    assert calls.fold(then(events, new)).status is CallStatus.ACTIVE


def test_disconnects_in_an_active_call() -> None:
    events = active()
    new = calls.disconnect(events, C, T0 + 6)  # still ringing for C: a decline
    assert kinds(new) == [CallEvent.CALL_DECLINED]
    events = then(events, new)
    new = calls.disconnect(events, A, T0 + 7)
    assert kinds(new) == [CallEvent.PARTICIPANT_LEFT]
    events = then(events, new)
    assert calls.disconnect(events, A, T0 + 8) == []  # already gone
    new = calls.disconnect(events, B, T0 + 9)
    assert kinds(new) == [CallEvent.PARTICIPANT_LEFT, CallEvent.CALL_ENDED]
    assert calls.fold(then(events, new)).reason is EndReason.LAST_LEFT


def test_refusals_while_active() -> None:
    events = active()
    refused(lambda: calls.accept(events, B, T0 + 6), "active", "already accepted")
    refused(lambda: calls.decline(events, B, T0 + 6), "accepted", "leave_call")
    refused(lambda: calls.accept(events, X, T0 + 6), "not a target")
    refused(lambda: calls.leave(events, X, T0 + 6), "not in it")
    refused(lambda: calls.leave(events, C, T0 + 6), "not in it", "decline")
    refused(lambda: calls.end(events, C, T0 + 6), "not in it")  # pending target
    refused(lambda: calls.end(events, X, T0 + 6), "not in it")
    refused(lambda: calls.ring_timeout(events, T0 + 90), "only a ringing call")


def test_who_left_can_neither_rejoin_nor_end_nor_leave_again() -> None:
    events = active()
    events = then(events, calls.accept(events, C, T0 + 6))
    events = then(events, calls.leave(events, B, T0 + 7))
    refused(lambda: calls.accept(events, B, T0 + 8), "already accepted")
    refused(lambda: calls.leave(events, B, T0 + 8), "not in it")
    refused(lambda: calls.end(events, B, T0 + 8), "not in it")
    refused(lambda: calls.decline(events, B, T0 + 8), "accepted")


# --------------------------------------------------------------------------- ended


@pytest.mark.parametrize("peer", [A, B, C, X])
@pytest.mark.parametrize("command", [calls.accept, calls.decline, calls.leave, calls.end])
def test_every_command_on_an_ended_call_is_refused(
    command: Callable[[Sequence[Event], str, float], list[Event]], peer: str
) -> None:
    events = ended()
    refused(lambda: command(events, peer, T0 + 2), "ended", "cancelled")


def test_timeout_and_restart_of_an_ended_call_are_refused() -> None:
    refused(lambda: calls.ring_timeout(ended(), T0 + 90), "ended")
    refused(lambda: calls.interrupted(ended(), T0 + 90), "ended")


# --------------------------------------------------------------------------- restart, clock


def test_interrupted_call_ends_relay_restart_when_the_relay_was_last_up() -> None:
    events = active()
    events = then(events, calls.accept(events, C, T0 + 8))
    new = calls.interrupted(events, T0 + 65)  # the earlier run stopped (or last stamped) then
    assert kinds(new) == [CallEvent.CALL_ENDED]
    assert (new[0].at, new[0].peer_id, new[0].reason) == (T0 + 65, None, EndReason.RELAY_RESTART)
    info = calls.fold(then(events, new))
    assert (info.ended_at, info.duration_s) == (T0 + 65, 60.0)
    # A stamp older than the call's last event (a crash soon after it) never dates it earlier.
    info = calls.fold(then(events, calls.interrupted(events, T0 - 30)))
    assert (info.ended_at, info.duration_s) == (T0 + 8, 3.0)
    ringing_events = ringing()
    info = calls.fold(then(ringing_events, calls.interrupted(ringing_events, T0 + 20)))
    assert (info.reason, info.ended_at, info.duration_s) == (EndReason.RELAY_RESTART, T0 + 20, 0.0)


def test_a_clock_stepping_back_never_dates_an_event_earlier() -> None:
    events = active()
    new = calls.end(events, A, T0 - 100)
    assert new[0].at == T0 + 5
    assert calls.fold(then(events, new)).duration_s == 0.0


def test_is_participant() -> None:
    events = active()
    assert calls.is_participant(events, A)
    assert calls.is_participant(events, B)
    assert not calls.is_participant(events, C)  # still ringing for C
    assert calls.is_participant(ringing(), A)
    assert not calls.is_participant(ended(), A)


# --------------------------------------------------------------------------- JSON


def test_event_and_info_json() -> None:
    events = ringing()
    events = then(events, calls.decline(events, B, T0 + 1))
    events = then(events, calls.decline(events, C, T0 + 2))
    assert [calls.event_to_json(e) for e in events] == [
        {"seq": 1, "event": "call_started", "at": T0, "peer_id": A, "targets": [B, C]},
        {"seq": 2, "event": "call_declined", "at": T0 + 1, "peer_id": B},
        {"seq": 3, "event": "call_declined", "at": T0 + 2, "peer_id": C},
        {"seq": 4, "event": "call_ended", "at": T0 + 2, "peer_id": C, "reason": "all_declined"},
    ]
    assert calls.info_to_json(calls.fold(events)) == {
        "call_id": "c_1",
        "room": "r",
        "status": "ended",
        "started_by": A,
        "participants": [A],
        "targets": [B, C],
        "declined_by": [B, C],
        "started_at": T0,
        "ended_at": T0 + 2,
        "reason": "all_declined",
        "duration_s": 0.0,
    }
    assert "answered_at" not in calls.info_to_json(calls.fold(ringing()))
