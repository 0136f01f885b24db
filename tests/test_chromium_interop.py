"""callbot's Python participant against real Chromium (the relay's own page as the other end).

Chromium runs in a network namespace of its own (tests/chromium.py); the relay and the Python
participant sit on the root side of the veth pair, and the participant's host-candidate policy
offers only that address. Who offers first is decided by the peer ids (the smaller offers), so
each direction is obtained by joining the bot and opening the page again until the ids fall the
right way.

Both ends assert: the Python side decodes Chromium's fake camera (640x480 on early frames, before
Chromium lowers its resolution for aiortc's bandwidth estimate) and hears its fake microphone;
Chromium's getStats shows frames decoded from the Python side, with the codec asked for, and
audio energy. Then a data-channel message each way, and a track added mid-call by each side.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
import pytest

from media import PatternVideoTrack, ToneAudioTrack, read_stamp
from peer import Participant, ParticipantConfig, RemoteTrack
from signaling_server import RunningServer

from .chromium import Browser, BrowserNet, Page
from .peerutil import tracks_from

MIN_FRAMES = 60
FAKE_CAMERA = (640, 480)


def page_url(relay: RunningServer, name: str, **extra: str) -> str:
    query = "&".join(f"{key}={value}" for key, value in {"name": name, **extra}.items())
    return f"{relay.http_url}/?room=interop&autojoin=1&{query}"


def bot_config(net: BrowserNet, relay: RunningServer, codec: str | None) -> ParticipantConfig:
    return ParticipantConfig(
        room="interop",
        server_url=relay.ws_url,
        name="bot",
        ice_addresses=(net.host_addr,),
        video_codecs=(codec,) if codec else (),
    )


@asynccontextmanager
async def bot(
    net: BrowserNet, relay: RunningServer, *, video: bool, codec: str | None = None
) -> AsyncIterator[Participant]:
    pattern = PatternVideoTrack(width=320, height=240, label="bot") if video else None
    tone = ToneAudioTrack(frequency=440)
    try:
        async with Participant(bot_config(net, relay, codec), video=pattern, audio=tone) as me:
            yield me
    finally:
        tone.stop()
        if pattern is not None:
            pattern.stop()


@asynccontextmanager
async def bot_and_page(
    browser: Browser,
    net: BrowserNet,
    relay: RunningServer,
    *,
    bot_offers: bool,
    video: bool,
    codec: str | None = None,
) -> AsyncIterator[tuple[Participant, Page, str]]:
    """A bot and a joined page whose ids make the bot the first offerer (or not).

    Ids are random, so both are made again until they fall the right way (each try is a coin
    flip; re-rolling only one side could be stuck behind an id like ``p_0...``).
    """
    extra = {"codec": codec} if codec else {}
    for _ in range(20):
        async with bot(net, relay, video=video, codec=codec) as me:
            page = await browser.open(page_url(relay, "chrome", **extra))
            page_id = str(await page.wait_for("window.callbot.peerId"))
            if (me.peer_id < page_id) == bot_offers:
                yield me, page, page_id
                return
            await page.close()
    raise AssertionError("20 id pairs in a row fell the wrong way")


async def decode_video(track: RemoteTrack, count: int) -> list[tuple[int, int]]:
    """Sizes of the next ``count`` decoded frames."""
    sizes: list[tuple[int, int]] = []
    async with asyncio.timeout(40):
        while len(sizes) < count:
            frame = await track.recv()
            sizes.append((frame.width, frame.height))
    return sizes


async def audio_peak(track: RemoteTrack, seconds: float) -> float:
    """The loudest sample in ``seconds`` of audio (full scale = 1.0)."""
    peak, heard = 0.0, 0.0
    async with asyncio.timeout(seconds + 20):
        while heard < seconds:
            frame = await track.recv()
            samples = frame.to_ndarray()
            peak = max(peak, float(np.abs(samples).max()) / 32768.0)
            heard += frame.samples / frame.sample_rate
    return peak


async def page_stats(page: Page, peer_id: str) -> dict[str, Any]:
    result: dict[str, Any] = await page.evaluate(f"window.callbot.stats({json.dumps(peer_id)})")
    return result


async def wait_page_video(page: Page, peer_id: str, index: int = 0) -> dict[str, Any]:
    """Wait until the page decoded MIN_FRAMES of the peer's ``index``-th video and heard audio."""
    condition = (
        f"window.callbot.stats({json.dumps(peer_id)}).then(s => "
        f"(s.video[{index}]?.framesDecoded ?? 0) >= {MIN_FRAMES} && "
        f"s.audio.some(a => a.totalAudioEnergy > 0) && s)"
    )
    result: dict[str, Any] = await page.wait_for(condition, timeout_s=40)
    return result


async def assert_page_clean(page: Page) -> None:
    assert await page.evaluate("window.callbot.errors") == []
    assert page.errors == [], page.errors


