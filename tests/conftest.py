"""Shared fixtures: a real relay on loopback; a check that no test leaves asyncio tasks behind;
a network namespace with real Chromium in it and a relay it can reach (tests/chromium.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from signaling_server import RunningServer, ServerSettings, start_server

from .chromium import Browser, BrowserNet, browser_namespace


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


@pytest.fixture
async def browser_net() -> AsyncIterator[BrowserNet]:
    """A fresh namespace joined by a veth pair; fails (never skips) without ``ip netns``."""
    async with browser_namespace() as net:
        yield net


@pytest.fixture
async def net_relay(browser_net: BrowserNet) -> AsyncIterator[RunningServer]:
    """A relay on the root side of ``browser_net``: the only host Chromium can reach."""
    settings = ServerSettings(host=browser_net.host_addr, port=0)
    async with start_server(settings) as server:
        yield server


@pytest.fixture
async def browser(
    browser_net: BrowserNet, net_relay: RunningServer, tmp_path: Path
) -> AsyncIterator[Browser]:
    """Headless Chromium inside ``browser_net``, allowed getUserMedia on ``net_relay``'s origin."""
    async with await Browser.launch(
        netns=browser_net.netns,
        user_data_dir=tmp_path / "chromium-profile",
        secure_origin=net_relay.http_url,
    ) as chromium:
        yield chromium
