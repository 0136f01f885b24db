"""Event stores: the same contract for memory and SQLite; SQLite on a real file, off the loop."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from signaling_server import calls
from signaling_server.calls import Event
from signaling_server.protocol import CallEvent, CallStatus, EndReason
from signaling_server.store import (
    BadCursor,
    EventStore,
    MemoryStore,
    SQLiteStore,
    StoreError,
    decode_cursor,
    encode_cursor,
    open_store,
)

T0 = 1_700_000_000.0


def new_call(call_id: str, room: str = "r", at: float = T0) -> list[Event]:
    return calls.start(call_id=call_id, room=room, initiator="p_a", targets=["p_b"], now=at)


@pytest.fixture(params=["memory", "sqlite"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[EventStore]:
    s: EventStore = MemoryStore() if request.param == "memory" else SQLiteStore(tmp_path / "c.db")
    await s.open()
    yield s
    await s.aclose()


async def test_append_and_read_back(store: EventStore) -> None:
    events = new_call("c_1")
    await store.append(events)
    joined = calls.accept(events, "p_b", T0 + 2)
    await store.append(joined)
    ended = calls.end([*events, *joined], "p_a", T0 + 10)
    await store.append(ended)
    assert await store.events("c_1") == [*events, *joined, *ended]
    assert await store.events("c_nope") == []
    info = calls.fold(await store.events("c_1"))
    assert (info.reason, info.duration_s) == (EndReason.ENDED, 8.0)


async def test_a_batch_is_stored_whole_and_in_order(store: EventStore) -> None:
    events = new_call("c_1")
    await store.append(events)
    both = calls.decline(events, "p_b", T0 + 1)
    assert len(both) == 2  # declined + ended all_declined, one transaction
    await store.append(both)
    assert [e.kind for e in await store.events("c_1")] == [
        CallEvent.CALL_STARTED,
        CallEvent.CALL_DECLINED,
        CallEvent.CALL_ENDED,
    ]
    assert await store.unfinished() == []


async def test_out_of_sequence_appends_are_refused_and_change_nothing(store: EventStore) -> None:
    events = new_call("c_1")
    await store.append(events)
    joined = calls.accept(events, "p_b", T0 + 2)
    with pytest.raises(ValueError, match="sequence"):
        await store.append([joined[0], joined[0]])  # a gap-free batch only
    with pytest.raises((ValueError, sqlite3.IntegrityError)):
        await store.append(events)  # seq 1 again
    later = calls.end([*events, *joined], "p_a", T0 + 3)
    with pytest.raises(ValueError, match="sequence"):
        await store.append(later)  # seq 3 without 2
    with pytest.raises(ValueError, match="single call"):
        await store.append([])
    assert await store.events("c_1") == events


async def test_history_is_newest_first_and_paginated(store: EventStore) -> None:
    for i in range(7):
        await store.append(new_call(f"c_{i}", at=T0 + i))
    await store.append(new_call("c_other", room="elsewhere"))
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        page = await store.calls("r", limit=3, cursor=cursor)
        pages += 1
        seen += [c.call_id for c in page.calls]
        assert all(c.room == "r" and c.status is CallStatus.RINGING for c in page.calls)
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == [f"c_{i}" for i in reversed(range(7))]
    assert pages == 3
    exact = await store.calls("r", limit=7)
    assert len(exact.calls) == 7
    assert exact.next_cursor is None
    empty = await store.calls("nobody", limit=5)
    assert (empty.calls, empty.next_cursor) == ([], None)


async def test_bad_cursor(store: EventStore) -> None:
    for cursor in ("garbage!", "", "djE6", encode_cursor(1) + "x", "bm90OjE"):
        with pytest.raises(BadCursor):
            await store.calls("r", limit=3, cursor=cursor)


def test_cursor_round_trip() -> None:
    assert decode_cursor(encode_cursor(12345)) == 12345
    assert "12345" not in encode_cursor(12345)  # opaque, not a number to tamper with


async def test_unfinished_calls_and_the_last_sign_of_life(store: EventStore) -> None:
    ringing = new_call("c_ring", at=T0)
    active = new_call("c_active", at=T0 + 1)
    joined = calls.accept(active, "p_b", T0 + 4)
    done = new_call("c_done", at=T0 + 2)
    for batch in (ringing, active, joined, done, calls.end(done, "p_a", T0 + 3)):
        await store.append(batch)
    unfinished = await store.unfinished()
    assert [evs[0].call_id for evs in unfinished] == ["c_ring", "c_active"]
    assert unfinished[1] == [*active, *joined]
    assert await store.last_alive() is None
    await store.mark_alive(T0 + 5)
    await store.mark_alive(T0 + 10)
    assert await store.last_alive() == T0 + 10
    await store.append(calls.interrupted(unfinished[1], T0 + 10))
    assert [evs[0].call_id for evs in await store.unfinished()] == ["c_ring"]
    info = calls.fold(await store.events("c_active"))
    assert (info.status, info.reason, info.duration_s) == (
        CallStatus.ENDED,
        EndReason.RELAY_RESTART,
        6.0,
    )


async def test_sqlite_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "calls.db"
    events = new_call("c_1")
    async with SQLiteStore(path) as first:
        await first.append(events)
        await first.mark_alive(T0 + 7)
    async with SQLiteStore(path) as second:
        assert await second.last_alive() == T0 + 7
        assert await second.events("c_1") == events
        assert [evs[0].call_id for evs in await second.unfinished()] == ["c_1"]
        page = await second.calls("r", limit=10)
        assert [c.call_id for c in page.calls] == ["c_1"]
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_sqlite_runs_off_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: list[str] = []
    real = SQLiteStore._append_sync

    def spy(self: SQLiteStore, events: list[Event]) -> None:
        threads.append(threading.current_thread().name)
        real(self, events)

    monkeypatch.setattr(SQLiteStore, "_append_sync", spy)
    async with SQLiteStore(tmp_path / "c.db") as store:
        await store.append(new_call("c_1"))
        await store.append(new_call("c_2"))
    assert len(threads) == 2
    assert all(t.startswith("callbot-sqlite") for t in threads)
    assert threading.main_thread().name not in threads


async def test_sqlite_close_is_idempotent_and_final(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "c.db")
    await store.aclose()  # never opened
    with pytest.raises(RuntimeError):
        await store.open()
    other = SQLiteStore(tmp_path / "d.db")
    await other.open()
    await other.aclose()
    await other.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        await other.events("c_1")


async def test_sqlite_refuses_an_unknown_schema(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version = 99")
    store = SQLiteStore(path)
    with pytest.raises(StoreError, match=f"cannot open call database {path}: .*schema 99"):
        await store.open()
    await store.aclose()


@pytest.mark.parametrize("what", ["missing directory", "a directory", "not a database"])
async def test_sqlite_refuses_a_bad_path_with_one_clear_error(tmp_path: Path, what: str) -> None:
    path = {
        "missing directory": tmp_path / "nope" / "calls.db",
        "a directory": tmp_path,
        "not a database": tmp_path / "text.db",
    }[what]
    (tmp_path / "text.db").write_text("hello, this is not SQLite\n" * 100)
    store = SQLiteStore(path)
    with pytest.raises(StoreError, match=f"^cannot open call database {path}: ") as info:
        await store.open()
    assert info.value.__cause__ is None and "\n" not in str(info.value)
    await store.aclose()


async def test_open_store_picks_by_path(tmp_path: Path) -> None:
    assert isinstance(open_store(None), MemoryStore)
    sqlite_store = open_store(str(tmp_path / "x.db"))
    assert isinstance(sqlite_store, SQLiteStore)
    await sqlite_store.aclose()