@pytest.mark.parametrize("codec", ["VP8", "H264"])
@pytest.mark.parametrize("bot_offers", [True, False], ids=["bot-offers", "chrome-offers"])
async def test_media_both_ways_and_a_data_channel(
    browser: Browser,
    browser_net: BrowserNet,
    net_relay: RunningServer,
    codec: str,
    bot_offers: bool,
) -> None:
    async with bot_and_page(
        browser, browser_net, net_relay, bot_offers=bot_offers, video=True, codec=codec
    ) as (me, page, chrome_id):
        await me.wait_connected(1)
        link = me.link(chrome_id)
        assert link is not None and link.offerer == bot_offers

        # Python decodes Chromium's fake camera at its own resolution, and hears its beeps.
        (video,) = await tracks_from(me, chrome_id, "video", 1)
        sizes = await decode_video(video, MIN_FRAMES)
        assert sizes[0] == FAKE_CAMERA, sizes[:5]
        assert max(sizes) == FAKE_CAMERA
        (audio,) = await tracks_from(me, chrome_id, "audio", 1)
        assert await audio_peak(audio, 2.0) > 0.01

        # Chromium decodes ours, with the codec asked for, and hears the tone.
        stats = await wait_page_video(page, me.peer_id)
        assert stats["video"][0]["codec"] == codec, stats
        assert (stats["video"][0]["frameWidth"], stats["video"][0]["frameHeight"]) == (320, 240)
        assert {o["codec"] for o in stats["outboundVideo"]} == {codec}, stats

        # A data-channel message each way.
        assert await me.send_data("hello chrome", to=chrome_id) == 1
        expected = [{"from": me.peer_id, "data": "hello chrome"}]
        assert await page.wait_for("window.callbot.messages.length && window.callbot.messages") == (
            expected
        )
        await page.evaluate(f"window.callbot.send({json.dumps(me.peer_id)}, 'hello bot')")
        async with asyncio.timeout(10):
            message = await anext(aiter(me.data_messages()))
        assert (message.peer_id, message.data) == (chrome_id, "hello bot")
        await assert_page_clean(page)


@pytest.mark.parametrize("bot_offers", [True, False], ids=["bot-offers", "chrome-offers"])
async def test_each_side_adds_a_track_mid_call(
    browser: Browser, browser_net: BrowserNet, net_relay: RunningServer, bot_offers: bool
) -> None:
    """The bot starts audio-only. With ``chrome-offers`` the bot answered first, so its own
    offer later is the one aiortc renumbers (issues 686/1079) unless peer.renegotiation keeps
    the negotiated payload types and extension ids."""
    async with bot_and_page(
        browser, browser_net, net_relay, bot_offers=bot_offers, video=False
    ) as (me, page, chrome_id):
        await me.wait_connected(1)
        link = me.link(chrome_id)
        assert link is not None
        (camera,) = await tracks_from(me, chrome_id, "video", 1)
        await decode_video(camera, 10)

        # The bot adds video: Chromium sees a new track and decodes it.
        pattern = PatternVideoTrack(width=320, height=240, label="late", seed=3)
        try:
            await me.add_track(pattern)
            stats = await wait_page_video(page, me.peer_id)
            assert (stats["video"][0]["frameWidth"], stats["video"][0]["frameHeight"]) == (
                320,
                240,
            )

            # Chromium adds a second camera: the bot gets a second video track from it.
            await page.evaluate("window.callbot.addVideoTrack()")
            first, second = await tracks_from(me, chrome_id, "video", 2)
            assert first is camera
            assert len(await decode_video(second, MIN_FRAMES)) == MIN_FRAMES

            # The bot adds a second video: a new m-line of its own, on the bundled transport.
            extra = PatternVideoTrack(width=160, height=120, label="extra", seed=4)
            try:
                await me.add_track(extra)
                stats = await wait_page_video(page, me.peer_id, index=1)
                assert {(v["frameWidth"], v["frameHeight"]) for v in stats["video"]} == {
                    (320, 240),
                    (160, 120),
                }
            finally:
                extra.stop()

            # Same connection throughout, and the first camera still plays.
            assert me.link(chrome_id) is link and link.state == "connected"
            assert link.negotiations >= 4
            assert len(await decode_video(camera, 10)) == 10
            before = (await page_stats(page, me.peer_id))["video"][0]["framesDecoded"]
            await page.wait_for(
                f"window.callbot.stats({json.dumps(me.peer_id)})"
                f".then(s => s.video[0].framesDecoded > {before} + 10)"
            )
            (audio,) = await tracks_from(me, chrome_id, "audio", 1)
            assert await audio_peak(audio, 1.0) > 0.01
        finally:
            pattern.stop()
        await assert_page_clean(page)


async def test_stamps_survive_the_trip_through_chromium_and_back(
    browser: Browser, browser_net: BrowserNet, net_relay: RunningServer
) -> None:
    """Two bots in a room with a Chromium page: the page decodes both bots' stamped patterns,
    and each bot reads the other's stamps (bot-to-bot links are unaffected by the browser)."""
    async with (
        bot(browser_net, net_relay, video=True) as first,
        bot(browser_net, net_relay, video=True) as second,
    ):
        page = await browser.open(page_url(net_relay, "chrome"))
        chrome_id = str(await page.wait_for("window.callbot.peerId"))
        await first.wait_connected(2)
        await second.wait_connected(2)
        for me in (first, second):
            await wait_page_video(page, me.peer_id)
        (video,) = await tracks_from(second, first.peer_id, "video", 1)
        stamps = 0
        async with asyncio.timeout(30):
            while stamps < 10:
                stamps += await asyncio.to_thread(read_stamp, await video.recv()) is not None
        assert chrome_id not in (first.peer_id, second.peer_id)
        await assert_page_clean(page)
