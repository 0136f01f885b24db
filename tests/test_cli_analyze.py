"""``callbot analyze`` and ``callbot probe`` as a user runs them: separate processes, real files,
a real relay with a bot in it."""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from media import PatternVideoTrack, Recorder, ToneAudioTrack
from peer import Participant, ParticipantConfig
from signaling_server import RunningServer

from .test_cli import CALLBOT
from .test_cli import run_process as run

pytestmark = pytest.mark.slow


async def record_pattern(
    path: Path,
    frames: int,
    *,
    fps: float = 30.0,
    recorder_fps: float = 30.0,
    stall_after: int | None = None,
) -> None:
    """What a Recorder writes from one PatternVideoTrack, ``frames`` frames long.

    ``stall_after``: after that many frames, block the loop for 0.3 s, as a loaded machine
    does; the pattern then skips the slots it missed (a gap in pts, frame numbers go on).
    """
    pattern = PatternVideoTrack(width=320, height=240, fps=fps, label="rec", seed=3)
    recorder = Recorder(path, video=pattern, fps=recorder_fps)
    await recorder.start()
    try:
        async with asyncio.timeout(20):
            while recorder.video_frames < frames:
                if stall_after is not None and recorder.video_frames >= stall_after:
                    time.sleep(0.3)  # noqa: ASYNC251 - deliberate: starve the pattern's pacer
                    stall_after = None
                await asyncio.sleep(0.05)
    finally:
        await recorder.aclose()
        pattern.stop()


def check_report(index: Path) -> list[str]:
    """The page exists, every image it references exists and decodes as a PNG."""
    page = index.read_text(encoding="utf-8")
    images = re.findall(r'<img src="([^"]+)"', page)
    for name in images:
        data = (index.parent / name).read_bytes()
        assert data.startswith(b"\x89PNG"), name
        picture = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
        assert picture is not None and picture.shape[0] > 50 and picture.shape[1] > 50, name
    return images


async def test_analyze_a_recording(tmp_path: Path) -> None:
    path = tmp_path / "pattern.mkv"
    await record_pattern(path, 60)
    html = tmp_path / "report"
    code, out, err = await run(
        *CALLBOT, "analyze", str(path), "--json", "--html", str(html), "--pattern", "320x240,rec,3"
    )
    assert code == 0, err
    result = json.loads(out)
    video = result["video"]
    assert video["frames"] >= 55 and video["stamped"] == video["frames"]
    assert video["drops"] == 0 and video["duplicates"] == 0 and video["reordered"] == 0
    assert video["psnr_db"]["mean"] > 30 and result["latency_basis"] == "first_frame"
    assert result["reference"]["label"] == "rec" and result["reference"]["seed"] == 3
    images = check_report(Path(result["report"]))
    assert {"fps.png", "latency.png", "psnr.png"} <= set(images)
    assert sum(name.startswith("worst-") for name in images) >= 1

    # The terminal summary, without a reference: no PSNR, and it says why.
    code, out, err = await run(*CALLBOT, "analyze", str(path))
    assert code == 0, err
    assert re.search(r"frames\s+\d+ \(stamped \d+\)\s+drops 0", out), out
    assert "fps" in out and "freezes" in out and "give --pattern" in out


async def test_analyze_regenerates_the_pattern_at_its_own_rate(tmp_path: Path) -> None:
    """The pattern's motion depends on its fps. An MP4's average rate is frames / duration,
    not 30 for a 30-fps recording with a stall in it, and a recorder may write another rate
    than the pattern's: the reference must use the nominal rate, or the fps of --pattern."""
    mp4, mkv = tmp_path / "p30.mp4", tmp_path / "p15.mkv"
    await record_pattern(mp4, 45, stall_after=15)
    with av.open(str(mp4)) as container:
        stream = container.streams.video[0]
        assert stream.guessed_rate == 30 and stream.average_rate < 29, stream.average_rate
    await record_pattern(mkv, 25, fps=15, recorder_fps=30)  # the file says 30 fps
    results = {}
    for path, pattern in ((mp4, "320x240,rec,3"), (mkv, "320x240,rec,3,15")):
        code, out, err = await run(*CALLBOT, "analyze", str(path), "--json", "--pattern", pattern)
        assert code == 0, err
        results[path.suffix] = result = json.loads(out)
        assert result["video"]["stamped"] == result["video"]["frames"] >= 20, result
        assert result["video"]["psnr_db"]["mean"] > 35, (path.name, result)
        assert result["warnings"] == [], result
    assert results[".mp4"]["reference"]["fps"] == 30
    assert results[".mkv"]["reference"]["fps"] == 15

    # Without the pattern's fps the reference is wrong, and the summary says so.
    code, out, err = await run(*CALLBOT, "analyze", str(mkv), "--pattern", "320x240,rec,3")
    assert code == 0, err
    assert re.search(r"PSNR\s+mean (\d+\.\d) dB", out), out
    assert "warning   every frame is stamped but PSNR is only" in out, out
    assert "the reference assumes 30 fps" in out and "--pattern 320x240,rec,3,FPS" in out, out


