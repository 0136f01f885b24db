"""Errors raised by :mod:`media`.

One root so callers can catch everything media-related with a single clause::

    MediaError
    ├── SourceError     a file source cannot be opened or read
    ├── RecorderError   a recording cannot be configured, opened, written or finalised
    └── ClosedError     a compositor or mixer is used after ``aclose()``

Bad arguments stay ``ValueError``: they are programming errors, not runtime media trouble.
"""

from __future__ import annotations

__all__ = ["ClosedError", "MediaError", "RecorderError", "SourceError"]


class MediaError(Exception):
    """Root of every error the media package raises on purpose."""


class SourceError(MediaError):
    """A media source cannot be opened or used."""


class RecorderError(MediaError):
    """A recording cannot be set up, written or finalised."""


class ClosedError(MediaError):
    """An object was used after ``aclose()``; it cannot be restarted."""
