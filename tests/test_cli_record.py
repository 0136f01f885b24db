"""``callbot record`` and ``callbot composite`` as a user runs them: real processes on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pty
import re
import signal
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import av
import numpy as np
import pytest

from media import fit, grid, placeholder_yuv, read_stamp

from .test_cli import CALLBOT, ROOT, run, serve

pytestmark = pytest.mark.slow


@contextlib.asynccontextmanager
async def publishers(url: str, room: str, *bots: tuple[str, ...]) -> AsyncIterator[None]:
    """``join --no-receive`` processes (name, source...) that are in the room when this yields."""
    procs = []
    try:
        for name, *sources in bots:
            flags = [arg for source in sources for arg in ("--source", source)]
            proc = await asyncio.create_subprocess_exec(
                *CALLBOT, "join", room, "--server", url, "--name", name, "--no-receive",
                *flags, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            )  # fmt: skip
            procs.append(proc)
        async with asyncio.timeout(60):
            for proc in procs:
                assert proc.stdout is not None
                line = await proc.stdout.readline()
                assert line.startswith(b"joined room"), line
        yield
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.terminate()
        for proc in procs:
            await proc.communicate()


def _frames(path: Path) -> list[av.VideoFrame]:
    with av.open(str(path)) as container:
        return list(container.decode(video=0))


def _audio(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        chunks = [f.to_ndarray().reshape(-1) for f in container.decode(audio=0)]
    return np.concatenate(chunks).astype(np.float64)


def _cell_yuv(frame: av.VideoFrame, cell_x: int, cell_y: int) -> tuple[int, int, int]:
    """Y, U, V at a canvas point (chroma at half resolution)."""
    arr = frame.to_ndarray()
    w, h = frame.width, frame.height
    u = arr[h : h + h // 4].reshape(h // 2, w // 2)
    v = arr[h + h // 4 :].reshape(h // 2, w // 2)
    return (
        int(arr[cell_y, cell_x]),
        int(u[cell_y // 2, cell_x // 2]),
        int(v[cell_y // 2, cell_x // 2]),
    )


async def test_record_lays_out_a_room_splits_tracks_and_composes_offline(tmp_path: Path) -> None:
    out = tmp_path / "room.mkv"
    split = tmp_path / "split"
    async with serve() as url, publishers(url, "r", ("alice", "pattern", "tone"), ("bob", "tone")):
        code, stdout, err = await run(
            "record", "r", "-o", str(out), "--server", url, "--duration", "6",
            "--size", "640x360", "--split", str(split),
        )  # fmt: skip
    assert code == 0, err
    assert "recording room 'r'" in stdout
    # Not a terminal: plain progress lines, then the summary.
    assert re.search(r"recording 00:0\d .* fps .* Mb/s .* participants", stdout), stdout
    assert re.search(r"recorded \d+ frames .* alice [\d.]+ fps; 3 per-track files", stdout), stdout

    frames = _frames(out)
    assert len(frames) >= 30, len(frames)
    cells = grid(2, 640, 360)
    last = frames[-1]
    # Alice (first to arrive or not, the grid has two cells): one shows her stamped pattern,
    # the other Bob's placeholder, since Bob sends no video.
    stamped = [read_stamp(last, fit(640, 480, c)) is not None for c in cells]
    assert sorted(stamped) == [False, True], stamped
    bob_cell = cells[stamped.index(False)]
    y, u, v = _cell_yuv(last, bob_cell.x + 4, bob_cell.y + 4)
    want = placeholder_yuv("bob")
    assert abs(y - want[0]) <= 6 and abs(u - want[1]) <= 6 and abs(v - want[2]) <= 6
    mixed = _audio(out)
    assert np.sqrt(np.mean(mixed[len(mixed) // 2 :] ** 2)) > 0.05  # bob's tone is in the mix

    names = sorted(p.name for p in split.iterdir())
    assert names == ["alice-audio.mka", "alice-video.mkv", "bob-audio.mka"], names
    alice = _frames(split / "alice-video.mkv")
    numbers = [s.frame_number for f in alice if (s := read_stamp(f)) is not None]
    assert len(numbers) >= 20 and numbers == sorted(numbers)
    assert (alice[0].width, alice[0].height) == (640, 480)  # her own size, not the canvas
    for name in ("alice-audio.mka", "bob-audio.mka"):
        with av.open(str(split / name)) as container:
            assert not container.streams.video
        assert np.sqrt(np.mean(_audio(split / name) ** 2)) > 0.05, name

    # Offline: the split files and the room recording composed into one, speaker layout.
    composed = tmp_path / "composed.mp4"
    code, stdout, err = await run(
        "composite", str(split / "alice-video.mkv"), str(split / "bob-audio.mka"), str(out),
        "-o", str(composed), "--layout", "speaker", "--size", "640x360", "--fps", "15",
    )  # fmt: skip
    assert code == 0, err
    assert "composed 3 inputs (alice-video, bob-audio, room)" in stdout, stdout
    composed_frames = _frames(composed)
    with av.open(str(out)) as container:
        longest = max(float(container.duration or 0) / av.time_base, 1.0)
    assert abs(len(composed_frames) - longest * 15) <= 15 * 1.5, (len(composed_frames), longest)
    with av.open(str(composed)) as container:
        assert container.streams.audio


async def test_record_on_a_terminal_shows_live_progress_and_stops_on_sigterm(
    tmp_path: Path,
) -> None:
    out = tmp_path / "tty.mp4"
    async with serve() as url, publishers(url, "t", ("carol", "pattern")):
        leader, follower = pty.openpty()
        proc = await asyncio.create_subprocess_exec(
            *CALLBOT, "record", "t", "-o", str(out), "--server", url, "--size", "320x240",
            cwd=ROOT, stdin=subprocess.DEVNULL, stdout=follower, stderr=subprocess.PIPE,
        )  # fmt: skip
        os.close(follower)
        seen = b""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(60):
                # Wait until the live line shows a frame rate above zero: media is flowing.
                while not re.search(rb"\r\x1b\[2Krecording 00:\d\d +[1-9][\d.]* fps", seen):
                    seen += await loop.run_in_executor(None, os.read, leader, 4096)
            proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(30):
                _, err = await proc.communicate()
                with contextlib.suppress(OSError):
                    while chunk := await loop.run_in_executor(None, os.read, leader, 4096):
                        seen += chunk
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            os.close(leader)
    assert proc.returncode == 0, err.decode()
    text = seen.decode(errors="replace")
    assert "1 participants" in text
    assert re.search(r"\nrecorded \d+ frames", text.replace("\r", "")), text
    frames = _frames(out)
    assert len(frames) >= 5
    assert any(read_stamp(f, fit(640, 480, grid(1, 320, 240)[0])) for f in frames)


async def test_composite_names_the_bad_input(tmp_path: Path) -> None:
    text = tmp_path / "notes.mkv"
    text.write_text("not a video")
    missing = tmp_path / "missing.mkv"
    for bad in (text, missing):
        code, _, err = await run("composite", str(bad), "-o", str(tmp_path / "o.mkv"))
        assert code == 1
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("callbot: error: ") and str(bad) in lines[0]
    code, _, err = await run("composite", str(text), "-o", str(tmp_path / "o.avi"))
    assert code == 1 and "o.avi" in err
    code, _, err = await run("composite", "-o", str(tmp_path / "o.mkv"))
    assert code == 2  # usage: at least one input
