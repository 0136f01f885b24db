"""SpeakerSelector: threshold, margin and hold decide the speaker, on explicit clock values."""

from __future__ import annotations

import pytest

from media.speaker import SpeakerSelector

QUIET = -70.0
LOUD = -20.0


def _current(sel: SpeakerSelector) -> str | None:
    """Read ``current`` afresh (mypy would keep an earlier assert's narrowing across set())."""
    return sel.current


def test_first_speaker_needs_the_threshold_and_the_hold() -> None:
    sel = SpeakerSelector(threshold_db=-45, margin_db=6, hold_s=1.0)
    assert sel.current is None
    assert sel.update({"a": -46.0, "b": QUIET}, 0.0) is None  # below threshold
    assert sel.update({"a": -46.0, "b": QUIET}, 10.0) is None  # however long
    assert sel.update({"a": -45.0, "b": QUIET}, 10.0) is None  # at threshold: speaking...
    assert sel.update({"a": -45.0, "b": QUIET}, 10.5) is None  # ...but not held long enough
    assert sel.update({"a": -45.0, "b": QUIET}, 11.0) == "a"  # held for hold_s
    assert sel.current == "a"


def test_a_challenger_must_win_by_the_margin_for_the_hold() -> None:
    sel = SpeakerSelector(margin_db=6, hold_s=1.0)
    sel.update({"a": LOUD, "b": QUIET}, 0.0)
    assert sel.update({"a": LOUD, "b": QUIET}, 1.0) == "a"
    # Louder, but by less than the margin: never takes over.
    for t in (2.0, 3.0, 10.0):
        assert sel.update({"a": LOUD, "b": LOUD + 5.9}, t) == "a"
    # By the margin: takes over only after holding it.
    assert sel.update({"a": LOUD, "b": LOUD + 6}, 11.0) == "a"
    assert sel.update({"a": LOUD, "b": LOUD + 6}, 11.5) == "a"
    assert sel.update({"a": LOUD, "b": LOUD + 6}, 12.0) == "b"


def test_a_short_blip_does_not_flip_the_speaker() -> None:
    sel = SpeakerSelector(hold_s=1.0)
    sel.update({"a": LOUD, "b": QUIET}, 0.0)
    assert sel.update({"a": LOUD, "b": QUIET}, 1.0) == "a"
    # b shouts for 0.75 s, then falls back below a: the hold restarts from scratch.
    assert sel.update({"a": LOUD, "b": -5.0}, 2.0) == "a"
    assert sel.update({"a": LOUD, "b": -5.0}, 2.75) == "a"
    assert sel.update({"a": LOUD, "b": QUIET}, 3.0) == "a"
    assert sel.update({"a": LOUD, "b": -5.0}, 3.25) == "a"
    assert sel.update({"a": LOUD, "b": -5.0}, 4.0) == "a"  # 0.75 s since the new start
    assert sel.update({"a": LOUD, "b": -5.0}, 4.25) == "b"
    # A blip interrupted by silence (nobody above threshold) restarts the hold too.
    assert sel.update({"a": -5.0, "b": LOUD}, 5.0) == "b"
    assert sel.update({"a": QUIET, "b": QUIET}, 5.5) == "b"
    assert sel.update({"a": -5.0, "b": LOUD}, 5.75) == "b"
    assert sel.update({"a": -5.0, "b": LOUD}, 6.5) == "b"
    assert sel.update({"a": -5.0, "b": LOUD}, 6.75) == "a"


def test_switching_challengers_restarts_the_hold() -> None:
    sel = SpeakerSelector(hold_s=1.0)
    sel.update({"a": LOUD, "b": QUIET, "c": QUIET}, 0.0)
    sel.update({"a": LOUD, "b": QUIET, "c": QUIET}, 1.0)
    assert sel.update({"a": LOUD, "b": -5.0, "c": -8.0}, 2.0) == "a"  # b leads
    assert sel.update({"a": LOUD, "b": -8.0, "c": -5.0}, 2.75) == "a"  # c leads: restart
    assert sel.update({"a": LOUD, "b": -8.0, "c": -5.0}, 3.5) == "a"  # b's start no longer counts
    assert sel.update({"a": LOUD, "b": -8.0, "c": -5.0}, 3.75) == "c"