async def test_analyze_refuses_bad_input(tmp_path: Path) -> None:
    code, _, err = await run(*CALLBOT, "analyze", str(tmp_path / "missing.mkv"))
    assert code == 1 and "not_found" in err
    code, _, err = await run(*CALLBOT, "analyze", str(tmp_path))
    assert code == 1 and err.strip().endswith(
        f"not_video: {tmp_path} is a directory, not a recording"
    ), err

    # A pattern smaller than PatternVideoTrack draws, or an odd one: a usage error, not a
    # traceback; the same for probe's --pattern-size.
    for pattern, size in (("32x24", "32x24"), ("321x240,rec,3", "321x240")):
        code, _, err = await run(*CALLBOT, "analyze", "x.mkv", "--pattern", pattern)
        assert code == 2 and "Traceback" not in err, err
        assert f"--pattern: pattern sides must be even, from 64 to 4096, got {size}" in err, err
    code, _, err = await run(*CALLBOT, "analyze", "x.mkv", "--pattern", "320x240,rec,3,0")
    assert code == 2 and "--pattern: fps '0': must be a finite number" in err, err
    code, _, err = await run(*CALLBOT, "probe", "room", "--pattern-size", "48x48")
    assert code == 2 and "--pattern-size: pattern sides must be even, from 64 to 4096" in err, err

    text = tmp_path / "notes.mkv"
    text.write_text("not a video")
    code, _, err = await run(*CALLBOT, "analyze", str(text))
    assert code == 1 and "not_video" in err, err

    plain = tmp_path / "plain.mkv"
    with av.open(str(plain), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 160, 120, "yuv420p"
        for _ in range(10):
            frame = av.VideoFrame.from_ndarray(np.zeros((120, 160, 3), np.uint8), format="bgr24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    code, _, err = await run(*CALLBOT, "analyze", str(plain))
    assert code == 1 and "no_stamps" in err, err

    # A composite of a stamped pattern (what join --record and record -o write): the stamps
    # are inside a tile, and the error says which files to analyze instead.
    pattern = tmp_path / "pattern.mkv"
    await record_pattern(pattern, 10)
    grid = tmp_path / "grid.mkv"
    code, _, err = await run(
        *CALLBOT, "composite", str(pattern), "-o", str(grid), "--size", "640x360"
    )
    assert code == 0, err
    code, _, err = await run(*CALLBOT, "analyze", str(grid), "--pattern", "320x240,rec,3")
    assert code == 1 and "no_stamps" in err and "composite" in err, err
    assert "record --split DIR" in err, err

    # --html without matplotlib names the extra to install.
    script = (
        "import sys; sys.modules['matplotlib'] = None; import cli; "
        f"sys.exit(cli.main(['analyze', {str(pattern)!r}, '--html', {str(tmp_path / 'r')!r}]))"
    )
    code, _, err = await run(sys.executable, "-c", script)
    assert code == 1 and "pip install 'callbot[report]'" in err, err


async def test_probe_a_live_room(relay: RunningServer, tmp_path: Path) -> None:
    # A bot like `callbot join room --name bot` (its pattern labelled and seeded by its name).
    video = PatternVideoTrack(width=320, height=240, label="bot", seed=sum(b"bot") % 7)
    tone = ToneAudioTrack()
    config = ParticipantConfig(room="live", server_url=relay.ws_url, name="bot", receive=False)
    async with Participant(config, video=video, audio=tone):
        code, out, err = await run(
            *CALLBOT, "probe", "live", "--server", relay.ws_url, "--duration", "4", "--json",
            "--pattern-size", "320x240", "--html", str(tmp_path / "report"),
        )  # fmt: skip
    video.stop()
    tone.stop()
    assert code == 0, err
    result = json.loads(out)
    [bot] = result["participants"]
    assert bot["name"] == "bot"
    assert bot["video"]["fps"] > 15 and bot["video"]["psnr_db"]["mean"] > 28
    assert bot["video"]["latency_ms"]["p95"] < 500
    assert bot["audio"]["present"] is True
    images = check_report(Path(result["report"]))
    assert {"fps.png", "latency.png", "psnr.png"} <= set(images)

    code, _, err = await run(
        *CALLBOT, "probe", "live", "--server", "ws://127.0.0.1:9/ws", "--duration", "1"
    )
    assert code == 1 and "cannot reach the relay" in err, err
