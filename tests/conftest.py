"""Shared fixtures: a real relay on loopback; a check that no test leaves asyncio tasks behind."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from signaling_server import RunningServer, ServerSettings, start_server


@pytest.fixture
async def relay() -> AsyncIterator[RunningServer]:
    async with start_server(ServerSettings(host="127.0.0.1", port=0)) as server:
        yield server


@pytest.fixture(autouse=True)
async def no_leaked_tasks() -> AsyncIterator[None]:
    """Every task a test's objects create must be finished once they are closed."""
    before = set(asyncio.all_tasks())
    yield
    current = asyncio.current_task()
    # Give cancelled tasks one turn of the loop to finish unwinding.
    for _ in range(5):
        leaked = {t for t in asyncio.all_tasks() - before if t is not current and not t.done()}
        if not leaked:
            return
        await asyncio.sleep(0.05)
    names = sorted(t.get_name() + " " + repr(t.get_coro()) for t in leaked)
    pytest.fail(f"{len(leaked)} asyncio task(s) left pending: {names}")
