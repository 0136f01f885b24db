"""The web client the relay serves, in real headless Chromium (tests/chromium.py).

Two tabs of one browser, each with Chromium's fake camera and microphone, join a room through a
real relay; everything is asserted from the page's own hooks (``window.callbot``), its getStats,
and a screenshot decoded with OpenCV. Chromium runs in a network namespace of its own, so its
traffic can only reach the relay and the other tab.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from pathlib import Path
from typing import Any

import aiohttp
import cv2
import numpy as np
import pytest

from signaling_server import RunningServer, ServerSettings, start_server
from signaling_server.app import WEB_DIR

from .chromium import Browser, BrowserNet, JavaScriptError, Page

#: The issue's bar for "video flows": frames decoded from the other side.
MIN_FRAMES = 60


async def test_page_and_modules_are_served(relay: RunningServer) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(relay.http_url + "/") as response:
            assert response.status == 200
            assert response.content_type == "text/html"
            assert '<script type="module" src="/web/app.js">' in await response.text()
        scripts = sorted(path.name for path in WEB_DIR.glob("*.js"))
        assert {"app.js", "signaling.js", "peers.js", "calls.js"} <= set(scripts)
        for name in scripts:
            async with http.get(f"{relay.http_url}/web/{name}") as response:
                assert response.status == 200, name
                assert response.content_type == "text/javascript", name
        async with http.get(relay.http_url + "/web/style.css") as response:
            assert response.content_type == "text/css"
        for missing in ("/web/nope.js", "/web/app.py", "/web/.hidden.js", "/web/%2E%2E%2Fapp.py"):
            async with http.get(relay.http_url + missing) as response:
                assert response.status == 404, missing


def page_url(relay: RunningServer, room: str, name: str, **extra: str) -> str:
    query = "&".join(f"{key}={value}" for key, value in {"name": name, **extra}.items())
    return f"{relay.http_url}/?room={room}&autojoin=1&{query}"


async def join_pair(
    browser: Browser, relay: RunningServer, room: str, **extra: str
) -> tuple[Page, str, Page, str]:
    """Two tabs in ``room``; returns (alice, her id, bob, his id) once both have joined."""
    alice = await browser.open(page_url(relay, room, "alice", **extra))
    bob = await browser.open(page_url(relay, room, "bob", **extra))
    alice_id = str(await alice.wait_for("window.callbot.peerId"))
    bob_id = str(await bob.wait_for("window.callbot.peerId"))
    return alice, alice_id, bob, bob_id


async def stats(page: Page, peer_id: str) -> dict[str, Any]:
    result: dict[str, Any] = await page.evaluate(f"window.callbot.stats({json.dumps(peer_id)})")
    return result


async def wait_media(page: Page, peer_id: str, *, video_index: int = 0) -> dict[str, Any]:
    """Wait until ``page`` decodes MIN_FRAMES of ``peer_id``'s video track and hears audio."""
    condition = (
        f"window.callbot.stats({json.dumps(peer_id)}).then(s => "
        f"(s.video[{video_index}]?.framesDecoded ?? 0) >= {MIN_FRAMES} && "
        f"s.audio.some(a => a.totalAudioEnergy > 0) && s)"
    )
    result: dict[str, Any] = await page.wait_for(condition, timeout_s=30)
    return result


def assert_quiet(*pages: Page) -> None:
    for page in pages:
        assert page.errors == [], page.errors


async def assert_no_page_errors(*pages: Page) -> None:
    for page in pages:
        assert await page.evaluate("window.callbot.errors") == []
    assert_quiet(*pages)


async def screenshot_tile(page: Page, peer_id: str, path: Path) -> np.ndarray[Any, Any]:
    """The pixels of the remote tile's (first) video, cut from a PNG screenshot of the page."""
    selector = json.dumps(f'[data-peer-id="{peer_id}"] video')
    # The element must be playing, not merely attached, before its pixels mean anything.
    await page.wait_for(
        f"(v => v && v.readyState >= 2 && !v.paused && v.currentTime > 0.5)"
        f"(document.querySelector({selector}))"
    )
    box = await page.evaluate(
        f"(r => [r.x, r.y, r.width, r.height, devicePixelRatio])"
        f"(document.querySelector({selector}).getBoundingClientRect())"
    )
    png = await page.screenshot()
    await asyncio.to_thread(path.write_bytes, png)
    image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None, "the screenshot is not a PNG"
    x, y, w, h, scale = (float(v) for v in box)
    top, left = int(y * scale), int(x * scale)
    tile: np.ndarray[Any, Any] = image[top : top + int(h * scale), left : left + int(w * scale)]
    assert tile.size > 0, f"tile box {box} outside the {image.shape} screenshot"
    return tile


