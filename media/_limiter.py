"""A block peak limiter and a level meter for float audio (full scale = 1.0).

Shared by the offline compositor and usable by any mixer: gain drops at once to whatever
keeps the loudest sample of a block under the ceiling (so nothing ever clips) and recovers
smoothly over ``release_s`` (so a limited peak does not pump).
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

__all__ = ["CEILING", "Limiter", "level_dbfs"]

CEILING = 10 ** (-0.1 / 20)  # -0.1 dBFS: headroom for encoders' rounding
LEVEL_FLOOR_DB = -100.0

_Audio = npt.NDArray[np.float32]


def level_dbfs(samples: npt.NDArray[np.floating]) -> float:
    """RMS level in dBFS (a full-scale sine is -3 dB); ``LEVEL_FLOOR_DB`` for silence."""
    if samples.size == 0:
        return LEVEL_FLOOR_DB
    rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))
    if rms <= 10 ** (LEVEL_FLOOR_DB / 20):
        return LEVEL_FLOOR_DB
    return max(LEVEL_FLOOR_DB, 20 * math.log10(rms))


class Limiter:
    """Keeps every sample within ``ceiling``; unity gain (bit-exact) while under it."""

    def __init__(
        self, *, channels: int, ceiling: float = CEILING, release_s: float = 0.2, rate: int = 48000
    ) -> None:
        if not 0 < ceiling <= 1:
            raise ValueError(f"ceiling must be in (0, 1], got {ceiling}")
        self._channels = channels
        self._ceiling = ceiling
        self._rate = rate
        self._release_s = release_s
        self.gain = 1.0

    @property
    def gain_reduction_db(self) -> float:
        """How much the limiter is turning the mix down right now (0 when idle)."""
        return -20 * math.log10(self.gain) if self.gain > 0 else float("inf")

    def process(self, block: _Audio) -> _Audio:
        """Limit one block (frames x channels, float32) and return it (possibly the input)."""
        peak = float(np.max(np.abs(block))) if block.size else 0.0
        needed = min(1.0, self._ceiling / peak) if peak > 0 else 1.0
        if needed < self.gain:
            self.gain = needed  # attack: at once, for the whole block
            out: _Audio = block * np.float32(self.gain)
        else:
            frames = len(block)
            # Release: rise towards unity at 1/release_s per second of audio, never above
            # what this block tolerates.
            target = min(needed, self.gain + frames / (self._rate * self._release_s))
            if self.gain >= 1.0 and target >= 1.0:
                return block
            ramp = np.linspace(self.gain, target, frames, dtype=np.float32)
            out = block * ramp.reshape(-1, 1) if block.ndim == 2 else block * ramp
            self.gain = target
        np.clip(out, -self._ceiling, self._ceiling, out=out)
        return out
