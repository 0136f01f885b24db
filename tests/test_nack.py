"""The NACK repeater's schedule (end to end it is exercised by tests/test_impair.py)."""

from __future__ import annotations

from peer.nack import NACK_MAX_REPEATS, _Tracker


def test_missing_packets_are_re_requested_on_a_schedule_then_given_up() -> None:
    tracker = _Tracker()
    assert tracker.due({5, 7}, now=0.0, period_s=0.1) == []  # aiortc just NACKed them itself
    assert tracker.due({5, 7}, now=0.1, period_s=0.1) == [5, 7]
    assert tracker.due({5, 7}, now=0.15, period_s=0.1) == []
    assert tracker.due({7}, now=0.2, period_s=0.1) == [7]  # 5 arrived: forgotten
    assert 5 not in tracker.seen
    sent = sum(len(tracker.due({7}, now=0.3 + i * 0.1, period_s=0.1)) for i in range(30))
    assert sent == NACK_MAX_REPEATS - 2