async def test_two_pages_see_and_hear_each_other_chat_and_call(
    browser: Browser, net_relay: RunningServer, tmp_path: Path
) -> None:
    alice, alice_id, bob, bob_id = await join_pair(browser, net_relay, "web-room")

    # Media both ways: the fake camera's frames decoded, the fake microphone's beeps heard.
    at_alice = await wait_media(alice, bob_id)
    at_bob = await wait_media(bob, alice_id)
    for received in (at_alice, at_bob):
        video = received["video"][0]
        assert (video["frameWidth"], video["frameHeight"]) == (640, 480), video
    assert await alice.evaluate("window.callbot.peers()") == [
        {"peerId": bob_id, "name": "bob", "connectionState": "connected", "tracks": 2}
    ]

    # The remote tile is drawn: the fake camera's picture, neither black nor uniform.
    tile = await screenshot_tile(alice, bob_id, tmp_path / "alice.png")
    assert float(tile.std()) > 20.0, f"remote tile looks uniform (std {tile.std():.1f})"
    assert float(tile.mean()) > 30.0, f"remote tile looks black (mean {tile.mean():.1f})"

    # Data channel, each way.
    await alice.wait_for("window.callbot.peers()[0]?.connectionState === 'connected'")
    assert at_alice["dataChannelState"] == "open"
    await alice.evaluate(f"window.callbot.send({json.dumps(bob_id)}, 'hello bob')")
    await bob.evaluate(f"window.callbot.send({json.dumps(alice_id)}, 'hi alice ✓')")
    assert await bob.wait_for("window.callbot.messages.length > 0 && window.callbot.messages") == [
        {"from": alice_id, "data": "hello bob"}
    ]
    assert await alice.wait_for(
        "window.callbot.messages.length > 0 && window.callbot.messages"
    ) == [{"from": bob_id, "data": "hi alice ✓"}]

    # A call: ring, answer, hang up.
    call_id = await alice.evaluate(f"window.callbot.startCall([{json.dumps(bob_id)}])")
    ringing = f"window.callbot.calls().find(c => c.callId === {json.dumps(call_id)})"
    await bob.wait_for(f"{ringing}?.status === 'ringing'")
    await bob.wait_for(
        f"!!document.querySelector('#incoming [data-call-id={json.dumps(call_id)}]')"
    )
    assert await bob.evaluate(f"window.callbot.accept({json.dumps(call_id)})") == "active"
    for page in (alice, bob):
        await page.wait_for(f"{ringing}?.status === 'active'")
    assert await alice.evaluate("window.callbot.hangUp()") == "ended"
    for page in (alice, bob):
        assert await page.wait_for(f"{ringing}?.status === 'ended' && {ringing}.reason") == "ended"

    # A call declined.
    call_id = await bob.evaluate(f"window.callbot.startCall([{json.dumps(alice_id)}])")
    declined = f"window.callbot.calls().find(c => c.callId === {json.dumps(call_id)})"
    await alice.wait_for(f"{declined}?.status === 'ringing'")
    await alice.evaluate(f"window.callbot.decline({json.dumps(call_id)})")
    for page in (alice, bob):
        assert await page.wait_for(f"{declined}?.reason") == "all_declined"

    # Media still flows after all that, and nothing went wrong on either page.
    assert (await stats(bob, alice_id))["video"][0]["framesDecoded"] > at_bob["video"][0][
        "framesDecoded"
    ]
    await assert_no_page_errors(alice, bob)


async def test_a_track_added_mid_call_renegotiates_both_ways(
    browser: Browser, net_relay: RunningServer
) -> None:
    alice, alice_id, bob, bob_id = await join_pair(browser, net_relay, "reneg", codec="H264")
    await wait_media(alice, bob_id)
    await wait_media(bob, alice_id)

    # The smaller id (impolite) adds a camera, then the larger (polite), then both at once
    # (glare: perfect negotiation must settle it without losing either track).
    first, first_id, second, second_id = (
        (alice, alice_id, bob, bob_id) if alice_id < bob_id else (bob, bob_id, alice, alice_id)
    )
    await first.evaluate("window.callbot.addVideoTrack()")
    await wait_media(second, first_id, video_index=1)
    await second.evaluate("window.callbot.addVideoTrack()")
    await wait_media(first, second_id, video_index=1)
    await asyncio.gather(
        first.evaluate("window.callbot.addVideoTrack()"),
        second.evaluate("window.callbot.addVideoTrack()"),
    )
    await wait_media(second, first_id, video_index=2)
    await wait_media(first, second_id, video_index=2)

    for page, other in ((first, second_id), (second, first_id)):
        peer = await page.wait_for(
            "window.callbot.peers()[0]?.tracks === 4 && window.callbot.peers()[0]"
        )
        assert peer["connectionState"] == "connected"
        received = await stats(page, other)
        assert [v["codec"] for v in received["video"]] == ["H264"] * 3
        assert await page.evaluate("document.querySelectorAll('.remote video').length") == 3
    await assert_no_page_errors(alice, bob)


