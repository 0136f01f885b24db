"""Frame-accurate analysis of received test media (the public face of three modules).

* :mod:`media.analysis_video`: :class:`PatternSpec` (regenerates any source frame),
  :class:`VideoAnalyzer` → :class:`FrameRecord` per frame (the latest ``MAX_RECORDS`` kept),
  :class:`VideoSummary` (of every frame, in bounded memory);
* :mod:`media.analysis_audio`: :class:`AudioAnalyzer` → :class:`AudioSummary`;
* :mod:`media.probe`: :class:`TrackProbe`, which runs either on a live track off the loop.

Definitions and measured costs: ``docs/analysis.md``.
"""

from __future__ import annotations

from .analysis_audio import AudioAnalyzer, AudioSummary
from .analysis_video import (
    MAX_RECORDS,
    PSNR_CAP_DB,
    FrameRecord,
    PatternSpec,
    VideoAnalyzer,
    VideoSummary,
    luma_psnr,
    luma_ssim,
)
from .probe import TrackProbe

__all__ = [
    "MAX_RECORDS",
    "PSNR_CAP_DB",
    "AudioAnalyzer",
    "AudioSummary",
    "FrameRecord",
    "PatternSpec",
    "TrackProbe",
    "VideoAnalyzer",
    "VideoSummary",
    "luma_psnr",
    "luma_ssim",
]
