"""Crash safety: a recording process killed with SIGKILL leaves a file that plays.

The recorder promises that a killed recording loses at most about two seconds (one Matroska
cluster or MP4 fragment, plus the interleaver's wait). A child process records pattern + tone
and reports how much it has encoded; once that passes KILL_AT_S it is killed mid-write, and the
file must decode at least 3 s of video, ending no more than ~2 s before what the child reported.

KILL_AT_S is 7.5 s rather than 5 s so the test can fail: FFmpeg's Matroska muxer closes a
cluster every 5 s by default, so a kill just after 5 s would look fine even without the
recorder's one-second clusters (a plain, unfragmented MP4 fails either way: no index).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import textwrap
from pathlib import Path

import av
import pytest

from media import read_stamp

ROOT = Path(__file__).resolve().parents[1]
FPS = 30
KILL_AT_S = 7.5

CHILD = textwrap.dedent(
    """
    import asyncio, json, sys
    from media import PatternVideoTrack, Recorder, ToneAudioTrack
    from media.clock import MediaClock

    async def main() -> None:
        clock = MediaClock()
        video = PatternVideoTrack(width=320, height=240, fps=30, clock=clock)
        audio = ToneAudioTrack(clock=clock)
        rec = Recorder(sys.argv[1], video=video, audio=audio, fps=30, clock=clock)
        await rec.start()
        while True:  # runs until killed
            await asyncio.sleep(0.1)
            print(json.dumps({"duration": rec.duration_s, "frames": rec.video_frames}), flush=True)

    asyncio.run(main())
    """
)


def _decode(path: Path) -> tuple[list[float], list[int], float]:
    """Video frame times and stamp numbers, and seconds of audio, up to where the file breaks."""
    times: list[float] = []
    numbers: list[int] = []
    audio_samples = 0
    with av.open(str(path)) as container, contextlib.suppress(av.InvalidDataError):
        for frame in container.decode(video=0):  # up to a packet the kill cut short
            stamp = read_stamp(frame)
            assert stamp is not None, f"unreadable frame at {frame.time}"
            times.append(float(frame.time or 0.0))
            numbers.append(stamp.frame_number)
    with av.open(str(path)) as container, contextlib.suppress(av.InvalidDataError):
        for audio in container.decode(audio=0):
            audio_samples += audio.samples
    return times, numbers, audio_samples / 48000


@pytest.mark.parametrize("ext", ["mkv", "mp4"])
async def test_sigkill_leaves_a_playable_file(tmp_path: Path, ext: str) -> None:
    path = tmp_path / f"killed.{ext}"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD, str(path), cwd=ROOT, stdout=asyncio.subprocess.PIPE
    )
    recorded = 0.0
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(90):  # guards a hang only: waits for the child's progress
            while recorded < KILL_AT_S:
                line = await proc.stdout.readline()
                assert line, "recording child exited early"
                recorded = json.loads(line)["duration"]
    finally:
        proc.send_signal(signal.SIGKILL)  # mid-write: the writer thread never stops encoding
        await proc.wait()
    assert proc.returncode == -signal.SIGKILL

    times, numbers, audio_s = await asyncio.to_thread(_decode, path)
    assert times, f"nothing decodes from {path.name}"
    assert times[-1] - times[0] >= 3.0, (path.name, times[0], times[-1], recorded)
    # At most ~2 s before what the child had recorded when it was killed.
    assert times[-1] + 1 / FPS >= recorded - 2.0, (path.name, times[-1], recorded)
    assert numbers == sorted(set(numbers)), numbers  # in order, no repeats
    assert audio_s >= 3.0, (path.name, audio_s)
