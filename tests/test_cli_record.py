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

from cli import CallRecorder
from media import fit, grid, placeholder_yuv, read_stamp
from media.layout import speaker_layout
from peer import Participant, ParticipantConfig
from signaling_server import RunningServer

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
    # Everyone who sent something is counted, audio too.
    assert re.search(
        r"recorded \d+ frames .* received: alice [\d.]+ fps \+ audio, bob audio; 3 per-track",
        stdout,
    ), stdout

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
    assert "composed 3 files as 3 participants (alice, bob, room)" in stdout, stdout
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
    code, _, err = await run("composite", str(tmp_path), "-o", str(tmp_path / "o.mkv"))
    assert code == 1 and f"{tmp_path}: is a directory" in err, err
    code, _, err = await run("composite", "-o", str(tmp_path / "o.mkv"))
    assert code == 2  # usage: at least one input
    # Below 1 fps a composite would stall on one frame for ever; the parser says so.
    for command in (["composite", str(text), "-o", str(tmp_path / "o.mkv")], ["record", "r"]):
        code, _, err = await run(*command, "-o", str(tmp_path / "x.mkv"), "--fps", "0.001")
        assert code == 2 and "between 1 and 120" in err, err


def test_progress_fps_follows_media_time_at_low_rates() -> None:
    """0.5 fps polled twice a second reads 0.5, not 0 and 1 by turns (whole frames per
    wall-clock window); a stall reads 0 once the window has passed."""
    from cli import _RateMeter

    meter = _RateMeter(window_s=3.0)
    shown = []
    for tick in range(40):  # a frame every 2 s of media, written when due
        now = tick * 0.5
        frames = int(now // 2) + 1
        shown.append(meter.update(now, frames, (frames - 1) * 2.0))
    assert all(fps == pytest.approx(0.5) for fps in shown[8:]), shown
    for tick in range(40, 50):  # nothing new for 5 s
        last = meter.update(tick * 0.5, 10, 18.0)
    assert last == 0.0


def _media_seconds(path: Path) -> float:
    """How much media a file being written holds so far (0 if it has no readable packet yet)."""
    end = 0.0
    with contextlib.suppress(av.FFmpegError, OSError), av.open(str(path)) as container:
        for packet in container.demux():
            if packet.pts is not None and packet.time_base is not None:
                end = max(end, float(packet.pts * packet.time_base))
    return end


async def _until_media(paths: list[Path], seconds: float) -> None:
    """Wait (no deadline but the caller's) until every file holds ``seconds`` of media."""
    while True:
        held = [await asyncio.to_thread(_media_seconds, p) if p.exists() else 0.0 for p in paths]
        if min(held) >= seconds:
            return
        await asyncio.sleep(0.3)


def _finalised(path: Path) -> tuple[float | None, dict[str, str]]:
    """(duration from the header: None unless the file was finalised, container tags)."""
    with av.open(str(path)) as container:
        duration = None if container.duration is None else container.duration / av.time_base
        return duration, dict(container.metadata)


async def test_more_signals_while_finalising_do_not_cancel_it(tmp_path: Path) -> None:
    """Ctrl-C pressed again (and again) while ``record`` finalises: still exit 0, every file
    finalised, the split audio whole."""
    out = tmp_path / "room.webm"
    split = tmp_path / "split"
    async with serve() as url, publishers(url, "s", ("alice", "pattern", "tone"), ("bob", "tone")):
        proc = await asyncio.create_subprocess_exec(
            *CALLBOT, "record", "s", "-o", str(out), "--server", url, "--size", "320x240",
            "--fps", "15", "--split", str(split),
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        tracks = [split / n for n in ("alice-video.mkv", "alice-audio.mka", "bob-audio.mka")]
        try:
            async with asyncio.timeout(120):  # guards a hang only
                await _until_media([out, *tracks], 1.0)
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGINT):
                proc.send_signal(sig)
                await asyncio.sleep(0.01)
            async with asyncio.timeout(60):
                stdout, stderr = await proc.communicate()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert proc.returncode == 0, stderr.decode()
    text = stdout.decode()
    assert re.search(r"recorded \d+ frames .* bob audio; 3 per-track files", text), text
    for path in (out, *tracks):
        duration, _ = await asyncio.to_thread(_finalised, path)
        assert duration is not None and duration >= 1.0, (path.name, duration)
    # The split audio was not cut short by an abandoned writer: it runs as long as the video.
    alice_video, _ = await asyncio.to_thread(_finalised, tracks[0])
    alice_audio, _ = await asyncio.to_thread(_finalised, tracks[1])
    assert alice_video is not None and alice_audio is not None
    assert abs(alice_audio - alice_video) < 1.0, (alice_audio, alice_video)


async def test_split_files_keep_their_place_in_the_room_and_compose_one_tile_each(
    tmp_path: Path,
) -> None:
    """alice (video + audio) and carol (video) are in the room together; bob (audio) comes
    after they left. The split files carry where they start, and ``composite DIR/*`` shows
    that: one tile per participant, only while they were there."""
    out = tmp_path / "room.mkv"
    split = tmp_path / "split"
    async with serve() as url:
        rec = await asyncio.create_subprocess_exec(
            *CALLBOT, "record", "t", "-o", str(out), "--server", url, "--size", "320x240",
            "--fps", "10", "--split", str(split),
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        try:
            async with asyncio.timeout(180):  # guards a hang only
                assert rec.stdout is not None
                assert (await rec.stdout.readline()).startswith(b"recording room 't'")
                first = [split / f"{n}.mkv" for n in ("alice-video", "carol-video")]
                first.append(split / "alice-audio.mka")
                async with publishers(url, "t", ("alice", "pattern", "tone"), ("carol", "pattern")):
                    await _until_media(first, 2.5)
                async with publishers(url, "t", ("bob", "tone")):
                    await _until_media([split / "bob-audio.mka"], 1.5)
            rec.send_signal(signal.SIGTERM)
            async with asyncio.timeout(60):
                _, stderr = await rec.communicate()
        finally:
            if rec.returncode is None:
                rec.kill()
                await rec.wait()
    assert rec.returncode == 0, stderr.decode()
    names = sorted(p.name for p in split.iterdir())
    assert names == ["alice-audio.mka", "alice-video.mkv", "bob-audio.mka", "carol-video.mkv"]

    spans: dict[str, tuple[float, float]] = {}
    for path in split.iterdir():
        duration, tags = await asyncio.to_thread(_finalised, path)
        assert duration is not None
        offset = float(tags["CALLBOT_OFFSET"])
        assert 0 < offset < 180
        spans[path.stem] = (offset, offset + duration)
    # The tags tell the story: bob came after both others had gone.
    assert spans["bob-audio"][0] > max(spans["alice-video"][1], spans["carol-video"][1])
    together = (
        max(spans["alice-video"][0], spans["carol-video"][0]),
        min(spans["alice-video"][1], spans["carol-video"][1]),
    )
    assert together[1] - together[0] > 1.0, spans

    # The split video declares the rate its frames came at, not the canvas's --fps.
    def rates() -> tuple[float, float]:
        with av.open(str(split / "alice-video.mkv")) as container:
            declared = float(container.streams.video[0].average_rate or 0)
            times = [float(f.time or 0.0) for f in container.decode(video=0)]
        return declared, 1 / float(np.median(np.diff([t for t in times if t <= times[0] + 1])))

    declared, actual = await asyncio.to_thread(rates)
    assert declared == round(actual), (declared, actual)

    composed = tmp_path / "grid.mkv"
    inputs = sorted(map(str, split.glob("*.mkv"))) + sorted(map(str, split.glob("*.mka")))
    code, said, err = await run(
        "composite", *inputs, "-o", str(composed), "--size", "320x240", "--fps", "10"
    )
    assert code == 0, err
    assert "composed 4 files as 3 participants (alice, carol, bob)" in said, said
    frames = await asyncio.to_thread(_frames, composed)

    def at(t: float) -> av.VideoFrame:
        return frames[min(len(frames) - 1, round(t * 10))]

    def stamped(frame: av.VideoFrame, tiles: int) -> list[bool]:
        return [read_stamp(frame, fit(640, 480, c)) is not None for c in grid(tiles, 320, 240)]

    # Nobody before the first of them arrived.
    assert stamped(at(max(0.0, together[0] - 1.5)), 1) == [False]
    # alice and carol side by side while both were there: two video tiles, nothing else.
    assert stamped(at(sum(together) / 2), 2) == [True, True]
    # bob alone later: his placeholder fills the canvas.
    bob = at(sum(spans["bob-audio"]) / 2)
    assert stamped(bob, 1) == [False] and stamped(bob, 2) == [False, False]
    y, u, v = _cell_yuv(bob, 8, 8)
    want = placeholder_yuv("bob")
    assert abs(y - want[0]) <= 6 and abs(u - want[1]) <= 6 and abs(v - want[2]) <= 6

    # Speaker layout: alice talks, so her video (not an audio placeholder) is the big tile.
    speaking = tmp_path / "speaker.mkv"
    code, _, err = await run(
        "composite", *inputs, "-o", str(speaking), "--size", "320x240", "--fps", "10",
        "--layout", "speaker",
    )  # fmt: skip
    assert code == 0, err
    frame = (await asyncio.to_thread(_frames, speaking))[round((together[1] - 0.3) * 10)]
    big = next(p for p in speaker_layout(["alice", "carol"], "alice", 320, 240) if p.key == "alice")
    assert read_stamp(frame, fit(640, 480, big.rect)) is not None


async def test_a_recording_cancelled_as_it_starts_leaves_no_broken_file(
    relay: RunningServer, tmp_path: Path
) -> None:
    """Ctrl-C right as ``record`` starts (the command is cancelled inside ``start``): no
    0-byte or header-only leftover that no player opens, and a summary that says so."""
    path = tmp_path / "early.mkv"
    recorder = CallRecorder(path, size=(64, 48), fps=5, split_dir=tmp_path / "split")
    config = ParticipantConfig(room="e", server_url=relay.ws_url, name="rec")
    async with Participant(config) as me:
        starting = asyncio.create_task(recorder.start(me))
        await asyncio.sleep(0)  # inside start(), opening the file in a worker thread
        starting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await starting
        summary = await recorder.aclose()  # start() closed it already: same summary again
    # Cancelled before any media reached it: no file at all rather than an unreadable one.
    assert summary.info.empty and not path.exists()
    assert summary.line().startswith("recorded nothing (stopped before any media; no file"), (
        summary.line()
    )


async def test_split_file_names_pair_up_per_stay(tmp_path: Path) -> None:
    """One number per stay of a participant, so composite pairs a stay's video and audio; a
    second track of one kind in a stay is named so that it pairs with nothing."""
    from cli import _Peer

    recorder = CallRecorder(tmp_path / "r.mkv", size=(64, 48), fps=5, split_dir=tmp_path)

    def add(peer: _Peer, kind: str) -> str:
        path = recorder._split_path(peer, kind)
        recorder._split_paths.append(path)
        return path.name

    first = _Peer("alice")  # audio only
    assert add(first, "audio") == "alice-audio.mka"
    second = _Peer("alice")  # came back, with video this time
    assert add(second, "video") == "alice-video-2.mkv"
    assert add(second, "audio") == "alice-audio-2.mka"
    assert add(second, "video") == "alice-video-2.2.mkv"
    assert add(_Peer("bob 1f2e"), "video") == "bob_1f2e-video.mkv"
    summary = await recorder.aclose()
    assert summary.info.empty
