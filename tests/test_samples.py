"""Every sample runs as its Usage line says, against a real relay."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from pathlib import Path

import av

from media import PatternVideoTrack, ToneAudioTrack, fit, grid, read_stamp
from peer import Mode, Participant, ParticipantConfig
from signaling_server import RunningServer
from signaling_server.protocol import CallStatus, EndReason

SAMPLES = Path(__file__).resolve().parent.parent / "samples"


async def run_sample(*args: str, timeout: float = 60) -> str:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    async with asyncio.timeout(timeout):
        out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    return out.decode()


def test_every_sample_has_a_usage_line() -> None:
    for path in SAMPLES.glob("*.py"):
        assert "Usage: python samples/" + path.name in path.read_text(), path


async def test_local_call_sample_reports_frames_and_latency() -> None:
    out = await run_sample(str(SAMPLES / "local_call.py"), "--frames", "45")
    match = re.search(
        r"received 45 stamped frames from sender \(#(\d+)\.\.#(\d+)\) at [\d.]+ fps, "
        r"median latency -?\d+ ms",
        out,
    )
    assert match, out
    assert int(match.group(2)) - int(match.group(1)) >= 44  # distinct, increasing frames


async def test_record_room_sample_records_a_publisher(relay: RunningServer, tmp_path: Path) -> None:
    output = tmp_path / "room.mkv"
    media = (PatternVideoTrack(width=320, height=240, label="pub"), ToneAudioTrack())
    cfg = ParticipantConfig(room="s", server_url=relay.ws_url, name="pub", receive=False)
    async with Participant(cfg, video=media[0], audio=media[1]):
        out = await run_sample(str(SAMPLES / "record_room.py"), relay.ws_url, "s", str(output), "4")
    for t in media:
        t.stop()
    assert re.search(r"wrote \d+ video frames, \d+ audio frames", out), out
    with av.open(str(output)) as container:
        assert container.streams.audio
        frames = list(container.decode(video=0))
    # One publisher, aspect-fit (pillarboxed) into the single grid cell of the 16:9 canvas.
    rect = fit(320, 240, grid(1, frames[0].width, frames[0].height)[0])
    stamps = [read_stamp(f, rect) for f in frames]
    assert sum(s is not None for s in stamps) >= 10


async def test_answer_bot_sample_answers_and_records_a_call(
    relay: RunningServer, tmp_path: Path
) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(SAMPLES / "answer_bot.py"), relay.ws_url, "office", str(tmp_path),
        "300", "1", stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    video = PatternVideoTrack(width=320, height=240, label="caller")
    cfg = ParticipantConfig(room="office", server_url=relay.ws_url, name="caller", mode=Mode.CALL)
    async with Participant(cfg, video=video) as caller:
        await caller.wait_for_peers(["answer-bot"])
        call = await caller.start_call()
        try:
            await call.wait_for(CallStatus.ACTIVE)
        except TimeoutError:
            proc.kill()
            out, err = await proc.communicate()
            raise AssertionError(f"the bot did not answer: {out.decode()}{err.decode()}") from None
        await caller.wait_connected(1)
        await asyncio.sleep(3)
        await call.leave()
        # The bot notices it is alone and leaves too, which ends the call.
        assert (await call.wait_ended(timeout_s=10)).reason is EndReason.LAST_LEFT
    video.stop()
    async with asyncio.timeout(60):  # it exits after its one call (MAX_CALLS=1)
        out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    assert f"answered call {call.call_id}" in out.decode()
    assert f"call {call.call_id} ended (last_left)" in out.decode()
    recording = tmp_path / f"{call.call_id}.mkv"
    with av.open(str(recording)) as container:
        frames = list(container.decode(video=0))
    rect = fit(320, 240, grid(1, frames[0].width, frames[0].height)[0])
    assert sum(read_stamp(f, rect) is not None for f in frames) >= 10


async def test_answer_bot_sample_skips_a_call_that_ended_while_it_was_busy(
    relay: RunningServer, tmp_path: Path
) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(SAMPLES / "answer_bot.py"), relay.ws_url, "desk", str(tmp_path),
        "300", "2", stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    video = PatternVideoTrack(width=160, height=120, label="caller")
    first = ParticipantConfig(room="desk", server_url=relay.ws_url, name="c1", mode=Mode.CALL)
    second = ParticipantConfig(room="desk", server_url=relay.ws_url, name="c2", mode=Mode.CALL)
    try:
        async with Participant(first, video=video) as c1, Participant(second) as c2:
            bot = (await c1.wait_for_peers(["answer-bot"]))[0].peer_id
            busy = await c1.start_call([bot])
            await busy.wait_for(CallStatus.ACTIVE, timeout_s=60)
            # c2 rings the busy bot, then gives up before the bot gets to it.
            missed = await c2.start_call([bot])
            await missed.end()
            assert (await missed.wait_ended()).reason is EndReason.CANCELLED
            await busy.leave()  # the bot is alone, leaves, and turns to the calls that rang
            assert (await busy.wait_ended(timeout_s=30)).reason is EndReason.LAST_LEFT
            later = await c2.start_call([bot])
            await later.wait_for(CallStatus.ACTIVE, timeout_s=60)
            await later.leave()
            await later.wait_ended(timeout_s=30)
    except BaseException:
        proc.kill()
        raise
    finally:
        video.stop()
        async with asyncio.timeout(60):  # it exits after its two answered calls (MAX_CALLS=2)
            out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    text = out.decode()
    assert f"missed call {missed.call_id} (cancelled)" in text, text
    assert f"answered call {busy.call_id}" in text and f"answered call {later.call_id}" in text


async def test_chat_bot_sample_echoes_adds_video_and_leaves(relay: RunningServer) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(SAMPLES / "chat_bot.py"), relay.ws_url, "chat", "120",
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    cfg = ParticipantConfig(room="chat", server_url=relay.ws_url, name="human")
    try:
        async with Participant(cfg) as me:
            await me.wait_for_peers(["chat-bot"])
            await me.wait_connected(1)
            replies = aiter(me.data_messages())
            await me.send_data("hello", to="chat-bot")
            async with asyncio.timeout(20):
                assert (await anext(replies)).data == "echo: hello"
                await me.send_data("video", to="chat-bot")
                assert (await anext(replies)).data == "video on"
                async for track in me.tracks():
                    if track.kind == "video":
                        break
                assert await track.recv() is not None
                await me.send_data("video", to="chat-bot")
                assert (await anext(replies)).data == "video is on already"
                await me.send_data("bye", to="chat-bot")
                assert (await anext(replies)).data == "bye!"
    except BaseException:
        proc.kill()  # the failure is the news, not the bot's 120 s budget
        raise
    finally:
        async with asyncio.timeout(30):
            out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    assert "human: hello" in out.decode() and "chat-bot left" in out.decode()
