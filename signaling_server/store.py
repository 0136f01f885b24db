"""Where call events are kept: the :class:`EventStore` interface, in memory or in SQLite.

The store is the relay's only durable state. It knows nothing of the state machine beyond
``calls.fold`` (to hand out ``CallInfo``) and "a ``call_ended`` event finishes a call"; the call
service decides what to append. Keep it behind the interface: a Redis Streams store for multi-node
relays is meant to slot in later.

Restarts: the store hands the relay its unfinished calls (:meth:`EventStore.unfinished`) and the
last moment a previous run was known to be up with calls live (:meth:`EventStore.last_alive`,
stamped every few seconds while calls are live and once more on a graceful stop). The call
service restores those calls and ends the ones nobody comes back to, dated at that moment.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

from . import calls
from .calls import Event
from .protocol import CallEvent, CallInfo, EndReason

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True, kw_only=True)
class CallPage:
    """One page of a room's history, newest call first; ``next_cursor`` is ``None`` on the last."""

    calls: list[CallInfo]
    next_cursor: str | None


class BadCursor(ValueError):
    """A pagination cursor this store did not hand out."""


class StoreError(RuntimeError):
    """The store cannot be opened (a bad path, not a database, an unknown schema)."""


class EventStore(Protocol):
    """An append-only log of call events, grouped by call and indexed by room."""

    async def open(self) -> None:
        """Get ready (create files, tables, threads); called once before anything else."""

    async def append(self, events: Sequence[Event]) -> None:
        """Store ``events`` (of one call, following its stored ones) durably, all or none."""

    async def events(self, call_id: str) -> list[Event]:
        """A call's events in order; empty for an unknown call."""

    async def calls(self, room: str, *, limit: int, cursor: str | None = None) -> CallPage:
        """A room's calls, newest first; pass the previous page's ``next_cursor`` to go on.

        Raises :class:`BadCursor` for a cursor it did not hand out.
        """

    async def unfinished(self) -> list[list[Event]]:
        """The events of every call without a ``call_ended`` event, oldest call first."""

    async def mark_alive(self, at: float) -> None:
        """Remember that the relay was up (with live calls) at ``at``, Unix seconds."""

    async def last_alive(self) -> float | None:
        """The latest :meth:`mark_alive` time, from this run or an earlier one; ``None``: never."""

    async def aclose(self) -> None:
        """Release everything; idempotent."""


def open_store(db_path: str | None) -> EventStore:
    """The store ``ServerSettings.db_path`` asks for (not opened yet)."""
    return MemoryStore() if db_path is None else SQLiteStore(db_path)


