"""The mixers' peak limiter (live mixer and offline compositor) and a level meter.

Full scale is 1.0 (float32 samples, frames x channels).
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

__all__ = ["CEILING_DBFS", "LEVEL_FLOOR_DB", "Limiter", "level_dbfs"]

CEILING_DBFS = -0.1
"""The limiter keeps every output sample at or below this peak level."""

LEVEL_FLOOR_DB = -100.0
"""The level reported for silence."""

_RELEASE_MS = 150.0  # limiter release time constant: gain recovers by 1/e of its dB per 150 ms
_UNITY_SNAP_DB = 0.01  # a reduction this small is dropped, so unity gain is exact again

_Samples = npt.NDArray[np.float32]


def level_dbfs(samples: npt.NDArray[np.floating]) -> float:
    """RMS level in dBFS (a full-scale sine is -3 dB); ``LEVEL_FLOOR_DB`` for silence."""
    if samples.size == 0:
        return LEVEL_FLOOR_DB
    mean_square = float(np.mean(np.square(samples, dtype=np.float64)))
    if mean_square <= 10 ** (LEVEL_FLOOR_DB / 10):
        return LEVEL_FLOOR_DB
    return 10 * math.log10(mean_square)


class Limiter:
    """Peak limiter with linked channels: instant attack, exponential release in dB.

    Works per output frame, whose samples are all known before any is released, so the
    attack ramps from the previous gain down to the new one and reaches it just before the
    first sample that needs it: no sample ever exceeds the ceiling, and the gain only steps
    when that first sample opens the frame. Release ramps up across the frame to a target
    that the frame's peak allows, so it cannot overshoot either.
    """

    __slots__ = ("_ceiling", "_decay", "_gain", "_gain_db", "_steps")

    def __init__(self, frame_ms: float, frame_samples: int) -> None:
        self._ceiling = 10 ** (CEILING_DBFS / 20)
        self._decay = math.exp(-frame_ms / _RELEASE_MS)
        self._gain = 1.0
        self._gain_db = 0.0
        self._steps = np.arange(frame_samples, dtype=np.float32)

    @property
    def reduction_db(self) -> float:
        return -self._gain_db + 0.0  # + 0.0: no "-0.0" at unity

    def process(self, mix: _Samples) -> None:
        """Scale ``mix`` (frames x channels, full scale 1.0) in place."""
        peak = max(float(mix.max()), -float(mix.min()))
        gain_db = self._gain_db * self._decay  # released towards unity
        if gain_db > -_UNITY_SNAP_DB:
            gain_db = 0.0
        if peak > self._ceiling:
            gain_db = min(gain_db, 20 * math.log10(self._ceiling / peak))
        new = 10 ** (gain_db / 20)
        old = self._gain
        self._gain, self._gain_db = new, gain_db
        if new == old:
            if new != 1.0:
                mix *= np.float32(new)
            return  # at unity: untouched, bit-exact
        n = len(mix)
        if new > old:  # release: every gain on the ramp is below new, so safe
            ramp_len = n
        else:  # attack: down to the new gain by the first sample the old one pushes over
            over = np.abs(mix.reshape(-1)) * old > self._ceiling
            ramp_len = int(over.argmax()) // mix.shape[1]
        gains = np.full(n, new, dtype=np.float32)
        if ramp_len:
            gains[:ramp_len] = self._steps[:ramp_len] * np.float32((new - old) / ramp_len) + old
        mix *= gains[:, None]
