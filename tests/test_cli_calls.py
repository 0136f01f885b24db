"""``callbot`` call bots and the relay under them: restarts, bad paths and contradicting flags."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import av
import pytest

import cli
from media import fit, grid, read_stamp
from peer import Backoff, ConnectError, Mode, Participant, ParticipantConfig
from signaling_server import ServerSettings, start_server
from signaling_server.protocol import CallStatus

from .test_cli import CALLBOT, ROOT, free_port, run

pytestmark = pytest.mark.slow


class Proc:
    """A ``callbot`` process whose stdout lines are collected as they come."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def start(cls, *args: str) -> Proc:
        proc = await asyncio.create_subprocess_exec(
            *CALLBOT, *args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        return cls(proc)

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for line in self.proc.stdout:
            self.lines.append(line.decode().rstrip("\n"))

    async def line(self, pattern: str, *, count: int = 1, timeout: float = 60) -> str:
        """The ``count``-th stdout line matching ``pattern`` (a regex), once it is printed."""
        async with asyncio.timeout(timeout):
            while True:
                found = [line for line in self.lines if re.search(pattern, line)]
                if len(found) >= count:
                    return found[count - 1]
                if self._reader.done():
                    raise AssertionError(f"exited without {pattern!r}: {self.lines}")
                await asyncio.sleep(0.1)

    async def finish(self, *, timeout: float = 60) -> tuple[int, str, str]:
        """Wait for the exit; the code, the whole stdout and stderr."""
        assert self.proc.stderr is not None
        async with asyncio.timeout(timeout):
            err = await self.proc.stderr.read()
            await self._reader
            code = await self.proc.wait()
        return code, "\n".join(self.lines), err.decode()

    async def stop(self) -> tuple[int, str, str]:
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGTERM)
        return await self.finish()

    async def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        await self.proc.wait()
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)


class Relay:
    """``callbot serve`` on a fixed port, which can be stopped (SIGTERM) and started again."""

    def __init__(self, *flags: str) -> None:
        self.port = free_port()
        self.flags = flags
        self.url = f"ws://127.0.0.1:{self.port}/ws"
        self.proc: Proc | None = None

    async def start(self) -> None:
        self.proc = await Proc.start("serve", "--port", str(self.port), *self.flags)
        await self.proc.line("callbot relay listening on")

    async def stop(self) -> None:
        assert self.proc is not None
        code, _, err = await self.proc.stop()
        assert code == 0, err
        self.proc = None


@contextlib.asynccontextmanager
async def processes() -> AsyncIterator[list[Proc]]:
    """Whatever a test starts is killed if it fails half-way (none are left behind)."""
    started: list[Proc] = []
    try:
        yield started
    finally:
        for proc in started:
            if proc.proc.returncode is None:
                await proc.kill()


def desk_stamps(path: Path) -> list[tuple[int, float]]:
    """(frame number, capture time in s) of the one tile of a 640x480 recording."""
    out = []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            rect = fit(640, 480, grid(1, frame.width, frame.height)[0])
            stamp = read_stamp(frame, (rect.x, rect.y, rect.w, rect.h))
            if stamp is not None:
                out.append((stamp.frame_number, stamp.capture_time_ms / 1000))
    return out


@pytest.mark.timeout(240)
async def test_call_bots_leave_a_call_a_restarted_relay_forgot_and_answer_again() -> None:
    """No --db: the restarted relay knows nothing of the call. The caller must not wait for ever
    and the answering bot must not stay deaf."""
    relay = Relay()
    async with processes() as started:
        await relay.start()
        assert relay.proc is not None
        started.append(relay.proc)
        desk = await Proc.start("join", "office", "--server", relay.url, "--name", "desk",
                                "--answer", "auto", "--source", "none")  # fmt: skip
        started.append(desk)
        await desk.line("joined room")
        # No --duration: the caller leaves when its call is over.
        boss = await Proc.start("join", "office", "--server", relay.url, "--name", "boss",
                                "--call", "desk")  # fmt: skip
        started.append(boss)
        first = (await boss.line(r"calling .*: call c_")).split()[-1]
        await desk.line(f"incoming call {first}")
        await relay.stop()
        await relay.start()
        assert relay.proc is not None
        started.append(relay.proc)
        code, out, err = await boss.finish(timeout=90)
        assert code == 0, err
        assert re.search(rf"call {first} ended: relay_restart after [\d.]+ s", out), out
        # The desk ended its side too and answers the next call.
        await desk.line(rf"call {first} ended: relay_restart")
        code, out, err = await run(
            "join", "office", "--server", relay.url, "--name", "boss2", "--call", "desk",
            "--source", "none", "--duration", "4",
        )  # fmt: skip
        assert code == 0, err
        second = re.search(r"calling .*: call (c_\w+)", out)
        assert second, out
        await desk.line(f"incoming call {second.group(1)}")
        await desk.line(rf"call {second.group(1)} ended: last_left")  # boss2 left; so did desk
        code, out, err = await desk.stop()
        assert code == 0, err


