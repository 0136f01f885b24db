"""Wire protocol v1: the message shapes shared by the relay and its clients (stdlib only).

One JSON object per WebSocket text frame, each with a ``"type"``. Messages are frozen dataclasses;
:func:`parse_message` validates a frame into one (raising :class:`ProtocolError` with an
:class:`ErrorCode`) and :func:`dump_message` turns one back into JSON. The same ``type`` can mean
different shapes by direction (a client's ``offer`` names its target, the relayed one names its
sender), so parsing takes the ``origin`` of the frame. ``docs/protocol.md`` is the prose version.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, ClassVar, Literal, TypeAlias, Union

PROTOCOL_VERSION = 1
#: Frames larger than this (in UTF-8 bytes) are refused with ``too_large``.
MAX_MESSAGE_BYTES = 256 * 1024
MAX_ROOM_LENGTH = 64
MAX_NAME_LENGTH = 64
#: A client ``id`` (string, or integer in decimal digits) longer than this is refused, so that
#: echoing it back as ``ref`` can never blow a reply past the size cap.
MAX_ID_LENGTH = 128

MessageId: TypeAlias = str | int
Origin = Literal["client", "server"]


class ErrorCode(StrEnum):
    """Machine-readable reason carried by every ``error`` message."""

    BAD_JSON = "bad_json"
    BAD_MESSAGE = "bad_message"
    UNKNOWN_TYPE = "unknown_type"
    TOO_LARGE = "too_large"
    NOT_JOINED = "not_joined"
    ALREADY_JOINED = "already_joined"
    UNKNOWN_PEER = "unknown_peer"
    NOT_IN_ROOM = "not_in_room"
    UNAUTHORIZED = "unauthorized"
    RATE_LIMITED = "rate_limited"
    CALL_NOT_FOUND = "call_not_found"
    INVALID_TRANSITION = "invalid_transition"
    INTERNAL = "internal"


class ProtocolError(Exception):
    """A frame that breaks the protocol; the relay answers it with an ``error`` message."""

    def __init__(self, code: ErrorCode, message: str, ref: MessageId | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.ref = ref


# --------------------------------------------------------------------------- shared records


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerInfo:
    peer_id: str
    name: str


@dataclass(frozen=True, slots=True, kw_only=True)
class IceServerInfo:
    """An RTCIceServer as the W3C spells it (``urls`` is always a list on the wire)."""

    urls: list[str]
    username: str | None = None
    credential: str | None = None


# --------------------------------------------------------------------------- client -> server


@dataclass(frozen=True, slots=True, kw_only=True)
class Join:
    type: ClassVar[str] = "join"
    room: str
    name: str | None = None
    resume_token: str | None = None
    token: str | None = None
    id: MessageId | None = None

    def __post_init__(self) -> None:
        _check_text("room", self.room, MAX_ROOM_LENGTH)
        if self.name is not None:
            _check_text("name", self.name, MAX_NAME_LENGTH)


@dataclass(frozen=True, slots=True, kw_only=True)
class Leave:
    type: ClassVar[str] = "leave"
    id: MessageId | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ListPeers:
    type: ClassVar[str] = "list_peers"
    id: MessageId | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Offer:
    type: ClassVar[str] = "offer"
    target_peer_id: str
    sdp: str
    call_id: str | None = None
    id: MessageId | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Answer:
    type: ClassVar[str] = "answer"
    target_peer_id: str
    sdp: str
    call_id: str | None = None
    id: MessageId | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class IceCandidate:
    """A trickled candidate; an empty ``candidate`` means end of candidates."""

    type: ClassVar[str] = "ice_candidate"
    target_peer_id: str
    candidate: str
    sdp_mid: str | None = None
    sdp_m_line_index: int | None = None
    id: MessageId | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class StartCall:
    type: ClassVar[str] = "start_call"
    targets: list[str] | None = None
    id: MessageId | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class AcceptCall:
    type: ClassVar[str] = "accept_call"
    call_id: str
    id: MessageId | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class DeclineCall:
    type: ClassVar[str] = "decline_call"
    call_id: str
    id: MessageId | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class LeaveCall:
    type: ClassVar[str] = "leave_call"
    call_id: str
    id: MessageId | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class EndCall:
    type: ClassVar[str] = "end_call"
    call_id: str
    id: MessageId | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Ping:
    type: ClassVar[str] = "ping"
    id: MessageId | None = None


ClientMessage: TypeAlias = (
    Join | Leave | ListPeers | Offer | Answer | IceCandidate
    | StartCall | AcceptCall | DeclineCall | LeaveCall | EndCall | Ping
)  # fmt: skip

# --------------------------------------------------------------------------- server -> client


@dataclass(frozen=True, slots=True, kw_only=True)
class Welcome:
    type: ClassVar[str] = "welcome"
    peer_id: str
    room: str
    peers: list[PeerInfo]
    ice_servers: list[IceServerInfo]
    resume_token: str
    #: Bearer token for the REST call API, acting as this peer while its socket is joined.
    session_token: str | None = None
    #: Only when the ``join`` carried a ``resume_token``: whether it gave the peer its id back
    #: (``false``: the token was not honoured and this is a new peer).
    resumed: bool | None = None
    protocol: int = PROTOCOL_VERSION
    ref: MessageId | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerJoined:
    type: ClassVar[str] = "peer_joined"
    peer_id: str
    name: str


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerLeft:
    type: ClassVar[str] = "peer_left"
    peer_id: str
    #: ``left`` (sent ``leave``), ``disconnected`` (the socket dropped; no resume grace) or
    #: ``timeout`` (the socket dropped and the peer did not resume within the grace).
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerList:
    type: ClassVar[str] = "peer_list"
    peers: list[PeerInfo]
    ref: MessageId | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class RelayedOffer:
    type: ClassVar[str] = "offer"
    from_peer_id: str
    sdp: str
    call_id: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class RelayedAnswer:
    type: ClassVar[str] = "answer"
    from_peer_id: str
    sdp: str
    call_id: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class RelayedIceCandidate:
    type: ClassVar[str] = "ice_candidate"
    from_peer_id: str
    candidate: str
    sdp_mid: str | None = None
    sdp_m_line_index: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Pong:
    type: ClassVar[str] = "pong"
    ref: MessageId | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Error:
    type: ClassVar[str] = "error"
    code: ErrorCode
    message: str
    ref: MessageId | None = None


# --------------------------------------------------------------------------- call lifecycle


class CallStatus(StrEnum):
    RINGING = "ringing"
    ACTIVE = "active"
    ENDED = "ended"


class CallEvent(StrEnum):
    """What changed, in a ``call_state`` message (one message per stored event)."""

    CALL_STARTED = "call_started"
    PARTICIPANT_JOINED = "participant_joined"
    PARTICIPANT_LEFT = "participant_left"
    CALL_DECLINED = "call_declined"
    CALL_ENDED = "call_ended"


class EndReason(StrEnum):
    CANCELLED = "cancelled"  # the initiator ended it while it was ringing
    ALL_DECLINED = "all_declined"  # every target declined
    NO_ANSWER = "no_answer"  # the ring timeout passed with nobody accepting
    LAST_LEFT = "last_left"  # the last participant left an active call
    ENDED = "ended"  # a participant sent end_call while it was active
    RELAY_RESTART = "relay_restart"  # restored after a restart, and nobody came back to it


@dataclass(frozen=True, slots=True, kw_only=True)
class CallInfo:
    """A call's state: the fold of its events. Times are Unix seconds."""

    call_id: str
    room: str
    status: CallStatus
    started_by: str
    #: Peers in the call now: the initiator and whoever accepted, minus whoever left. Once ended:
    #: everyone who took part (the initiator and every target that accepted), for history.
    participants: list[str]
    targets: list[str]
    declined_by: list[str]
    started_at: float
    answered_at: float | None = None
    ended_at: float | None = None
    reason: EndReason | None = None
    #: Seconds from the first accept to the end (0 if never answered); set once ended.
    duration_s: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class IncomingCall:
    """Sent to each target of a new call: their device rings."""

    type: ClassVar[str] = "incoming_call"
    call_id: str
    from_peer_id: str
    participants: list[str]
    targets: list[str]