async def test_call_mode_links_only_during_a_call(
    browser: Browser, net_relay: RunningServer
) -> None:
    alice, alice_id, bob, bob_id = await join_pair(browser, net_relay, "calls", mode="call")
    # In the room together, but no media link until a call is active.
    assert await alice.evaluate("window.callbot.peers()") == []
    call_id = json.dumps(await alice.evaluate("window.callbot.startCall()"))
    await bob.wait_for(f"window.callbot.calls().some(c => c.callId === {call_id})")
    assert await alice.evaluate("window.callbot.peers()") == []
    await bob.evaluate(f"window.callbot.accept({call_id})")
    await wait_media(alice, bob_id)
    await wait_media(bob, alice_id)
    await bob.evaluate("window.callbot.hangUp()")
    for page in (alice, bob):
        await page.wait_for("window.callbot.peers().length === 0")
        await page.wait_for("document.querySelectorAll('.remote').length === 0")
    await assert_no_page_errors(alice, bob)

    # A command the relay refuses shows in the page and in window.callbot.errors.
    with pytest.raises(JavaScriptError, match="unknown_peer"):
        await alice.evaluate("window.callbot.startCall(['p_000000000000'])")
    errors = await alice.wait_for("window.callbot.errors.length > 0 && window.callbot.errors")
    assert len(errors) == 1
    assert "unknown_peer" in errors[0]
    assert "unknown_peer" in await alice.evaluate("document.querySelector('#errors').textContent")
    assert_quiet(alice)


async def test_pages_resume_after_a_relay_restart(browser_net: BrowserNet, tmp_path: Path) -> None:
    """The relay goes away (1001) and comes back on the same address: both pages reconnect,
    resume their peer ids with their resume tokens, and their media link never stops; the call
    they were in, which the relay (no database) forgot, ends for them as relay_restart."""
    settings = ServerSettings(host=browser_net.host_addr, port=0, secret="s" * 32)
    async with contextlib.AsyncExitStack() as stack:
        first = contextlib.AsyncExitStack()
        stack.push_async_callback(first.aclose)
        relay = await first.enter_async_context(start_server(settings))
        chromium = await stack.enter_async_context(
            await Browser.launch(
                netns=browser_net.netns,
                user_data_dir=tmp_path / "chromium-profile",
                secure_origin=relay.http_url,
            )
        )
        alice, alice_id, bob, bob_id = await join_pair(chromium, relay, "resume")
        before = await wait_media(bob, alice_id)
        # An answered call, which the restarted relay (no database) will not know.
        call_id = await alice.evaluate(f"window.callbot.startCall([{json.dumps(bob_id)}])")
        call = f"window.callbot.calls().find(c => c.callId === {json.dumps(call_id)})"
        await bob.wait_for(f"{call}?.status === 'ringing'")
        assert await bob.evaluate(f"window.callbot.accept({json.dumps(call_id)})") == "active"
        for page in (alice, bob):
            await page.wait_for(f"{call}?.status === 'active'")
        # A rebuilt link would show in a new tile (and video element): mark the current ones.
        mark = "document.querySelector('.remote video').dataset.mark"
        for page in (alice, bob):
            await page.evaluate(f"{mark} = 'before'")

        await first.aclose()  # every socket closed with 1001, the port free again
        relay_state = "document.querySelector('#relay-state').dataset.state"
        for page in (alice, bob):
            await page.wait_for(f"{relay_state} === 'reconnecting'")
        again = dataclasses.replace(settings, port=relay.port)
        await stack.enter_async_context(start_server(again))
        for page, peer_id in ((alice, alice_id), (bob, bob_id)):
            await page.wait_for(f"{relay_state} === 'connected'", timeout_s=30)
            assert await page.evaluate("window.callbot.peerId") == peer_id

        # The same link carried on: frames keep counting up from where they were.
        frames = before["video"][0]["framesDecoded"] + MIN_FRAMES
        await bob.wait_for(
            f"window.callbot.stats({json.dumps(alice_id)})"
            f".then(s => s.video[0].framesDecoded >= {frames})"
        )
        for page, other, name in ((alice, bob_id, "bob"), (bob, alice_id, "alice")):
            assert await page.evaluate("window.callbot.peers()") == [
                {"peerId": other, "name": name, "connectionState": "connected", "tracks": 2}
            ]
            assert await page.evaluate(mark) == "before"
            # The forgotten call is over for the page too (not left active for ever).
            assert await page.wait_for(f"{call}?.status === 'ended' && {call}.reason") == (
                "relay_restart"
            )
        await assert_no_page_errors(alice, bob)
