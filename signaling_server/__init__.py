"""callbot's signaling relay: rooms, peer ids, offer/answer/ICE relay and the call lifecycle.

The app-level names are imported lazily so that ``import signaling_server.protocol`` (all a peer
needs) stays stdlib-only and does not pull in aiohttp.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import RunningServer, create_app, serve_forever, start_server
    from .settings import ServerSettings
    from .store import StoreError

_EXPORTS = {
    "create_app": ".app",
    "RunningServer": ".app",
    "serve_forever": ".app",
    "start_server": ".app",
    "ServerSettings": ".settings",
    "StoreError": ".store",
}

__all__ = [
    "RunningServer",
    "ServerSettings",
    "StoreError",
    "create_app",
    "serve_forever",
    "start_server",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module, __name__), name)
