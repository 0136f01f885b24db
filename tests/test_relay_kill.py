"""The relay process is killed (SIGKILL) mid-call and started again: nobody's media notices."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from aiortc.mediastreams import MediaStreamError

from media import PatternVideoTrack, read_stamp
from peer import Backoff, ConnectionState, LinkState, Participant, ParticipantConfig, RemoteTrack

from .test_cli import CALLBOT, ROOT, free_port

pytestmark = pytest.mark.slow


@contextlib.asynccontextmanager
async def relay_process(port: int, db: Path) -> AsyncIterator[asyncio.subprocess.Process]:
    proc = await asyncio.create_subprocess_exec(
        *CALLBOT, "serve", "--port", str(port), "--db", str(db), cwd=ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(30):
            line = await proc.stdout.readline()
        assert line.startswith(b"callbot relay listening"), line
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


async def _until(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


async def _first_track(me: Participant) -> RemoteTrack:
    async with asyncio.timeout(30):
        async for track in me.tracks():
            return track
    raise AssertionError("no track")


async def _count(track: RemoteTrack, numbers: list[int]) -> None:
    with contextlib.suppress(MediaStreamError):
        while True:
            frame = await track.recv()
            stamp = await asyncio.to_thread(read_stamp, frame)
            if stamp is not None:
                numbers.append(stamp.frame_number)


async def _watch(me: Participant, seen: list[ConnectionState]) -> None:
    async for state in me.connection_states():
        seen.append(state)


async def test_killing_the_relay_mid_call_cuts_no_media_and_peers_resume(tmp_path: Path) -> None:
    port, db = free_port(), tmp_path / "relay.db"
    url = f"ws://127.0.0.1:{port}/ws"
    backoff = Backoff(cap_s=2.0)  # 100 ms, x2, full jitter; capped low to bound the test
    videos = [PatternVideoTrack(width=160, height=120, fps=30, seed=i) for i in range(2)]
    states: list[ConnectionState] = []
    tasks: list[asyncio.Task[None]] = []
    async with contextlib.AsyncExitStack() as stack:
        first = await stack.enter_async_context(relay_process(port, db))
        a, b = [
            await stack.enter_async_context(
                Participant(
                    ParticipantConfig(room="r", server_url=url, name=n, reconnect=backoff),
                    video=v,
                )
            )
            for n, v in zip("ab", videos, strict=True)
        ]
        ids = (a.peer_id, b.peer_id)
        seen: dict[str, list[int]] = {"a": [], "b": []}
        for me, name in ((a, "a"), (b, "b")):
            tasks.append(asyncio.create_task(_count(await _first_track(me), seen[name])))
        tasks.append(asyncio.create_task(_watch(a, states)))
        await _until(lambda: all(len(n) >= 5 for n in seen.values()))

        first.kill()  # no goodbye: sockets just die
        await first.wait()
        await _until(lambda: not a.connection.connected and not b.connection.connected)
        during = {k: len(v) for k, v in seen.items()}
        await _until(lambda: all(len(seen[k]) >= during[k] + 20 for k in seen))

        await stack.enter_async_context(relay_process(port, db))
        back_at = asyncio.get_running_loop().time()
        await _until(lambda: a.connection.connected and b.connection.connected, 15)
        assert asyncio.get_running_loop().time() - back_at <= 4.0
        assert (a.peer_id, b.peer_id) == ids
        assert list(a.peers) == [ids[1]] and list(b.peers) == [ids[0]]
        async with Participant(ParticipantConfig(room="r", server_url=url, name="c")) as c:
            assert sorted(c.peers) == sorted(ids)  # no duplicates in the room
        after = {k: len(v) for k, v in seen.items()}
        await _until(lambda: all(len(seen[k]) >= after[k] + 10 for k in seen))
        for numbers in seen.values():
            assert numbers == sorted(numbers)  # one link each way, never restarted
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for video in videos:
        video.stop()
    # Attempts follow the schedule: numbered 1, 2, 3...; each one started no later than the
    # previous attempt's jitter ceiling (plus slack for a refused connect on a busy machine).
    tries = [s for s in states if s.state is LinkState.RECONNECTING]
    assert [s.attempt for s in tries] == list(range(1, len(tries) + 1)), tries
    assert len(tries) >= 2
    for prev, nxt in itertools.pairwise(tries):
        gap = nxt.since - prev.since
        assert 0 <= gap <= backoff.ceiling(prev.attempt) + 1.0, (prev, nxt)


async def test_callbot_join_says_when_the_relay_goes_and_comes_back(tmp_path: Path) -> None:
    port, db = free_port(), tmp_path / "relay.db"
    url = f"ws://127.0.0.1:{port}/ws"
    async with contextlib.AsyncExitStack() as stack:
        first = await stack.enter_async_context(relay_process(port, db))
        bot = await asyncio.create_subprocess_exec(
            *CALLBOT, "join", "r", "--server", url, "--name", "bot", "--source", "none",
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        assert bot.stdout is not None
        lines: list[str] = []

        async def read_line() -> str:
            assert bot.stdout is not None
            async with asyncio.timeout(30):
                line = (await bot.stdout.readline()).decode().strip()
            lines.append(line)
            return line

        try:
            assert (await read_line()).startswith("joined room 'r' as ")
            peer_id = lines[0].split(" as ")[1].split()[0]
            first.kill()
            await first.wait()
            assert (await read_line()).startswith("relay: disconnected")
            assert await read_line() == "relay: reconnecting (attempt 1)"
            await stack.enter_async_context(relay_process(port, db))
            while (line := await read_line()) != "relay: connected":
                assert line.startswith("relay: reconnecting (attempt "), lines
            async with Participant(ParticipantConfig(room="r", server_url=url)) as probe:
                assert list(probe.peers) == [peer_id]  # the bot came back as itself
        finally:
            bot.terminate()
            await bot.wait()
    assert bot.returncode == 0
