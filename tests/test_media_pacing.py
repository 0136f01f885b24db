"""Pacer: exact slots on a fake clock, and the load-proof pacing check the media tests share."""

from __future__ import annotations

import itertools
import types
from collections.abc import Sequence

import pytest

from media import _pacing
from media._pacing import Pacer

_EPS = 1e-3  # timer and float slack, far below any slot length used here


def assert_paced(
    pts: Sequence[int | None], seen: Sequence[float], *, t0: float, step: int, period: float
) -> None:
    """Frames from a fresh pacer follow real time, whatever the machine's load.

    ``pts[i]`` is frame i's timestamp, ``step`` the pts ticks per slot and ``period`` the
    seconds per slot; ``seen[i]`` is ``time.monotonic()`` right after ``recv`` returned frame i,
    and ``t0`` was taken before the first ``recv``. There is deliberately no wall-clock upper
    bound (a loaded machine may be late by any amount); instead:

    * pts are whole slots from 0, strictly increasing: lateness leaves a gap, never a repeat;
    * no frame is handed out before its slot is due (never faster than real time);
    * a frame's slot is never more than one slot behind the time it was asked for, so a stall
      is skipped rather than replayed as a burst of stale timestamps.
    """
    assert len(pts) == len(seen) >= 2
    slots = []
    for p in pts:
        assert p is not None and p % step == 0, (p, step)
        slots.append(p // step)
    assert slots[0] == 0, slots
    assert all(b > a for a, b in itertools.pairwise(slots)), slots
    for slot, at in zip(slots, seen, strict=True):
        assert at - t0 >= slot * period - _EPS, f"slot {slot} handed out early: {slots}"
    for i in range(len(slots) - 1):
        behind = (seen[i] - seen[0]) - slots[i + 1] * period
        assert behind <= period + _EPS, f"slot {slots[i + 1]} is {behind:.3f} s stale: {slots}"


class _FakeClock:
    """Stands in for ``time.monotonic`` and ``asyncio.sleep`` inside ``media._pacing``."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> _FakeClock:
    fake = _FakeClock()
    monkeypatch.setattr(_pacing, "time", types.SimpleNamespace(monotonic=fake.monotonic))
    monkeypatch.setattr(_pacing, "asyncio", types.SimpleNamespace(sleep=fake.sleep))
    return fake


async def test_a_punctual_consumer_gets_every_slot_one_period_apart(clock: _FakeClock) -> None:
    pacer = Pacer(25)  # 40 ms slots
    assert [await pacer.next_slot() for _ in range(5)] == [0, 1, 2, 3, 4]
    assert clock.sleeps == pytest.approx([0.04] * 4)
    assert clock.now == pytest.approx(1000.16)


async def test_lateness_within_one_slot_is_caught_up_without_a_gap(clock: _FakeClock) -> None:
    pacer = Pacer(25)
    assert await pacer.next_slot() == 0
    clock.now += 0.07  # slot 1 was due at +40 ms: 30 ms late
    assert await pacer.next_slot() == 1
    assert clock.sleeps == []  # late: no sleep
    assert await pacer.next_slot() == 2  # due at +80 ms: back on the grid
    assert clock.sleeps == pytest.approx([0.01])


async def test_a_stall_skips_to_the_current_slot_then_paces_again(clock: _FakeClock) -> None:
    pacer = Pacer(25)
    assert await pacer.next_slot() == 0
    clock.now += 0.5  # 12.5 slots later
    assert await pacer.next_slot() == 12  # a gap, not a burst of slots 1..12
    assert clock.sleeps == []
    assert await pacer.next_slot() == 13
    assert await pacer.next_slot() == 14
    assert clock.sleeps == pytest.approx([0.02, 0.04])  # slot 13 is due at +520 ms


def test_rate_must_be_positive() -> None:
    for rate in (0, -1):
        with pytest.raises(ValueError, match="rate"):
            Pacer(rate)


def test_assert_paced_rejects_early_stale_and_repeated_frames() -> None:
    step, period = 3000, 1 / 30
    assert_paced([0, 3000, 12000], [0.0, 0.034, 0.4], t0=0.0, step=step, period=period)
    with pytest.raises(AssertionError, match="early"):  # slot 2 handed out at 10 ms
        assert_paced([0, 6000], [0.0, 0.01], t0=0.0, step=step, period=period)
    with pytest.raises(AssertionError, match="stale"):  # slot 2 asked for at 0.5 s: a burst
        assert_paced([0, 3000, 6000], [0.0, 0.5, 0.51], t0=0.0, step=step, period=period)
    with pytest.raises(AssertionError):  # a repeated timestamp
        assert_paced([0, 3000, 3000], [0.0, 0.04, 0.07], t0=0.0, step=step, period=period)
    with pytest.raises(AssertionError):  # not a whole slot
        assert_paced([0, 3001], [0.0, 0.04], t0=0.0, step=step, period=period)
