"""The HTTP call API: history to read, and call commands acting as a connected peer.

Reads need no credentials: history holds only peer ids, room names and times, and call ids are
random. Writes act as the joined peer whose ``session_token`` (from its ``welcome``) comes as
``Authorization: Bearer …``; the token dies with that peer's membership. Commands go through the
same :class:`~.call_service.CallService` as the WebSocket ones, so a call started here rings
sockets exactly like one started there. Errors are ``{"code", "message"}`` with the WebSocket's
error codes and a matching HTTP status.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

from aiohttp import web

from . import calls
from .call_service import Action
from .handlers import HUB_KEY
from .protocol import ErrorCode, ProtocolError
from .rooms import Member
from .store import BadCursor

log = logging.getLogger(__name__)

DEFAULT_PAGE = 20
MAX_PAGE = 100

STATUS: dict[ErrorCode, HTTPStatus] = {
    ErrorCode.BAD_JSON: HTTPStatus.BAD_REQUEST,
    ErrorCode.BAD_MESSAGE: HTTPStatus.BAD_REQUEST,
    ErrorCode.UNKNOWN_TYPE: HTTPStatus.BAD_REQUEST,
    ErrorCode.TOO_LARGE: HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
    ErrorCode.NOT_JOINED: HTTPStatus.UNAUTHORIZED,
    ErrorCode.ALREADY_JOINED: HTTPStatus.CONFLICT,
    ErrorCode.UNKNOWN_PEER: HTTPStatus.NOT_FOUND,
    ErrorCode.NOT_IN_ROOM: HTTPStatus.FORBIDDEN,
    ErrorCode.UNAUTHORIZED: HTTPStatus.UNAUTHORIZED,
    ErrorCode.RATE_LIMITED: HTTPStatus.TOO_MANY_REQUESTS,
    ErrorCode.CALL_NOT_FOUND: HTTPStatus.NOT_FOUND,
    ErrorCode.INVALID_TRANSITION: HTTPStatus.CONFLICT,
    ErrorCode.INTERNAL: HTTPStatus.INTERNAL_SERVER_ERROR,
}

_Handler = Callable[[web.Request], Awaitable[web.Response]]


def add_routes(app: web.Application) -> None:
    app.router.add_get("/rooms/{room}/calls", _errors(list_calls))
    app.router.add_post("/rooms/{room}/calls", _errors(start_call))
    app.router.add_get("/calls/{call_id}", _errors(get_call))
    for action in Action:
        app.router.add_post(f"/calls/{{call_id}}/{action}", _errors(_action_handler(action)))


def error_response(exc: ProtocolError) -> web.Response:
    status = STATUS[exc.code]
    headers = {"WWW-Authenticate": "Bearer"} if status is HTTPStatus.UNAUTHORIZED else None
    return web.json_response(
        {"code": str(exc.code), "message": exc.message}, status=status, headers=headers
    )


def _errors(handler: _Handler) -> _Handler:
    async def wrapped(request: web.Request) -> web.Response:
        try:
            return await handler(request)
        except ProtocolError as exc:
            return error_response(exc)
        except Exception:
            log.exception("%s %s failed", request.method, request.path)
            return error_response(
                ProtocolError(ErrorCode.INTERNAL, "internal error while handling this request")
            )

    wrapped.__name__ = handler.__name__
    wrapped.__doc__ = handler.__doc__
    return wrapped


# --------------------------------------------------------------------------- reads


async def list_calls(request: web.Request) -> web.Response:
    """``GET /rooms/{room}/calls?limit=N&cursor=C``: the room's calls, newest first."""
    room = request.match_info["room"]
    limit = _limit(request.query.get("limit"))
    cursor = request.query.get("cursor") or None
    store = request.app[HUB_KEY].calls.store
    try:
        page = await store.calls(room, limit=limit, cursor=cursor)
    except BadCursor as exc:
        raise ProtocolError(ErrorCode.BAD_MESSAGE, str(exc)) from None
    return web.json_response(
        {"calls": [calls.info_to_json(c) for c in page.calls], "next_cursor": page.next_cursor}
    )


async def get_call(request: web.Request) -> web.Response:
    """``GET /calls/{call_id}``: the call's state and every event of it."""
    call_id = request.match_info["call_id"]
    events = await request.app[HUB_KEY].calls.store.events(call_id)
    if not events:
        raise ProtocolError(ErrorCode.CALL_NOT_FOUND, f"no call {call_id[:64]!r}")
    return web.json_response(
        {
            "call": calls.info_to_json(calls.fold(events)),
            "events": [calls.event_to_json(e) for e in events],
        }
    )


def _limit(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_PAGE
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_PAGE:
        raise ProtocolError(
            ErrorCode.BAD_MESSAGE, f"limit must be an integer in 1..{MAX_PAGE}, got {raw[:32]!r}"
        )
    return int(raw)


# --------------------------------------------------------------------------- commands


async def start_call(request: web.Request) -> web.Response:
    """``POST /rooms/{room}/calls`` ``{"targets": [...]?}``: ring them as the token's peer."""
    me = _caller(request)
    room = request.match_info["room"]
    if me.room != room:
        raise ProtocolError(
            ErrorCode.NOT_IN_ROOM, f"{me.peer_id} is in room {me.room!r}, not {room[:64]!r}"
        )
    body = await _body(request)
    targets = body.get("targets")
    if targets is not None and (
        not isinstance(targets, list) or not all(isinstance(t, str) for t in targets)
    ):
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "'targets' must be a list of peer ids")
    info = await request.app[HUB_KEY].calls.start_call(me.peer_id, targets)
    return web.json_response({"call": calls.info_to_json(info)}, status=HTTPStatus.CREATED)


def _action_handler(action: Action) -> _Handler:
    async def handler(request: web.Request) -> web.Response:
        me = _caller(request)
        await _body(request)  # any body must at least be JSON; nothing in it is used
        info = await request.app[HUB_KEY].calls.act(
            me.peer_id, request.match_info["call_id"], action
        )
        return web.json_response({"call": calls.info_to_json(info)})

    handler.__name__ = f"{action}_call"
    handler.__doc__ = f"``POST /calls/{{call_id}}/{action}``: as the token's peer."
    return handler


def _caller(request: web.Request) -> Member:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ProtocolError(
            ErrorCode.UNAUTHORIZED,
            "send 'Authorization: Bearer <session_token>' (the token from your welcome)",
        )
    member = request.app[HUB_KEY].rooms.by_session_token(token.strip())
    if member is None:
        raise ProtocolError(
            ErrorCode.UNAUTHORIZED, "unknown session token (or its peer has left the room)"
        )
    return member


async def _body(request: web.Request) -> dict[str, Any]:
    """The JSON object sent, ``{}`` for none; capped like a WebSocket frame."""
    limit = request.app[HUB_KEY].settings.max_message_bytes
    if request.content_length is not None and request.content_length > limit:
        raise ProtocolError(ErrorCode.TOO_LARGE, f"the body is over {limit} bytes")
    raw = await request.content.read(limit + 1)
    if len(raw) > limit:
        raise ProtocolError(ErrorCode.TOO_LARGE, f"the body is over {limit} bytes")
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise ProtocolError(ErrorCode.BAD_JSON, f"the body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "the body must be a JSON object")
    return body
