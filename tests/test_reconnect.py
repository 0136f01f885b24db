"""Losing the relay: backoff schedule, connection state, reconnect with resume, media untouched."""

from __future__ import annotations

import asyncio
import random
import socket
from collections.abc import Callable

import pytest

from peer import (
    Backoff,
    ConfigError,
    ConnectionState,
    LinkState,
    Participant,
    ParticipantConfig,
)
from signaling_server import ServerSettings, start_server


def test_backoff_doubles_from_100_ms_to_a_10_s_cap_with_full_jitter() -> None:
    backoff = Backoff()
    assert [backoff.ceiling(n) for n in range(1, 10)] == pytest.approx(
        [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 10.0, 10.0]
    )
    assert backoff.ceiling(10_000) == 10.0  # no overflow in a day-long outage
    rng = random.Random(7)
    for attempt in (1, 3, 8):
        delays = [backoff.delay(attempt, rng) for _ in range(2000)]
        ceiling = backoff.ceiling(attempt)
        assert all(0.0 <= d <= ceiling for d in delays)
        # Full jitter: spread over the whole range, not bunched at the ceiling.
        assert min(delays) < 0.05 * ceiling and max(delays) > 0.95 * ceiling
        assert sum(delays) / len(delays) == pytest.approx(ceiling / 2, rel=0.1)
    assert Backoff(jitter=False).delay(3) == pytest.approx(0.4)
    assert not Backoff().gives_up_after(10**6)  # unlimited by default
    assert Backoff(attempts=3).gives_up_after(3) and not Backoff(attempts=3).gives_up_after(2)
    for bad in (
        {"first_s": 0},
        {"factor": 0.5},
        {"cap_s": 0.01},
        {"attempts": 0},
        {"first_s": float("nan")},
    ):
        with pytest.raises(ConfigError):
            Backoff(**bad)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def _until(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


async def _watch(me: Participant, seen: list[ConnectionState]) -> None:
    async for state in me.connection_states():
        seen.append(state)


async def test_without_reconnect_the_participant_says_it_is_disconnected() -> None:
    port = _free_port()
    settings = ServerSettings(host="127.0.0.1", port=port)
    async with start_server(settings) as relay:
        me = Participant(ParticipantConfig(room="r", server_url=relay.ws_url, reconnect=None))
        await me.join()
    try:
        await _until(lambda: me.connection.state is LinkState.DISCONNECTED)
        assert me.connection.reason and "1001" in me.connection.reason
    finally:
        await me.aclose()
    assert me.connection.state is LinkState.CLOSED