def encode_cursor(position: int) -> str:
    """Opaque to clients, so that stores may change what a position means."""
    return base64.urlsafe_b64encode(f"v1:{position}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        version, _, number = raw.partition(":")
        if version != "v1" or not number.isdigit():
            raise ValueError(raw)
        return int(number)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise BadCursor(f"not a cursor this relay handed out: {cursor[:64]!r}") from None


def _check_batch(events: Sequence[Event]) -> None:
    if not events or len({e.call_id for e in events}) != 1:
        raise ValueError("append takes one or more events of a single call")
    if [e.seq for e in events] != list(range(events[0].seq, events[0].seq + len(events))):
        raise ValueError(f"events of {events[0].call_id} out of sequence")


# --------------------------------------------------------------------------- memory


class MemoryStore:
    """Keeps everything in dicts: the default when no database is configured (and for tests)."""

    def __init__(self) -> None:
        self._events: dict[str, list[Event]] = {}
        self._order: dict[str, list[str]] = {}  # room -> call ids, oldest first
        self._unfinished: dict[str, None] = {}  # an ordered set
        self._alive_at: float | None = None

    async def __aenter__(self) -> MemoryStore:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def open(self) -> None:
        pass

    async def append(self, events: Sequence[Event]) -> None:
        _check_batch(events)
        call_id = events[0].call_id
        stored = self._events.get(call_id, [])
        if [e.seq for e in events] != list(range(len(stored) + 1, len(stored) + len(events) + 1)):
            raise ValueError(f"events of {call_id} out of sequence")
        if not stored:
            self._events[call_id] = stored
            self._order.setdefault(events[0].room, []).append(call_id)
            self._unfinished[call_id] = None
        stored.extend(events)
        if any(e.kind is CallEvent.CALL_ENDED for e in events):
            self._unfinished.pop(call_id, None)

    async def events(self, call_id: str) -> list[Event]:
        return list(self._events.get(call_id, ()))

    async def calls(self, room: str, *, limit: int, cursor: str | None = None) -> CallPage:
        order = self._order.get(room, [])
        end = len(order) if cursor is None else min(decode_cursor(cursor), len(order))
        start = max(0, end - limit)
        page = [calls.fold(self._events[c]) for c in reversed(order[start:end])]
        return CallPage(calls=page, next_cursor=encode_cursor(start) if start > 0 else None)

    async def unfinished(self) -> list[list[Event]]:
        return [list(self._events[c]) for c in self._unfinished]

    async def mark_alive(self, at: float) -> None:
        self._alive_at = at

    async def last_alive(self) -> float | None:
        return self._alive_at

    async def aclose(self) -> None:
        pass


# --------------------------------------------------------------------------- SQLite

_SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS calls (
    pos INTEGER PRIMARY KEY AUTOINCREMENT,
    call_id TEXT NOT NULL UNIQUE,
    room TEXT NOT NULL,
    ended INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS calls_by_room ON calls (room, pos);
CREATE INDEX IF NOT EXISTS calls_unfinished ON calls (pos) WHERE ended = 0;
CREATE TABLE IF NOT EXISTS events (
    call_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    kind TEXT NOT NULL,
    at REAL NOT NULL,
    peer_id TEXT,
    targets TEXT,
    reason TEXT,
    PRIMARY KEY (call_id, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS relay_alive (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    at REAL NOT NULL
);
"""


class SQLiteStore:
    """Events in a SQLite file, through the stdlib driver on one owned worker thread.

    The connection lives on that thread (sqlite3 objects must stay on the thread that made them)
    and every call runs there in turn, so the event loop never blocks on the disk. WAL journal,
    ``synchronous=FULL``: each :meth:`append` is one transaction, durable once it returns. The
    ``calls`` table is an index for listing (room, order, finished or not); ``events`` is the truth.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._executor: ThreadPoolExecutor | None = None
        self._db: sqlite3.Connection | None = None
        self._closed = False

    async def __aenter__(self) -> SQLiteStore:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def open(self) -> None:
        if self._executor is not None or self._closed:
            raise RuntimeError("a SQLiteStore is opened once")
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="callbot-sqlite")
        try:
            await self._run(self._open_sync)
        except BaseException as exc:
            await self.aclose()
            if isinstance(exc, sqlite3.Error):  # missing directory, a directory, not a database
                raise StoreError(f"cannot open call database {self.path}: {exc}") from None
            raise

    async def append(self, events: Sequence[Event]) -> None:
        _check_batch(events)
        await self._run(lambda: self._append_sync(events))

    async def events(self, call_id: str) -> list[Event]:
        return await self._run(lambda: self._events_sync(call_id))

    async def calls(self, room: str, *, limit: int, cursor: str | None = None) -> CallPage:
        before = None if cursor is None else decode_cursor(cursor)
        return await self._run(lambda: self._calls_sync(room, limit, before))

    async def unfinished(self) -> list[list[Event]]:
        return await self._run(self._unfinished_sync)

    async def mark_alive(self, at: float) -> None:
        await self._run(lambda: self._mark_alive_sync(at))

    async def last_alive(self) -> float | None:
        return await self._run(self._last_alive_sync)

    async def aclose(self) -> None:
        self._closed = True
        executor, self._executor = self._executor, None
        if executor is None:
            return
        try:
            await asyncio.get_running_loop().run_in_executor(executor, self._close_sync)
        finally:
            # The worker is idle now (its queue is empty), so this join is immediate.
            executor.shutdown(wait=True)

    async def _run(self, fn: Callable[[], _T]) -> _T:
        if self._executor is None:
            raise RuntimeError("the store is not open" if not self._closed else "store closed")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    # ------------------------------------------------------------------ on the worker thread

    def _open_sync(self) -> None:
        db = sqlite3.connect(self.path, isolation_level=None)  # explicit transactions below
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA busy_timeout=5000")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, _SCHEMA_VERSION):
                raise StoreError(
                    f"cannot open call database {self.path}: call store schema {version}; "
                    f"this relay knows {_SCHEMA_VERSION}"
                )
            db.executescript(f"BEGIN; {_SCHEMA} PRAGMA user_version={_SCHEMA_VERSION}; COMMIT;")
        except BaseException:
            db.close()
            raise
        self._db = db

    def _close_sync(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            db.close()

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("the store is not open")
        return self._db

    def _append_sync(self, events: Sequence[Event]) -> None:
        db = self._conn()
        first = events[0]
        db.execute("BEGIN IMMEDIATE")
        try:
            if first.seq == 1:
                db.execute(
                    "INSERT INTO calls (call_id, room) VALUES (?, ?)", (first.call_id, first.room)
                )
            else:
                (last,) = db.execute(
                    "SELECT MAX(seq) FROM events WHERE call_id = ?", (first.call_id,)
                ).fetchone()
                if last != first.seq - 1:
                    raise ValueError(f"events of {first.call_id} out of sequence")
            db.executemany(
                "INSERT INTO events (call_id, seq, kind, at, peer_id, targets, reason) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        e.call_id,
                        e.seq,
                        str(e.kind),
                        e.at,
                        e.peer_id,
                        json.dumps(list(e.targets)) if e.kind is CallEvent.CALL_STARTED else None,
                        None if e.reason is None else str(e.reason),
                    )
                    for e in events
                ],
            )
            if any(e.kind is CallEvent.CALL_ENDED for e in events):
                db.execute("UPDATE calls SET ended = 1 WHERE call_id = ?", (first.call_id,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _events_sync(self, call_id: str) -> list[Event]:
        rows = self._conn().execute(
            "SELECT c.room, e.call_id, e.seq, e.kind, e.at, e.peer_id, e.targets, e.reason "
            "FROM events e JOIN calls c ON c.call_id = e.call_id "
            "WHERE e.call_id = ? ORDER BY e.seq",
            (call_id,),
        )
        return [_event(row) for row in rows]

    def _calls_sync(self, room: str, limit: int, before: int | None) -> CallPage:
        db = self._conn()
        rows = db.execute(
            "SELECT pos, call_id FROM calls WHERE room = ? AND pos < ? ORDER BY pos DESC LIMIT ?",
            (room, 2**63 - 1 if before is None else before, limit + 1),
        ).fetchall()
        more = len(rows) > limit
        rows = rows[:limit]
        page = [calls.fold(self._events_sync(call_id)) for _pos, call_id in rows]
        return CallPage(calls=page, next_cursor=encode_cursor(rows[-1][0]) if more else None)

    def _mark_alive_sync(self, at: float) -> None:
        self._conn().execute("INSERT OR REPLACE INTO relay_alive (id, at) VALUES (1, ?)", (at,))

    def _last_alive_sync(self) -> float | None:
        row = self._conn().execute("SELECT at FROM relay_alive WHERE id = 1").fetchone()
        return None if row is None else float(row[0])

    def _unfinished_sync(self) -> list[list[Event]]:
        ids = self._conn().execute("SELECT call_id FROM calls WHERE ended = 0 ORDER BY pos")
        return [self._events_sync(call_id) for (call_id,) in ids.fetchall()]


def _event(row: tuple[str, str, int, str, float, str | None, str | None, str | None]) -> Event:
    room, call_id, seq, kind, at, peer_id, targets, reason = row
    return Event(
        call_id=call_id,
        room=room,
        seq=seq,
        kind=CallEvent(kind),
        at=at,
        peer_id=peer_id,
        targets=tuple(json.loads(targets)) if targets else (),
        reason=None if reason is None else EndReason(reason),
    )