def test_pauses_keep_the_speaker() -> None:
    sel = SpeakerSelector(hold_s=0.5)
    sel.update({"a": QUIET, "b": LOUD}, 0.0)
    assert sel.update({"a": QUIET, "b": LOUD}, 0.5) == "b"
    for t in (1.0, 5.0, 60.0):
        assert sel.update({"a": QUIET, "b": QUIET}, t) == "b"  # nobody speaks: b stays
    # b resumes after the pause: still b, no hold needed.
    assert sel.update({"a": QUIET, "b": LOUD}, 61.0) == "b"
    # The speaker falls silent while another talks: the other needs the hold.
    assert sel.update({"a": LOUD, "b": QUIET}, 62.0) == "b"
    assert sel.update({"a": LOUD, "b": QUIET}, 62.5) == "a"


def test_speaker_leaving_clears_it() -> None:
    sel = SpeakerSelector(hold_s=0.5)
    sel.update({"a": LOUD, "b": QUIET}, 0.0)
    assert sel.update({"a": LOUD, "b": QUIET}, 0.5) == "a"
    assert sel.update({"b": QUIET}, 1.0) is None  # a left; b is not speaking
    assert sel.update({"b": LOUD}, 1.25) is None  # b must hold like a first speaker
    assert sel.update({"b": LOUD}, 1.75) == "b"
    # The speaker leaving while another talks: the other takes over after its hold.
    sel.update({"b": LOUD, "c": LOUD - 10}, 2.0)
    assert sel.update({"c": LOUD - 10}, 2.25) is None
    assert sel.update({"c": LOUD - 10}, 2.75) == "c"


def test_set_pins_and_resets_the_hysteresis() -> None:
    sel = SpeakerSelector(hold_s=1.0)
    sel.update({"a": LOUD, "b": QUIET}, 0.0)
    sel.update({"a": LOUD, "b": QUIET}, 1.0)
    sel.update({"a": LOUD, "b": -5.0}, 2.0)  # b is 0.75 s into a take-over...
    sel.update({"a": LOUD, "b": -5.0}, 2.75)
    sel.set("b")  # ...when it is forced directly
    assert sel.current == "b"
    assert sel.update({"a": QUIET, "b": QUIET}, 3.0) == "b"
    # a now needs a full hold from its first loud update after set().
    sel.set("b")
    assert sel.update({"a": -5.0, "b": LOUD}, 3.25) == "b"
    assert sel.update({"a": -5.0, "b": LOUD}, 4.0) == "b"
    assert sel.update({"a": -5.0, "b": LOUD}, 4.25) == "a"
    # set() with a challenger in progress discards it.
    sel.update({"a": LOUD, "b": -5.0}, 5.0)
    sel.set("a")
    assert sel.update({"a": LOUD, "b": -5.0}, 5.5) == "a"  # b starts again at 5.5
    assert sel.update({"a": LOUD, "b": -5.0}, 6.25) == "a"
    assert sel.update({"a": LOUD, "b": -5.0}, 6.5) == "b"
    sel.set(None)  # reset: no speaker until someone holds the floor
    assert _current(sel) is None
    assert sel.update({"a": QUIET, "b": LOUD}, 7.0) is None
    assert sel.update({"a": QUIET, "b": LOUD}, 8.0) == "b"


def test_zero_hold_switches_at_once() -> None:
    sel = SpeakerSelector(hold_s=0.0, margin_db=0.0)
    assert sel.update({"a": LOUD, "b": QUIET}, 0.0) == "a"
    assert sel.update({"a": LOUD, "b": LOUD + 1}, 0.0) == "b"


def test_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="hold_s"):
        SpeakerSelector(hold_s=-1)
    with pytest.raises(ValueError, match="margin_db"):
        SpeakerSelector(margin_db=-1)
