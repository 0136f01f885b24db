"""WebSocket client for the relay: one connection, typed messages, request/reply by ``id``.

Every message first goes to an optional synchronous ``observer`` (in arrival order, so state
mirrored from the relay is never applied out of order), then resolves the request whose ``id``
its ``ref`` names, if any, and is always queued for :meth:`SignalingClient.messages`.
Reconnecting with backoff is a later layer: :class:`SignalingState` is the seam for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import AsyncIterator, Callable
from enum import StrEnum
from typing import Any

import aiohttp

from signaling_server.protocol import (
    MAX_MESSAGE_BYTES,
    ClientMessage,
    Error,
    ProtocolError,
    dump_message,
    parse_message,
)

from .errors import ConnectError, ServerError

logger = logging.getLogger(__name__)


class SignalingState(StrEnum):
    NEW = "new"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    CLOSED = "closed"


class SignalingClient:
    """Owns its HTTP session, socket and reader task; ``aclose()`` releases all three."""

    def __init__(
        self,
        url: str,
        *,
        connect_timeout_s: float = 10.0,
        observer: Callable[[Any], None] | None = None,
    ) -> None:
        self.url = url
        self._observer = observer
        self._connect_timeout_s = connect_timeout_s
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._inbox: asyncio.Queue[Any] = asyncio.Queue()
        self._pending: dict[str, asyncio.Future[Any]] = {}
        self._ids = itertools.count(1)
        self._send_lock = asyncio.Lock()
        self.state = SignalingState.NEW
        #: Why the connection ended, if it did not end by ``aclose()``.
        self.close_reason: str | None = None
        #: The WebSocket close code the relay sent, if it closed the connection.
        self.close_code: int | None = None

    async def connect(self) -> None:
        self.state = SignalingState.CONNECTING
        self._session = aiohttp.ClientSession()
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                self._ws = await self._session.ws_connect(
                    self.url, heartbeat=20.0, max_msg_size=4 * MAX_MESSAGE_BYTES
                )
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            await self.aclose()
            detail = str(exc) or type(exc).__name__
            raise ConnectError(f"cannot reach the relay at {self.url}: {detail}") from exc
        self.state = SignalingState.CONNECTED
        self._reader = asyncio.create_task(self._read(), name="callbot-signaling-reader")

    def next_id(self) -> str:
        return f"c{next(self._ids)}"

    async def send(self, message: ClientMessage) -> None:
        ws = self._ws
        if ws is None or ws.closed or self.state is not SignalingState.CONNECTED:
            raise ConnectError(f"not connected to the relay ({self.close_reason or self.state})")
        async with self._send_lock:
            try:
                await ws.send_str(dump_message(message))
            except (aiohttp.ClientError, ConnectionError, RuntimeError) as exc:
                raise ConnectError(f"lost the relay while sending: {exc}") from exc

    async def request(self, message: ClientMessage, *, timeout_s: float = 10.0) -> Any:
        """Send a message that has an ``id`` and wait for the reply whose ``ref`` matches.

        Raises :class:`ServerError` if the relay answers with ``error``.
        """
        ref = getattr(message, "id", None)
        if not isinstance(ref, str):
            raise ValueError("request() needs a message with a string id (use next_id())")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[ref] = future
        try:
            await self.send(message)
            async with asyncio.timeout(timeout_s):
                reply = await future
        except TimeoutError:
            raise ConnectError(
                f"the relay did not answer {message.type!r} in {timeout_s}s"
            ) from None
        finally:
            self._pending.pop(ref, None)
        if isinstance(reply, Error):
            raise ServerError(reply.code, reply.message)
        return reply

    async def messages(self) -> AsyncIterator[Any]:
        """Every server message, replies included, in order; ends when the connection does."""
        while True:
            item = await self._inbox.get()
            if item is None:
                return
            yield item

    async def _read(self) -> None:
        ws = self._ws
        assert ws is not None
        try:
            async for frame in ws:
                if frame.type is not aiohttp.WSMsgType.TEXT:
                    if frame.type is aiohttp.WSMsgType.ERROR:
                        self.close_reason = f"websocket error: {ws.exception()}"
                    continue
                try:
                    message = parse_message(frame.data, origin="server")
                except ProtocolError as exc:
                    logger.warning("ignoring a malformed message from the relay: %s", exc)
                    continue
                if self._observer is not None:
                    try:
                        self._observer(message)
                    except Exception:  # a bug there must not silently end the connection
                        logger.exception("observer failed on %s", message.type)
                ref = getattr(message, "ref", None)
                future = self._pending.get(ref) if isinstance(ref, str) else None
                if future is not None and not future.done():
                    future.set_result(message)
                self._inbox.put_nowait(message)
        except (aiohttp.ClientError, ConnectionError) as exc:
            self.close_reason = f"lost the relay: {exc}"
        except Exception as exc:
            # A bug of ours: say so, and close the socket so the relay sees us go instead of
            # keeping a peer that no longer listens.
            logger.exception("the signaling reader failed")
            self.close_reason = f"internal error in the signaling reader: {exc!r}"
            with contextlib.suppress(aiohttp.ClientError, ConnectionError, RuntimeError):
                await ws.close()
        finally:
            self.close_code = ws.close_code
            if self.close_reason is None and self.state is SignalingState.CONNECTED:
                self.close_reason = f"the relay closed the connection (code {ws.close_code})"
            self.state = SignalingState.CLOSED
            lost = ConnectError(self.close_reason or "connection closed")
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(lost)
            self._inbox.put_nowait(None)

    async def aclose(self) -> None:
        """Close the socket and session and stop the reader. Idempotent."""
        was = self.state
        self.state = SignalingState.CLOSED
        if self._ws is not None and not self._ws.closed:
            with contextlib.suppress(aiohttp.ClientError, ConnectionError, RuntimeError):
                await self._ws.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
            self._reader = None
        elif was is not SignalingState.CLOSED:
            self._inbox.put_nowait(None)
        if self._session is not None:
            await self._session.close()
            self._session = None


__all__ = ["SignalingClient", "SignalingState"]
