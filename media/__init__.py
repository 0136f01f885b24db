"""callbot media engine: sources, stamping, compositing, mixing and recording of live tracks.

Everything here takes and yields aiortc ``MediaStreamTrack`` objects and PyAV frames; it knows
nothing about peers or signaling. Objects that run tasks or threads are async context managers
with an idempotent ``aclose()``.
"""

from .compositor import GridCompositor, InputStats
from .errors import ClosedError, MediaError, RecorderError, SourceError
from .layout import Rect, fit, grid
from .mixer import AudioMixer
from .recorder import Recorder, RecordingInfo
from .sources import FileSource, PatternVideoTrack, ToneAudioTrack
from .timecode import Stamp, read_stamp, stamp_luma

__all__ = [
    "AudioMixer",
    "ClosedError",
    "FileSource",
    "GridCompositor",
    "InputStats",
    "MediaError",
    "PatternVideoTrack",
    "Recorder",
    "RecorderError",
    "RecordingInfo",
    "Rect",
    "SourceError",
    "Stamp",
    "ToneAudioTrack",
    "fit",
    "grid",
    "read_stamp",
    "stamp_luma",
]