@pytest.mark.timeout(240)
async def test_a_call_and_its_media_go_on_through_a_relay_restart_with_db(tmp_path: Path) -> None:
    relay = Relay("--db", str(tmp_path / "calls.db"))
    recording = tmp_path / "boss.mkv"
    async with processes() as started:
        await relay.start()
        assert relay.proc is not None
        started.append(relay.proc)
        desk = await Proc.start("join", "office", "--server", relay.url, "--name", "desk",
                                "--answer", "auto")  # fmt: skip
        started.append(desk)
        await desk.line("joined room")
        boss = await Proc.start("join", "office", "--server", relay.url, "--name", "boss",
                                "--call", "desk", "--source", "none", "--record", str(recording),
                                "--canvas", "640x480")  # fmt: skip
        started.append(boss)
        call_id = (await boss.line(r"calling .*: call c_")).split()[-1]
        await desk.line(f"incoming call {call_id}")
        async with asyncio.timeout(60):  # media flows: the recording grows
            while not recording.exists() or recording.stat().st_size < 50_000:
                await asyncio.sleep(0.2)
        stopped_at = time.time()
        await relay.stop()
        await asyncio.sleep(2.0)  # a real outage
        await relay.start()
        assert relay.proc is not None
        started.append(relay.proc)
        restarted_at = time.time()
        await boss.line("relay: connected")
        await desk.line("relay: connected")
        await asyncio.sleep(3.0)  # the call goes on after the restart
        code, boss_out, err = await boss.stop()  # boss hangs up: desk is alone and leaves
        assert code == 0, err
        line = await desk.line(rf"call {call_id} ended: ")
        code, desk_out, err = await desk.stop()
        assert code == 0, err
        history_code, history, err = await run("calls", "office", "--server", relay.url, "--json")
        assert history_code == 0, err
    assert "relay_restart" not in boss_out + desk_out, boss_out + desk_out
    match = re.search(r"ended: last_left after ([\d.]+) s", line)
    assert match, line
    (call,) = json.loads(history)
    assert (call["call_id"], call["reason"]) == (call_id, "last_left")
    assert call["ended_at"] > restarted_at + 3.0
    assert call["duration_s"] == pytest.approx(call["ended_at"] - call["answered_at"])
    assert float(match.group(1)) >= call["duration_s"] - 0.1
    # The desk's video reached the boss's recording before, during and after the outage.
    stamps = desk_stamps(recording)
    numbers = [n for n, _ in stamps]
    assert numbers == sorted(numbers)
    captured = [t for _, t in stamps]
    assert any(t < stopped_at for t in captured)
    assert any(stopped_at < t < restarted_at for t in captured)
    assert any(t > restarted_at + 1.0 for t in captured)


def test_serve_with_an_unusable_database_is_a_one_line_error(tmp_path: Path) -> None:
    text = tmp_path / "notes.db"
    text.write_text("not a database\n" * 100)
    for path, why in (
        (tmp_path / "missing" / "x.db", "unable to open database file"),
        (tmp_path, "unable to open database file"),
        (text, "file is not a database"),
    ):
        out = subprocess.run([*CALLBOT, "serve", "--port", "0", "--db", str(path)],
                             capture_output=True, text=True, cwd=ROOT, timeout=60)  # fmt: skip
        assert out.returncode == 1, out.stderr
        assert out.stderr == f"callbot: error: cannot open call database {path}: {why}\n"


def test_calls_checks_the_room_and_says_when_the_relay_is_unreachable() -> None:
    out = subprocess.run([*CALLBOT, "calls", ""], capture_output=True, text=True, cwd=ROOT,
                         timeout=60)  # fmt: skip
    assert (out.returncode, out.stderr) == (1, "callbot: error: room must not be empty or blank\n")
    url = f"ws://127.0.0.1:{free_port()}/ws"
    out = subprocess.run([*CALLBOT, "calls", "r1", "--server", url], capture_output=True,
                         text=True, cwd=ROOT, timeout=60)  # fmt: skip
    assert out.returncode == 1
    assert out.stderr.startswith(f"callbot: error: cannot reach the relay at {url}: "), out.stderr
    assert out.stderr.count("\n") == 1 and "Error(" not in out.stderr  # no Python repr


