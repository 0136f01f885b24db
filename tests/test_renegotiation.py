"""Data channels, codec choice and mid-call renegotiation between real participants.

The payload-type/extension-id repair (``peer.renegotiation.keep_mapping``) is also checked on a
bare peer connection that answered an offer numbered the way Chromium numbers things, since two
aiortc peers share the same defaults and would never show the bug.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription

from media import PatternVideoTrack, ToneAudioTrack, read_stamp
from peer import ConfigError, DataMessage, Participant, ParticipantConfig, RemoteTrack
from peer.ice import rtc_configuration
from peer.renegotiation import ice_ufrag, keep_mapping, negotiated_mapping, share_bundle_transport
from signaling_server import RunningServer

from .peerutil import tracks_from


def config(relay: RunningServer, name: str, **kw: object) -> ParticipantConfig:
    return ParticipantConfig(room="reneg", server_url=relay.ws_url, name=name, **kw)  # type: ignore[arg-type]


async def stamped_frames(track: RemoteTrack, count: int, label: str | None = None) -> int:
    """Read until ``count`` frames carried a readable stamp (of ``label``'s pattern, if given)."""
    seen = 0
    async with asyncio.timeout(30):
        while seen < count:
            frame = await track.recv()
            stamp = await asyncio.to_thread(read_stamp, frame)
            if stamp is not None:
                seen += 1
    return seen


def payload_types(sdp: str) -> dict[str, list[str]]:
    """mid -> the payload types of its m-line, in order."""
    out: dict[str, list[str]] = {}
    fmt: list[str] = []
    for line in sdp.splitlines():
        if line.startswith("m="):
            fmt = line.split()[3:]
        elif line.startswith("a=mid:"):
            out[line.removeprefix("a=mid:")] = fmt
    return out


@asynccontextmanager
async def pair(
    relay: RunningServer, **kw: object
) -> AsyncIterator[tuple[Participant, Participant]]:
    tones = [ToneAudioTrack(frequency=440), ToneAudioTrack(frequency=660)]
    async with (
        Participant(config(relay, "alice", **kw), audio=tones[0]) as alice,
        Participant(config(relay, "bob", **kw), audio=tones[1]) as bob,
    ):
        await alice.wait_connected(1)
        await bob.wait_connected(1)
        yield alice, bob


async def test_data_channel_carries_text_and_bytes_both_ways(relay: RunningServer) -> None:
    async with pair(relay) as (alice, bob):
        assert await alice.send_data("hello bob", to="bob") == 1
        assert await bob.send_data(b"\x00\x01binary", to=alice.peer_id) == 1
        async with asyncio.timeout(10):
            got_bob = await anext(aiter(bob.data_messages()))
            got_alice = await anext(aiter(alice.data_messages()))
        assert got_bob == DataMessage(alice.peer_id, "alice", "hello bob")
        assert got_alice == DataMessage(bob.peer_id, "bob", b"\x00\x01binary")
        assert await alice.send_data("to all") == 1  # broadcast: every open channel
        async with asyncio.timeout(10):
            assert (await anext(aiter(bob.data_messages()))).data == "to all"


async def test_send_data_to_an_unknown_peer_is_a_clear_error(relay: RunningServer) -> None:
    async with pair(relay) as (alice, _bob):
        with pytest.raises(Exception, match="no media link to 'carol'"):
            await alice.send_data("x", to="carol")


def test_unknown_video_codec_is_refused_with_the_choices() -> None:
    with pytest.raises(ConfigError, match=r"'AV2' is not supported \(choose from VP8, H264"):
        ParticipantConfig(room="r", video_codecs=("AV2",))


@pytest.mark.parametrize("codec", ["VP8", "H264"])
async def test_video_codec_preference_is_negotiated_and_decodes(
    relay: RunningServer, codec: str
) -> None:
    video = PatternVideoTrack(width=320, height=240, label="alice", seed=1)
    async with (
        Participant(config(relay, "alice", video_codecs=(codec,)), video=video) as alice,
        Participant(config(relay, "bob", video_codecs=(codec,))) as bob,
    ):
        await bob.wait_connected(1)
        (track,) = await tracks_from(bob, alice.peer_id, "video", 1)
        assert await stamped_frames(track, 20) == 20
        link = bob.link(alice.peer_id)
        assert link is not None
        rtpmaps = re.findall(r"a=rtpmap:\d+ (\w+)/90000", link.pc.localDescription.sdp)
        assert rtpmaps and {r for r in rtpmaps if r != "rtx"} == {codec}


async def test_each_side_adds_a_video_track_mid_call(relay: RunningServer) -> None:
    """Starts audio-only; then each side adds video (one of them answered first, so its offer is
    the case aiortc gets wrong). The link stays the same connection and audio keeps flowing."""
    async with pair(relay) as (alice, bob):
        link_a, link_b = alice.link(bob.peer_id), bob.link(alice.peer_id)
        assert link_a is not None and link_b is not None
        before = payload_types(link_a.pc.localDescription.sdp)
        ufrag = ice_ufrag(link_a.pc.localDescription.sdp)

        await alice.add_track(PatternVideoTrack(width=320, height=240, label="alice", seed=1))
        (from_alice,) = await tracks_from(bob, alice.peer_id, "video", 1)
        assert await stamped_frames(from_alice, 15) == 15

        await bob.add_track(PatternVideoTrack(width=320, height=240, label="bob", seed=2))
        (from_bob,) = await tracks_from(alice, bob.peer_id, "video", 1)
        assert await stamped_frames(from_bob, 15) == 15

        # Same connections, same ICE session, payload types of the first m-lines unchanged.
        assert alice.link(bob.peer_id) is link_a and bob.link(alice.peer_id) is link_b
        assert ice_ufrag(link_a.pc.localDescription.sdp) == ufrag
        after = payload_types(link_a.pc.localDescription.sdp)
        assert all(after[mid] == pts for mid, pts in before.items())
        assert link_a.negotiations >= 2 and link_b.negotiations >= 2
        # The first video track keeps going after the second renegotiation.
        assert await stamped_frames(from_alice, 10) == 10
        (audio,) = await tracks_from(alice, bob.peer_id, "audio", 1)
        async with asyncio.timeout(10):
            await audio.recv()


async def test_a_second_video_track_gets_a_new_m_line_on_the_bundle(relay: RunningServer) -> None:
    first = PatternVideoTrack(width=320, height=240, label="one", seed=1)
    async with (
        Participant(config(relay, "alice"), video=first) as alice,
        Participant(config(relay, "bob")) as bob,
    ):
        await alice.wait_connected(1)
        await bob.wait_connected(1)
        await alice.add_track(PatternVideoTrack(width=160, height=120, label="two", seed=2))
        one, two = await tracks_from(bob, alice.peer_id, "video", 2)
        assert await stamped_frames(two, 10) == 10
        frame = await two.recv()
        assert (frame.width, frame.height) == (160, 120)
        assert (await one.recv()).width == 320
        link = alice.link(bob.peer_id)
        assert link is not None and link.state == "connected"
        sdp = link.pc.localDescription.sdp
        assert sdp.count("m=video") == 2
        assert len(set(re.findall(r"a=ice-ufrag:(\S+)", sdp))) == 1  # one bundled transport


async def test_glare_both_sides_add_a_track_at_once(
    relay: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Both offers are sent before either is read (each link handles its inbox in order), so
    both sides see glare: the smaller id keeps its offer, the larger rolls back and re-offers."""
    caplog.set_level(logging.INFO, logger="peer.negotiation")
    async with pair(relay) as (alice, bob):
        await asyncio.gather(
            alice.add_track(PatternVideoTrack(width=320, height=240, label="a", seed=1)),
            bob.add_track(PatternVideoTrack(width=320, height=240, label="b", seed=2)),
        )
        (from_alice,) = await tracks_from(bob, alice.peer_id, "video", 1)
        (from_bob,) = await tracks_from(alice, bob.peer_id, "video", 1)
        assert await stamped_frames(from_alice, 10) == 10
        assert await stamped_frames(from_bob, 10) == 10
    glare = sorted(r.getMessage().split(":")[1] for r in caplog.records if "glare" in r.message)
    assert glare == [" keeping our offer", " rolling back our offer"]


def _foreign_numbering(sdp: str) -> str:
    """An aiortc offer renumbered like Chromium's: other payload types and extension ids."""
    pts = {"96": "111", "97": "120", "98": "121", "99": "102", "100": "103"}
    pts |= {"101": "104", "102": "105"}
    out = []
    for line in sdp.splitlines():
        if line.startswith("m="):
            head, fmt = line.split()[:3], line.split()[3:]
            line = " ".join(head + [pts.get(p, p) for p in fmt])
        else:
            line = re.sub(
                r"^(a=(?:rtpmap|fmtp|rtcp-fb):)(\d+)", lambda m: m[1] + pts.get(m[2], m[2]), line
            )
            line = re.sub(r"apt=(\d+)", lambda m: "apt=" + pts.get(m[1], m[1]), line)
            line = re.sub(r"^a=extmap:(\d+)", lambda m: f"a=extmap:{int(m[1]) + 3}", line)
        out.append(line)
    return "\r\n".join(out) + "\r\n"


async def test_a_re_offer_after_answering_keeps_the_remote_numbering() -> None:
    offerer = RTCPeerConnection(rtc_configuration(()))
    answerer = RTCPeerConnection(rtc_configuration(()))
    try:
        offerer.addTransceiver("audio", direction="sendrecv")
        offerer.addTransceiver("video", direction="sendrecv")
        offer = await offerer.createOffer()
        remote = _foreign_numbering(offer.sdp)
        await answerer.setRemoteDescription(RTCSessionDescription(remote, "offer"))
        await answerer.setLocalDescription(await answerer.createAnswer())
        assert payload_types(answerer.localDescription.sdp)["1"][:2] == ["120", "121"]

        # Without the repair, aiortc's own re-offer goes back to its defaults.
        mapping = negotiated_mapping(answerer)
        new = answerer.addTransceiver("video", direction="sendonly")
        await share_bundle_transport(answerer, new)
        reoffer = await answerer.createOffer()
        assert payload_types(reoffer.sdp)["1"][:2] == ["97", "98"]
        fixed = keep_mapping(answerer, reoffer.sdp, mapping)

        pts = payload_types(fixed)
        assert pts["0"] == payload_types(remote)["0"]
        assert pts["1"] == payload_types(remote)["1"]
        assert pts["2"] == pts["1"]  # the new video m-line borrows the video numbering
        ext_ids = set(re.findall(r"a=extmap:(\d+) (\S+)", fixed))
        assert ext_ids <= set(re.findall(r"a=extmap:(\d+) (\S+)", remote))
        assert len(set(re.findall(r"a=ice-ufrag:(\S+)", fixed))) == 1
        await answerer.setLocalDescription(RTCSessionDescription(fixed, "offer"))
        assert payload_types(answerer.localDescription.sdp)["1"][:2] == ["120", "121"]
    finally:
        await offerer.close()
        await answerer.close()