@dataclass(frozen=True, slots=True, kw_only=True)
class CallState:
    """Sent to everyone involved in a call on every change; ``peer_id`` is who caused it."""

    type: ClassVar[str] = "call_state"
    event: CallEvent
    call: CallInfo
    peer_id: str | None = None
    ref: MessageId | None = None


ServerMessage: TypeAlias = (
    Welcome | PeerJoined | PeerLeft | PeerList | RelayedOffer | RelayedAnswer | RelayedIceCandidate
    | IncomingCall | CallState | Pong | Error
)  # fmt: skip

Message: TypeAlias = ClientMessage | ServerMessage

CLIENT_MESSAGES: Mapping[str, type[Any]] = {cls.type: cls for cls in typing.get_args(ClientMessage)}
SERVER_MESSAGES: Mapping[str, type[Any]] = {cls.type: cls for cls in typing.get_args(ServerMessage)}


# --------------------------------------------------------------------------- parse / dump


def parse_message(
    data: str | bytes, *, origin: Origin = "client", max_bytes: int = MAX_MESSAGE_BYTES
) -> Any:
    """Validate one frame into its message dataclass.

    Returns a ``ClientMessage`` when ``origin="client"`` (what the relay receives) and a
    ``ServerMessage`` when ``origin="server"`` (what a client receives); typed as ``Any`` so callers
    narrow with ``match``/``isinstance``. Raises :class:`ProtocolError`; when the frame was an
    object with an ``id``, the error carries it as ``ref``. ``max_bytes`` is the size cap (the
    relay passes its configured one).
    """
    size = len(data) if isinstance(data, bytes) else len(data.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise ProtocolError(
            ErrorCode.TOO_LARGE, f"message is {size} bytes; the limit is {max_bytes}"
        )
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(ErrorCode.BAD_JSON, f"not valid JSON: {exc}") from None
    except RecursionError:  # e.g. "[[[[...": deeper than the C decoder's recursion limit
        raise ProtocolError(ErrorCode.BAD_JSON, "not valid JSON: nested too deeply") from None
    if not isinstance(obj, dict):
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "a message must be a JSON object")
    ref = obj.get("id")
    if isinstance(ref, bool) or not isinstance(ref, str | int):
        ref = None
    elif len(str(ref)) > MAX_ID_LENGTH:
        raise ProtocolError(
            ErrorCode.BAD_MESSAGE, f"'id' is too long; the limit is {MAX_ID_LENGTH} characters"
        )
    kind = obj.get("type")
    if not isinstance(kind, str):
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "missing or non-string 'type'", ref)
    registry = CLIENT_MESSAGES if origin == "client" else SERVER_MESSAGES
    cls = registry.get(kind)
    if cls is None:
        raise ProtocolError(ErrorCode.UNKNOWN_TYPE, f"unknown message type {kind[:64]!r}", ref)
    try:
        return _build(cls, obj, path=kind)
    except _FieldError as exc:
        raise ProtocolError(ErrorCode.BAD_MESSAGE, str(exc), ref) from None


