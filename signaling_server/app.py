"""The aiohttp application of the relay, and helpers to run it (tests, the CLI).

All state lives in the app (``web.AppKey``), so several relays can run in one process (tests do).
The call store is opened in a ``cleanup_ctx`` and closed after the sockets; the calls a previous
run left unfinished are restored (see ``call_service``). With a database, the secret that signs
resume tokens is loaded from it too, so peers get their ids back after a restart and with them
their place in those calls. Shutdown closes
every WebSocket with 1001 (going away) so that clients can tell a restart from a network failure
and reconnect.
"""

from __future__ import annotations

import asyncio
import logging
import re
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from aiohttp import WSCloseCode, web

from .handlers import HUB_KEY, Hub, websocket_handler
from .rest import add_routes
from .resume import ResumeTokens, load_or_create_secret
from .settings import ServerSettings
from .store import StoreError, open_store

log = logging.getLogger(__name__)

SETTINGS_KEY = web.AppKey("callbot_relay_settings", ServerSettings)

#: How long runner cleanup waits for handlers after their sockets were closed.
SHUTDOWN_TIMEOUT_S = 5.0

#: The browser client (plain ES modules, no build step), shipped as package data.
WEB_DIR = Path(__file__).resolve().parent / "web"
#: Explicit types: browsers refuse ES modules not served as JavaScript, and the system's
#: mimetypes table varies (some say ``application/javascript``, some know no ``.js`` at all).
WEB_CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
#: Flat file names only: no directories, no dot files, so nothing outside ``web/`` is reachable.
_WEB_NAME = re.compile(r"[A-Za-z0-9_-]+\.[a-z]+")


def create_app(settings: ServerSettings) -> web.Application:
    """Build the relay: ``GET /ws`` (protocol v1), ``/healthz``, the call API and the web page."""
    app = web.Application()
    app[SETTINGS_KEY] = settings
    app[HUB_KEY] = Hub(settings)
    app.router.add_get("/ws", websocket_handler)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/", _index)
    app.router.add_get("/web/{name}", _web_file)
    add_routes(app)
    app.cleanup_ctx.append(_call_store)
    app.on_shutdown.append(_close_websockets)
    return app


async def _call_store(app: web.Application) -> AsyncIterator[None]:
    """Open the store, restore what the last run left unfinished, run the call service; undo.

    Raises :class:`StoreError` if the database cannot be opened.
    """
    settings, hub = app[SETTINGS_KEY], app[HUB_KEY]
    store = open_store(settings.db_path)
    await store.open()
    try:
        if settings.secret is None and settings.db_path is not None:
            # Tokens signed with the database's secret still resume after a restart.
            try:
                secret = await asyncio.to_thread(load_or_create_secret, settings.db_path)
            except sqlite3.Error as exc:
                raise StoreError(f"cannot open call database {settings.db_path}: {exc}") from None
            hub.tokens = ResumeTokens(secret)
        hub.calls.start(
            store,
            restore=await store.unfinished(),
            down_at=await store.last_alive(),
            window_s=settings.resume_grace_s,
        )
        yield
    finally:
        await hub.calls.aclose()
        await store.aclose()


async def _healthz(request: web.Request) -> web.Response:
    rooms = request.app[HUB_KEY].rooms
    return web.json_response({"status": "ok", "rooms": rooms.room_count, "peers": rooms.peer_count})


async def _index(request: web.Request) -> web.StreamResponse:
    return _web_response("index.html")


async def _web_file(request: web.Request) -> web.StreamResponse:
    return _web_response(request.match_info["name"])


def _web_response(name: str) -> web.StreamResponse:
    """A file of ``web/`` with its content type; 404 for anything else (no directory listing)."""
    path = WEB_DIR / name
    content_type = WEB_CONTENT_TYPES.get(path.suffix)
    if not _WEB_NAME.fullmatch(name) or content_type is None or not path.is_file():
        raise web.HTTPNotFound(text=f"no such file: {name}")
    # no-cache: a browser revalidates (ETag), so a new relay version never runs stale modules.
    headers = {"Content-Type": content_type, "Cache-Control": "no-cache"}
    return web.FileResponse(path, headers=headers)


async def _close_websockets(app: web.Application) -> None:
    hub = app[HUB_KEY]
    if hub.connections:
        log.info("closing %d websocket(s) for shutdown", len(hub.connections))
    await hub.close_all(code=WSCloseCode.GOING_AWAY, message=b"server shutting down")


@dataclass(frozen=True)
class RunningServer:
    """Where a started relay listens (the real port when ``port=0`` was asked for)."""

    host: str
    port: int

    @property
    def http_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return self.http_url.replace("http://", "ws://", 1) + "/ws"


@asynccontextmanager
async def start_server(settings: ServerSettings) -> AsyncIterator[RunningServer]:
    """Run the relay for the duration of the block; on exit, shut it down gracefully."""
    runner = web.AppRunner(
        create_app(settings), handle_signals=False, shutdown_timeout=SHUTDOWN_TIMEOUT_S
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, settings.host, settings.port)
        await site.start()
        port = runner.addresses[0][1] if settings.port == 0 else settings.port
        yield RunningServer(host=settings.host, port=int(port))
    finally:
        await runner.cleanup()


async def serve_forever(settings: ServerSettings) -> None:
    """Run the relay until cancelled (``callbot serve``); cancellation shuts it down cleanly."""
    async with start_server(settings) as server:
        log.info(
            "signaling relay listening on %s (health: %s/healthz)", server.ws_url, server.http_url
        )
        await asyncio.Event().wait()
