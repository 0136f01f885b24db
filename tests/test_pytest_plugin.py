"""The pytest plugin as a team uses it: from a throwaway project with only the public fixtures.

The example code is taken verbatim from docs/testing.md, so the documentation cannot rot.
pytester runs each project in a subprocess (the plugin is found through its entry point, as
after ``pip install callbot``); where the test needs a relay of its own, the subprocess runs in
a worker thread while this test's event loop serves the relay.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
from pathlib import Path

import aiohttp
import av
import cv2
import numpy as np
import pytest

from callbot_pytest import MediaAssertionError, assert_audio, assert_video
from media.analysis import AudioSummary, PatternSpec, VideoAnalyzer, VideoSummary
from signaling_server import ServerSettings, start_server

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "testing.md"
pytestmark = pytest.mark.slow


def example(name: str) -> str:
    """The code block that follows ``<!-- example: NAME -->`` in docs/testing.md."""
    text = DOCS.read_text(encoding="utf-8")
    match = re.search(
        rf"<!-- example: {re.escape(name)} -->\s*```\w+\n(.*?)```", text, flags=re.DOTALL
    )
    assert match, f"docs/testing.md has no example {name}"
    return match.group(1)


def video_summary(**changes: object) -> VideoSummary:
    fields: dict[str, object] = {
        "frames": 90, "stamped": 90, "drops": 0, "duplicates": 0, "reordered": 0,
        "freezes": 0, "max_freeze_ms": 0.0, "frozen_ms": 0.0, "fps": 29.9,
        "fps_series": [(0.0, 30.0), (1.0, 30.0)],
        "latency_ms": {"min": 5.0, "median": 9.0, "p95": 14.0, "max": 20.0},
        "psnr_db": {"mean": 40.0, "min": 36.0}, "ssim": {"mean": 0.98, "min": 0.97},
        "resolutions": [(0.0, 320, 240)],
    }  # fmt: skip
    fields.update(changes)
    return VideoSummary(**fields)  # type: ignore[arg-type]


def test_assert_video_names_the_failed_thresholds_and_every_number() -> None:
    good = video_summary()
    assert_video(good, min_fps=25, max_freeze_ms=150, max_latency_ms=50, min_psnr_db=35)
    bad = video_summary(fps=12.5, drops=7, freezes=2, max_freeze_ms=420.0, frozen_ms=700.0)
    with pytest.raises(MediaAssertionError) as failure:
        assert_video(bad, min_fps=25, max_drops=3, min_psnr_db=30, label="alice")
    message = str(failure.value)
    assert "video 'alice' failed: fps 12.5 < min_fps 25; drops 7 > max_drops 3" in message
    assert "PSNR mean 40.0" in message and "min_psnr_db" not in message.split("measured")[0]
    for number in ("fps 12.5", "freezes 2 (longest 420 ms", "latency p95 14.0", "SSIM mean 0.980"):
        assert number in message
    assert isinstance(failure.value, AssertionError)
    # A threshold on something not measured fails; it never passes silently.
    with pytest.raises(MediaAssertionError, match="PSNR not measured"):
        assert_video(video_summary(psnr_db=None), min_psnr_db=30)


def test_assert_video_fails_what_unstamped_video_cannot_measure() -> None:
    """Video that carries no callbot stamp (a browser camera, a team's own track) has frames,
    fps and freezes, but no drops, latency or PSNR: thresholds on those fail, never pass."""
    analyzer = VideoAnalyzer(reference=PatternSpec(width=320, height=240))
    gray = np.full((240 * 3 // 2, 320), 128, dtype=np.uint8)
    for i in range(20):  # one frame every 3 periods: two in three lost, none detectable
        analyzer.add(av.VideoFrame.from_ndarray(gray, format="yuv420p"), 100.0 + i * 0.1)
    summary = analyzer.summary()
    assert summary.frames == 20 and summary.stamped == 0 and summary.drops == 0
    assert_video(summary, min_fps=8, max_freeze_ms=150, max_freezes=0, min_frames=20)
    for thresholds, expected in (
        ({"max_drops": 0}, "drops not measured: 0 of 20 frames stamped (max_drops 0)"),
        ({"max_latency_ms": 300}, "latency not measured: 0 of 20 frames stamped"),
        ({"min_psnr_db": 30}, "PSNR not measured: 0 of 20 frames stamped (min_psnr_db 30)"),
        ({"min_ssim": 0.9}, "SSIM not measured: 0 of 20 frames stamped"),
    ):
        with pytest.raises(MediaAssertionError) as failure:
            assert_video(summary, **thresholds)
        assert expected in str(failure.value), failure.value
        assert "no reference" not in str(failure.value)
    with pytest.raises(MediaAssertionError, match="freezes not measured: no frames received"):
        assert_video(VideoAnalyzer().summary(), max_freeze_ms=500)
    with pytest.raises(MediaAssertionError, match="PSNR not measured: no reference pattern"):
        assert_video(video_summary(psnr_db=None), min_psnr_db=30)


def test_assert_audio() -> None:
    summary = AudioSummary(
        duration_s=3.0, present=True, rms_dbfs=-15.0, silences=[(1.0, 0.2)], glitches=2,
        beeps=[], latency_ms=None, av_offset_ms=None,
    )  # fmt: skip
    assert_audio(summary, present=True)
    with pytest.raises(MediaAssertionError) as failure:
        assert_audio(summary, max_glitches=0, max_av_offset_ms=80)
    message = str(failure.value)
    assert "glitches 2 > max_glitches 0" in message and "A/V offset not measured" in message
    assert "the sender needs sync marks: callbot_participants(name, sync_every_s=1.0)" in message
    with pytest.raises(MediaAssertionError) as failure:
        assert_audio(dataclasses.replace(summary, beeps=[1.0, 2.0]), max_latency_ms=300)
    assert "audio latency not measured: 2 beeps but no video flash paired" in str(failure.value)
    assert "level -15.0 dBFS" in message and "longest 200 ms" in message
    with pytest.raises(MediaAssertionError, match="no audio received"):
        assert_audio(dataclasses.replace(summary, present=False))


def project(pytester: pytest.Pytester, name: str) -> None:
    """A throwaway project: the docs' configuration and one of its example test files."""
    (pytester.path / "pyproject.toml").write_text(example("pyproject.toml"), encoding="utf-8")
    pytester.makepyfile(**{name.removesuffix(".py"): example(name)})


def readme_example() -> str:
    """The code block of the README's "Test your own calls" section."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Test your own calls", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```python\n(.*?)```", section, flags=re.DOTALL)
    assert match, "README has no example in 'Test your own calls'"
    return match.group(1)


def test_docs_example_passes_in_a_throwaway_project(pytester: pytest.Pytester) -> None:
    project(pytester, "test_my_call.py")
    pytester.makepyfile(test_readme=readme_example())
    reports = pytester.path / "reports"
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--callbot-report", reports)
    result.assert_outcomes(passed=3)
    assert "Warning" not in result.stdout.str() + result.stderr.str()
    result.stdout.fnmatch_lines(["*callbot media reports*", "*index.html"])
    index = reports / "test_my_call.py_test_alice_reaches_bob_cleanly" / "index.html"
    page = index.read_text(encoding="utf-8")
    images = re.findall(r'<img src="([^"]+)"', page)
    assert {"fps.png", "latency.png", "psnr.png"} <= set(images), images
    assert any(name.startswith("worst-") for name in images), images
    for name in images:
        picture = cv2.imdecode(np.fromfile(index.parent / name, dtype=np.uint8), cv2.IMREAD_COLOR)
        assert picture is not None and picture.size > 0, name


def test_docs_failing_example_shows_the_measured_numbers(pytester: pytest.Pytester) -> None:
    project(pytester, "test_slow_sender.py")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    match = re.search(
        r"MediaAssertionError: video 'alice video' failed: fps ([\d.]+) < min_fps 25", out
    )
    assert match, out
    assert 7 <= float(match.group(1)) <= 12, out  # alice sends 10 fps
    for word in ("measured: frames", "drops", "freezes", "latency p95", "PSNR mean", "dB"):
        assert word in out, word


async def test_the_fixtures_use_a_relay_elsewhere(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    project(pytester, "test_my_call.py")
    async with start_server(ServerSettings(host="127.0.0.1", port=0)) as relay:
        run = asyncio.create_task(
            asyncio.to_thread(
                pytester.runpytest_subprocess, "-p", "no:cacheprovider", "--callbot-relay",
                relay.ws_url, "-k", "cleanly",
            )
        )  # fmt: skip
        most = 0
        async with aiohttp.ClientSession() as session:
            while not run.done():  # the relay's own count proves the participants came here
                async with session.get(f"{relay.http_url}/healthz") as response:
                    most = max(most, (await response.json())["peers"])
                await asyncio.wait([run], timeout=0.05)
        result = await run
    result.assert_outcomes(passed=1, deselected=1)
    result.stdout.fnmatch_lines([f"callbot: relay {relay.ws_url} (external)"])
    assert most == 2

    monkeypatch.setenv("CALLBOT_RELAY_URL", "http://not-a-relay")
    bad = await asyncio.to_thread(pytester.runpytest_subprocess, "-p", "no:cacheprovider")
    assert bad.ret == pytest.ExitCode.USAGE_ERROR
    bad.stderr.fnmatch_lines(["*CALLBOT_RELAY_URL must look like ws://HOST:PORT/ws*"])


AV_SYNC_TESTS = """
import asyncio

import pytest

from callbot_pytest import MediaAssertionError, assert_audio

pytestmark = pytest.mark.asyncio


async def test_the_audio_probe_finds_the_flashes(callbot_participants, callbot_probe):
    await callbot_participants("alice", sync_every_s=1.0)
    bob = await callbot_participants("bob", video=None, audio=None)
    audio = await callbot_probe(bob, "alice", "audio")  # before the video probe: order is free
    await callbot_probe(bob, "alice")
    async with asyncio.timeout(60):
        while audio.audio_summary().av_pairs < 2:
            await audio.wait_frames(audio.frames_received + 25)
    # The bare probe, as the README passes it: the A/V offset and latency are measured.
    assert_audio(audio, max_av_offset_ms=500, max_latency_ms=5000)
    summary = callbot_probe.audio_summary(audio)
    assert summary.av_offset_ms is not None and summary.latency_ms is not None


async def test_without_the_video_probe_the_message_says_so(callbot_participants, callbot_probe):
    await callbot_participants("alice", sync_every_s=1.0)
    bob = await callbot_participants("bob", video=None, audio=None)
    audio = await callbot_probe(bob, "alice", "audio")
    async with asyncio.timeout(60):
        while len(audio.audio_summary().beeps) < 2:
            await audio.wait_frames(audio.frames_received + 25)
    with pytest.raises(MediaAssertionError, match="beeps but no video flash paired"):
        assert_audio(audio, max_av_offset_ms=500)
"""


def test_assert_audio_on_a_probe_measures_the_av_offset(pytester: pytest.Pytester) -> None:
    (pytester.path / "pyproject.toml").write_text(example("pyproject.toml"), encoding="utf-8")
    pytester.makepyfile(test_av_sync=AV_SYNC_TESTS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)


def test_a_relay_url_without_the_ws_path_is_a_usage_error(pytester: pytest.Pytester) -> None:
    """The relay answers ws://HOST:PORT with its web page: refused at start-up, not by every
    test failing to connect."""
    project(pytester, "test_my_call.py")
    for url in ("ws://127.0.0.1:9", "ws://127.0.0.1:9/"):
        result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--callbot-relay", url)
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        result.stderr.fnmatch_lines(
            ["*--callbot-relay/CALLBOT_RELAY_URL needs the relay's WebSocket path*"
             "(did you mean ws://127.0.0.1:9/ws?)*"]
        )  # fmt: skip