def dump_message(message: Message) -> str:
    """Serialise a message; ``None`` fields are left out (they are optional on the wire)."""
    body = _to_json(message)
    assert isinstance(body, dict)
    return json.dumps({"type": message.type, **body}, separators=(",", ":"))


# --------------------------------------------------------------------------- internals


class _FieldError(ValueError):
    pass


def _check_text(name: str, value: str, limit: int) -> None:
    if not value or not value.strip():
        raise _FieldError(f"'{name}' must not be empty")
    if len(value) > limit:
        raise _FieldError(f"'{name}' is {len(value)} characters; the limit is {limit}")
    if any(ord(ch) < 32 for ch in value):
        raise _FieldError(f"'{name}' must not contain control characters")


def _build(cls: type[Any], obj: Mapping[str, Any], *, path: str) -> Any:
    hints = _hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name not in obj or obj[f.name] is None:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise _FieldError(f"{path}: missing required field '{f.name}'")
            continue
        kwargs[f.name] = _coerce(hints[f.name], obj[f.name], f"{path}.{f.name}")
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(options) == 1:  # plain Optional: keep the precise error ("targets[1]: ...")
            return _coerce(options[0], value, path)
        for option in options:
            try:
                return _coerce(option, value, path)
            except _FieldError:
                continue
        names = " or ".join(getattr(o, "__name__", str(o)) for o in options)
        raise _FieldError(f"{path}: expected {names}, got {type(value).__name__}")
    if origin is list:
        if not isinstance(value, list):
            raise _FieldError(f"{path}: expected a list, got {type(value).__name__}")
        (item,) = typing.get_args(tp)
        return [_coerce(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise _FieldError(f"{path}: expected an object, got {type(value).__name__}")
        return _build(typing.cast(type[Any], tp), value, path=path)
    if isinstance(tp, type) and issubclass(tp, StrEnum):
        try:
            return tp(value)
        except ValueError:
            raise _FieldError(f"{path}: unknown value {value!r}") from None
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _FieldError(f"{path}: expected an integer, got {type(value).__name__}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _FieldError(f"{path}: expected a number, got {type(value).__name__}")
        return float(value)
    if tp in (str, bool):
        if not isinstance(value, tp):
            raise _FieldError(f"{path}: expected {tp.__name__}, got {type(value).__name__}")
        return value
    if tp is Any:
        return value
    raise TypeError(f"protocol field type {tp!r} is not supported")  # a bug in this module


_HINTS: dict[type[Any], dict[str, Any]] = {}


def _hints(cls: type[Any]) -> dict[str, Any]:
    hints = _HINTS.get(cls)
    if hints is None:
        hints = typing.get_type_hints(cls)
        _HINTS[cls] = hints
    return hints


def _to_json(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out = {}
        for f in dataclasses.fields(value):
            v = getattr(value, f.name)
            if v is not None:
                out[f.name] = _to_json(v)
        return out
    if isinstance(value, list):
        return [_to_json(v) for v in value]
    return value


__all__ = [
    "CLIENT_MESSAGES",
    "MAX_ID_LENGTH",
    "MAX_MESSAGE_BYTES",
    "MAX_NAME_LENGTH",
    "MAX_ROOM_LENGTH",
    "PROTOCOL_VERSION",
    "SERVER_MESSAGES",
    "AcceptCall",
    "Answer",
    "CallEvent",
    "CallInfo",
    "CallState",
    "CallStatus",
    "ClientMessage",
    "DeclineCall",
    "EndCall",
    "EndReason",
    "Error",
    "ErrorCode",
    "IceCandidate",
    "IceServerInfo",
    "IncomingCall",
    "Join",
    "Leave",
    "LeaveCall",
    "ListPeers",
    "Message",
    "MessageId",
    "Offer",
    "PeerInfo",
    "PeerJoined",
    "PeerLeft",
    "PeerList",
    "Ping",
    "Pong",
    "ProtocolError",
    "RelayedAnswer",
    "RelayedIceCandidate",
    "RelayedOffer",
    "ServerMessage",
    "StartCall",
    "Welcome",
    "dump_message",
    "parse_message",
]
