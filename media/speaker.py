"""Active-speaker choice from audio levels, with hysteresis so the layout does not flap.

Pure and clock-agnostic (the caller passes ``now``), so it is tested exactly and used the same
way live (compositor polling the mixer) and offline (``callbot composite`` over file audio).
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["SpeakerSelector"]


class SpeakerSelector:
    """Picks the active speaker; a challenger must win clearly and for a while to take over.

    A participant is *speaking* when its level is at least ``threshold_db`` (dBFS). A challenger
    replaces the current speaker only after being the loudest, by ``margin_db`` over the
    current speaker's level, for ``hold_s`` without interruption. When nobody speaks, the
    current speaker stays (a pause is not a change of speaker). The first speaker, too, is
    taken only after ``hold_s`` of speaking.
    """

    def __init__(
        self,
        *,
        threshold_db: float = -45.0,
        margin_db: float = 6.0,
        hold_s: float = 1.0,
    ) -> None:
        if hold_s < 0:
            raise ValueError(f"hold_s must be >= 0, got {hold_s}")
        if margin_db < 0:
            raise ValueError(f"margin_db must be >= 0, got {margin_db}")
        self._threshold = threshold_db
        self._margin = margin_db
        self._hold = hold_s
        self._current: str | None = None
        self._challenger: str | None = None
        self._since = 0.0

    @property
    def current(self) -> str | None:
        return self._current

    def set(self, key: str | None) -> None:
        """Force the current speaker (e.g. a pinned participant); hysteresis restarts."""
        self._current = key
        self._challenger = None

    def update(self, levels: Mapping[str, float], now: float) -> str | None:
        """Feed the latest per-participant levels (dBFS); returns the current speaker."""
        if self._current is not None and self._current not in levels:
            self._current = None  # the speaker left
        loud = {k: v for k, v in levels.items() if v >= self._threshold}
        if not loud:
            self._challenger = None
            return self._current
        best = max(loud, key=lambda k: loud[k])
        if best == self._current:
            self._challenger = None
            return self._current
        current_level = levels.get(self._current, float("-inf")) if self._current else None
        if current_level is not None and loud[best] < current_level + self._margin:
            self._challenger = None
            return self._current
        if best != self._challenger:
            self._challenger = best
            self._since = now
        if now - self._since >= self._hold:
            self._current = best
            self._challenger = None
        return self._current
