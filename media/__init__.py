"""callbot media engine: sources, stamping, compositing, mixing and recording of live tracks.

Everything here takes and yields aiortc ``MediaStreamTrack`` objects and PyAV frames; it knows
nothing about peers or signaling. Objects that run tasks or threads are async context managers
with an idempotent ``aclose()``.
"""

from .analysis import (
    AudioAnalyzer,
    AudioSummary,
    FrameRecord,
    PatternSpec,
    TrackProbe,
    VideoAnalyzer,
    VideoSummary,
)
from .canvas import Canvas, Tile, placeholder_yuv
from .clock import MediaClock
from .compositor import LAYOUTS, Compositor, InputStats, LayoutName
from .errors import ClosedError, MediaError, RecorderError, SourceError
from .layout import Placement, Rect, Scene, SceneElement, fit, grid
from .mixer import AudioMixer
from .recorder import Recorder, RecordingInfo
from .sources import FileSource, PatternVideoTrack, ToneAudioTrack
from .speaker import SpeakerSelector
from .timecode import Stamp, read_stamp, stamp_luma

__all__ = [
    "LAYOUTS",
    "AudioAnalyzer",
    "AudioMixer",
    "AudioSummary",
    "Canvas",
    "ClosedError",
    "Compositor",
    "FileSource",
    "FrameRecord",
    "InputStats",
    "LayoutName",
    "MediaClock",
    "MediaError",
    "PatternSpec",
    "PatternVideoTrack",
    "Placement",
    "Recorder",
    "RecorderError",
    "RecordingInfo",
    "Rect",
    "Scene",
    "SceneElement",
    "SourceError",
    "SpeakerSelector",
    "Stamp",
    "Tile",
    "ToneAudioTrack",
    "TrackProbe",
    "VideoAnalyzer",
    "VideoSummary",
    "fit",
    "grid",
    "placeholder_yuv",
    "read_stamp",
    "stamp_luma",
]
