"""The ``callbot`` command as a user runs it: separate OS processes on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import av
import pytest

import cli
from media import fit, grid, read_stamp

from .netutil import own_udp_sockets

CALLBOT = [sys.executable, "-m", "cli"]
ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def run(
    *args: str, timeout: float = 90, pids: list[int] | None = None
) -> tuple[int, str, str]:
    """``callbot ARGS`` in the repository: (exit code, stdout, stderr)."""
    return await run_process(*CALLBOT, *args, timeout=timeout, pids=pids)


async def run_process(
    *argv: str, timeout: float = 90, pids: list[int] | None = None
) -> tuple[int, str, str]:
    """Any command in the repository; killed if it outlives ``timeout`` (a hang guard)."""
    proc = await asyncio.create_subprocess_exec(
        *argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    if pids is not None:
        pids.append(proc.pid)
    try:
        async with asyncio.timeout(timeout):
            out, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@contextlib.asynccontextmanager
async def serve(*flags: str) -> AsyncIterator[str]:
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        *CALLBOT, "serve", "--port", str(port), *flags, cwd=ROOT,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        async with asyncio.timeout(20):
            while True:
                with contextlib.suppress(OSError):
                    _, writer = await asyncio.open_connection("127.0.0.1", port)
                    writer.close()
                    await writer.wait_closed()
                    break
                assert proc.returncode is None, "callbot serve exited early"
                await asyncio.sleep(0.1)
        yield f"ws://127.0.0.1:{port}/ws"
    finally:
        proc.terminate()
        await proc.wait()


def decoded_frames(path: Path) -> Iterator[av.VideoFrame]:
    with av.open(str(path)) as container:
        yield from container.decode(video=0)


def tile_stamps(path: Path, tiles: int, src: tuple[int, int] = (640, 480)) -> list[list[int]]:
    """Frame numbers read from each grid tile of every decoded frame of a recording."""
    seen: list[list[int]] = [[] for _ in range(tiles)]
    for frame in decoded_frames(path):
        for i, cell in enumerate(grid(tiles, frame.width, frame.height)):
            rect = fit(src[0], src[1], cell)
            stamp = read_stamp(frame, (rect.x, rect.y, rect.w, rect.h))
            if stamp is not None:
                seen[i].append(stamp.frame_number)
    return seen


async def test_serve_and_two_join_processes_record_each_other(tmp_path: Path) -> None:
    started: list[int] = []
    async with serve() as url:
        calls = asyncio.gather(
            *(
                run("join", "room1", "--server", url, "--name", name,
                    "--record", str(tmp_path / f"{name}.mkv"), "--duration", "6",
                    "--canvas", "640x480", pids=started)
                for name in ("alice", "bob")
            )
        )  # fmt: skip
        # Mid-call (once both have ICE sockets), every UDP socket either holds is on loopback.
        sockets: dict[int, list[tuple[str, int]]] = {}
        async with asyncio.timeout(30):
            while len(sockets) < 2 or not all(sockets.values()):
                await asyncio.sleep(0.2)
                sockets = {pid: own_udp_sockets(pid) for pid in started}
        results = await calls
    assert len(sockets) == 2 and all(sockets.values()), sockets
    assert all(addr == "127.0.0.1" for socks in sockets.values() for addr, _ in socks), sockets
    for code, out, err in results:
        assert code == 0, err
        assert "joined room 'room1'" in out
        assert re.search(r"recorded \d+ frames", out), out
    for name, other in (("alice", "bob"), ("bob", "alice")):
        path = tmp_path / f"{name}.mkv"
        (numbers,) = tile_stamps(path, 1)
        # Counts are kept low on purpose: a loaded CI machine may deliver far below 30 fps.
        assert len(numbers) >= 10, f"{name}'s recording shows {other}'s pattern too rarely"
        assert numbers == sorted(numbers)
        with av.open(str(path)) as container:
            assert container.streams.audio, "the recording has no audio stream"


async def test_demo_writes_a_playable_file_with_three_tiles(tmp_path: Path) -> None:
    output = tmp_path / "demo.mkv"
    code, out, err = await run("demo", "--duration", "3", "--output", str(output))
    assert code == 0, err
    lines = out.strip().splitlines()
    assert lines[0] == str(output.resolve())
    assert re.match(r"recorded \d+ frames .* bot-1 [\d.]+ fps \+ audio, bot-2 [\d.]+ fps", lines[1])
    per_tile = tile_stamps(output, 3)
    assert all(len(n) >= 5 and n == sorted(n) for n in per_tile), per_tile


async def test_join_an_unreachable_relay_is_a_one_line_error() -> None:
    code, _, err = await run(
        "join", "r", "--server", f"ws://127.0.0.1:{free_port()}/ws", "--duration", "1"
    )
    assert code == 1
    assert err.strip().count("\n") == 0, err
    assert err.startswith("callbot: error: cannot reach the relay")


async def test_refused_join_is_a_one_line_error() -> None:
    async with serve("--max-room-size", "1") as url:
        first = await asyncio.create_subprocess_exec(
            *CALLBOT, "join", "r", "--server", url, "--source", "none",
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        assert first.stdout is not None
        async with asyncio.timeout(60):
            assert (await first.stdout.readline()).startswith(b"joined room 'r'")
        code, _, err = await run("join", "r", "--server", url, "--duration", "1")
        first.terminate()
        assert await first.wait() == 0
    assert code == 1
    assert err.startswith("callbot: error: rate_limited: room 'r' is full"), err
    assert err.strip().count("\n") == 0, err


def test_bad_ice_address_is_refused_before_connecting() -> None:
    out = subprocess.run([*CALLBOT, "join", "r", "--ice-address", "not-an-ip"],
                         capture_output=True, text=True, cwd=ROOT, timeout=60)  # fmt: skip
    assert out.returncode == 1
    assert out.stderr == "callbot: error: ice address 'not-an-ip' is not an IP address\n"


def test_missing_source_file_is_a_one_line_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.mp4"
    out = subprocess.run([*CALLBOT, "join", "r", "--source", str(missing)],
                         capture_output=True, text=True, cwd=ROOT, timeout=60)  # fmt: skip
    assert out.returncode == 1
    assert out.stderr == f"callbot: error: media file not found: {missing}\n"


def test_bad_room_name_is_refused_before_connecting() -> None:
    out = subprocess.run([*CALLBOT, "join", "x" * 65, "--duration", "1"], capture_output=True,
                         text=True, cwd=ROOT, timeout=60)  # fmt: skip
    assert out.returncode == 1
    assert out.stderr.startswith("callbot: error: room must be"), out.stderr


async def test_bad_flags_exit_with_usage_error() -> None:
    code, _, err = await run("join", "r", "--duration", "-1")
    assert code == 2 and "must be a finite number greater than zero" in err
    async with serve() as url:  # reachable, so only the extension can be what is refused
        code, _, err = await run("join", "r", "--record", "out.avi", "--duration", "1",
                                 "--server", url)  # fmt: skip
    assert code == 1 and err.startswith("callbot: error:") and ".avi" in err, err


def test_help_texts_describe_every_command_and_flag() -> None:
    env = {**os.environ, "COLUMNS": "100"}

    def helptext(*args: str) -> str:
        out = subprocess.run([*CALLBOT, *args, "--help"], capture_output=True, text=True,
                             env=env, cwd=ROOT, timeout=60)  # fmt: skip
        assert out.returncode == 0, out.stderr
        return out.stdout

    top = helptext()
    flags = {
        "serve": ["--host", "--port", "--max-room-size", "--db", "--ring-timeout"],
        "join": ["--server", "--name", "--source", "--record", "--duration", "--canvas", "--fps",
                 "--no-receive", "--ice-address", "--mode", "--call", "--answer"],
        "demo": ["--duration", "--output", "--json"],
        "calls": ["--server", "--limit", "--json"],
        "bench": ["--json", "--frames", "compositor"],
    }  # fmt: skip
    for command, expected in flags.items():
        assert command in top
        text = helptext(command)
        missing = [flag for flag in expected if flag not in text]
        assert not missing, (command, missing)


async def test_serve_prints_its_url_and_closes_sockets_on_sigterm() -> None:
    import aiohttp

    proc = await asyncio.create_subprocess_exec(
        *CALLBOT, "serve", "--port", "0", cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdout is not None
    async with asyncio.timeout(60):
        line = (await proc.stdout.readline()).decode()
    match = re.fullmatch(r"callbot relay listening on (ws://127\.0\.0\.1:(\d+)/ws)\n", line)
    assert match and int(match.group(2)) > 0, line
    async with aiohttp.ClientSession() as session, session.ws_connect(match.group(1)) as ws:
        await ws.send_str('{"type":"join","room":"r"}')
        assert (await ws.receive_json())["type"] == "welcome"
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            closing = await ws.receive()
        assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        assert ws.close_code == 1001  # going away: a clean shutdown, not a crash (1006)
    async with asyncio.timeout(30):
        assert await proc.wait() == 0


def test_bench_prints_ratios_as_json() -> None:
    out = subprocess.run([*CALLBOT, "bench", "compositor", "--json", "--frames", "5"],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    # Speed is the benchmark's business; here: it ran both sides and compared their pictures.
    assert result["ratio_16"] > 0 and result["psnr_db_16"] > 40
    assert isinstance(result["target_met"], bool)


def test_bench_record_prints_real_time_factors_as_json() -> None:
    out = subprocess.run([*CALLBOT, "bench", "record", "--json", "--frames", "10"],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    for codec in ("h264", "vp8"):
        assert result[f"{codec}_fps"] > 0 and result[f"{codec}_reference_fps"] > 0
        assert result[f"{codec}_realtime_x"] == pytest.approx(result[f"{codec}_fps"] / 30)


async def test_join_recording_survives_sigterm_and_sigkill(tmp_path: Path) -> None:
    async with serve() as url:
        publisher = await asyncio.create_subprocess_exec(
            *CALLBOT, "join", "r", "--server", url, "--name", "pub", "--no-receive",
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        recorders = {
            how: await asyncio.create_subprocess_exec(
                *CALLBOT,
                "join",
                "r",
                "--server",
                url,
                "--name",
                how,
                "--source",
                "none",
                "--record",
                str(tmp_path / f"{how}.mkv"),
                "--canvas",
                "640x480",
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            for how in ("term", "kill")
        }
        # Signal only once both are in the call and have written media.
        async with asyncio.timeout(60):
            for proc in recorders.values():
                assert proc.stdout is not None
                assert (await proc.stdout.readline()).startswith(b"joined room 'r'")
            while not all(
                (tmp_path / f"{how}.mkv").exists()
                and (tmp_path / f"{how}.mkv").stat().st_size > 60_000
                for how in recorders
            ):
                await asyncio.sleep(0.2)
        recorders["term"].send_signal(signal.SIGTERM)
        recorders["kill"].kill()
        async with asyncio.timeout(30):
            out, err = await recorders["term"].communicate()
            await recorders["kill"].communicate()
        publisher.terminate()
        assert await publisher.wait() == 0  # SIGTERM is a clean stop
    assert recorders["term"].returncode == 0, err.decode()
    assert re.search(r"recorded \d+ frames .* pub [\d.]+ fps", out.decode()), out.decode()
    assert recorders["kill"].returncode == -signal.SIGKILL
    for how in ("term", "kill"):
        (numbers,) = tile_stamps(tmp_path / f"{how}.mkv", 1)
        assert len(numbers) >= 10, (how, len(numbers))
        assert numbers == sorted(numbers)


async def test_bots_ring_answer_decline_and_history_survives_restart(tmp_path: Path) -> None:
    db = str(tmp_path / "calls.db")
    async with serve("--db", db) as url:
        desk = asyncio.create_task(
            run("join", "office", "--server", url, "--name", "desk", "--answer", "auto",
                "--duration", "14")
        )  # fmt: skip
        lobby = asyncio.create_task(
            run("join", "office", "--server", url, "--name", "lobby", "--answer", "decline",
                "--duration", "14", "--source", "none")
        )  # fmt: skip
        boss = await run(
            "join", "office", "--server", url, "--name", "boss", "--call", "desk",
            "--record", str(tmp_path / "boss.mkv"), "--canvas", "640x480", "--duration", "5",
        )  # fmt: skip
        nobody = await run(
            "join", "office", "--server", url, "--name", "temp", "--call", "lobby",
            "--source", "none", "--duration", "20",
        )  # fmt: skip
        desk_result, lobby_result = await desk, await lobby
    for code, _, err in (boss, nobody, desk_result, lobby_result):
        assert code == 0, err
    assert "calling" in boss[1] and "incoming call" in desk_result[1]
    # The declined call ends at once and its caller leaves without waiting for --duration.
    assert "ended: all_declined" in nobody[1]
    assert "incoming call" in lobby_result[1] and ": decline" in lobby_result[1]
    (numbers,) = tile_stamps(tmp_path / "boss.mkv", 1)
    assert len(numbers) >= 10 and numbers == sorted(numbers)

    async with serve("--db", db) as url:  # a new relay process on the same history
        code, out, err = await run("calls", "office", "--server", url, "--json")
        assert code == 0, err
        table_code, table, _ = await run("calls", "office", "--server", url)
    calls = json.loads(out)
    assert [c["reason"] for c in calls] == ["all_declined", "last_left"]  # newest first
    answered = calls[1]
    assert answered["status"] == "ended" and answered["duration_s"] > 0
    assert table_code == 0 and "last_left" in table and "all_declined" in table


async def test_calls_for_an_unreachable_relay_is_a_one_line_error() -> None:
    code, _, err = await run("calls", "r", "--server", f"ws://127.0.0.1:{free_port()}/ws")
    assert code == 1 and err.startswith("callbot: error: cannot reach the relay at"), err
    assert err.count("\n") == 1, err


def test_bench_resilience_prints_recovery_times_as_json() -> None:
    out = subprocess.run([*CALLBOT, "bench", "resilience", "--json", "--frames", "30"],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["relay_restart_same_ids"] == 1.0
    assert result["relay_outage_frames"] > 0  # media flowed while the relay was down
    for pct in (0, 1, 5, 10):
        assert result[f"fps_loss_{pct}"] > 0
    assert result["loss_burst_recovery_s"] > 0 and result["relay_restart_recovery_s"] > 0


def test_main_called_from_a_worker_thread_returns_its_exit_code(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An embedding program may run ``cli.main([...])`` off the main thread, where signal
    handlers cannot be set or restored: the command's error is still one line and a code."""
    results: list[object] = []

    def run_probe() -> None:
        try:
            argv = ["probe", "r", "--server", f"ws://127.0.0.1:{free_port()}/ws", "--duration", "1"]
            results.append(cli.main(argv))
        except BaseException as exc:  # the failure under test
            results.append(exc)

    worker = threading.Thread(target=run_probe)
    worker.start()
    worker.join(60)
    assert results == [1], results
    assert "callbot: error: cannot reach the relay" in capsys.readouterr().err