def test_an_unwritable_recording_is_refused_before_joining(tmp_path: Path) -> None:
    # The relay is unreachable: had it joined first, that would be the error.
    url = f"ws://127.0.0.1:{free_port()}/ws"
    missing = tmp_path / "nope" / "x.mkv"
    for command in (["join", "r", "--record"], ["record", "r", "-o"]):
        args = [*command, str(missing), "--server", url, "--duration", "1"]
        out = subprocess.run([*CALLBOT, *args], capture_output=True, text=True, cwd=ROOT,
                             timeout=60)  # fmt: skip
        assert out.returncode == 1
        assert out.stderr == (
            f"callbot: error: cannot record to {missing}: no directory {missing.parent}\n"
        )


def test_contradicting_or_oversized_flags_are_usage_errors() -> None:
    for args, message in (
        (["join", "r", "--no-receive", "--record", "x.mkv"], "--no-receive never decodes"),
        (["join", "r", "--canvas", "100000x100000"], "from 16 to 4096"),
        (["record", "r", "-o", "x.mkv", "--size", "4098x720"], "from 16 to 4096"),
    ):
        out = subprocess.run([*CALLBOT, *args], capture_output=True, text=True, cwd=ROOT,
                             timeout=60)  # fmt: skip
        assert out.returncode == 2, (args, out.stderr)
        assert message in out.stderr and out.stderr.startswith("usage: "), out.stderr
    assert cli._size("4096x2160") == (4096, 2160)


async def test_a_call_command_the_relay_lost_is_sent_again_once_it_is_back(
    tmp_path: Path,
) -> None:
    port = free_port()
    settings = ServerSettings(host="127.0.0.1", port=port, db_path=str(tmp_path / "relay.db"))
    cfg = {"room": "r", "server_url": f"ws://127.0.0.1:{port}/ws", "mode": Mode.CALL,
           "reconnect": Backoff(first_s=0.05, cap_s=0.3)}  # fmt: skip
    relay = start_server(settings)
    await relay.__aenter__()
    try:
        async with (
            Participant(ParticipantConfig(name="boss", **cfg)) as boss,  # type: ignore[arg-type]
            Participant(ParticipantConfig(name="desk", **cfg)) as desk,  # type: ignore[arg-type]
        ):
            await boss.wait_for_peers(["desk"])
            call = await boss.start_call([desk.peer_id])
            async with asyncio.timeout(20):
                answered = await anext(aiter(desk.incoming_calls()))
            await answered.accept()
            await relay.__aexit__(None, None, None)
            async with asyncio.timeout(20):
                while desk.connection.connected:
                    await asyncio.sleep(0.02)
            # Hanging up while the relay is down: not sent now, sent once the relay is back.
            leaving = asyncio.create_task(
                cli._relay_command(desk, answered.leave, lambda: answered.joined)
            )
            await asyncio.sleep(0.3)
            assert not leaving.done() and answered.joined
            relay = start_server(settings)
            await relay.__aenter__()
            await asyncio.wait_for(leaving, 30)
            assert not answered.joined
            info = await call.wait_until(lambda i: i.participants == [boss.peer_id])
            assert info.status is CallStatus.ACTIVE  # boss is alone in it now, as after any leave
    finally:
        await relay.__aexit__(None, None, None)


async def test_a_call_command_the_relay_was_slow_to_answer_is_retried_and_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A reply timeout while the socket is fine is no reason to wait for a reconnection that
    never comes: the command goes again at once; a relay that keeps failing it is an error."""
    monkeypatch.setattr(cli, "RELAY_BACK_S", 3600.0)  # a wait for reconnection would hang here
    async with start_server(ServerSettings(host="127.0.0.1", port=0)) as relay:
        config = ParticipantConfig(room="r", server_url=relay.ws_url, name="desk")
        async with Participant(config) as desk:
            tries: list[int] = []

            async def slow_then_fine() -> None:
                tries.append(1)
                if len(tries) < 3:
                    raise ConnectError("no reply from the relay within 10 s")

            async with asyncio.timeout(60):
                await cli._relay_command(desk, slow_then_fine, lambda: True)  # type: ignore[arg-type]
            assert len(tries) == 3

            async def always_slow() -> None:
                tries.append(1)
                raise ConnectError("no reply from the relay within 10 s")

            tries.clear()
            with pytest.raises(ConnectError, match="no reply"):
                async with asyncio.timeout(60):
                    await cli._relay_command(desk, always_slow, lambda: True)  # type: ignore[arg-type]
            assert len(tries) == cli.RELAY_COMMAND_TRIES
