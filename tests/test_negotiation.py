"""One PeerLink against a hand-driven aiortc peer: trickle ICE in both roles, hostile SDP, and
candidates the host-candidate policy refuses. No relay: the test carries the messages itself,
so it can choose who offers and when each candidate arrives."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription

from media import PatternVideoTrack, read_stamp
from peer.config import LOOPBACK_ONLY
from peer.ice import host_candidate_policy, rtc_configuration
from peer.negotiation import LinkOptions, PeerLink
from peer.tracks import RemoteTrack, TrackPump
from signaling_server.protocol import (
    Answer,
    ClientMessage,
    Offer,
    PeerInfo,
    RelayedAnswer,
    RelayedIceCandidate,
    RelayedOffer,
)

from .netutil import own_udp_sockets

MANUAL = PeerInfo(peer_id="p_m", name="manual")
MDNS_LINE = "a=candidate:9 1 udp 2130706431 1f0e7a2b-3c4d.local 40000 typ host"


class Harness:
    """A link (local id chosen so that it does or does not offer) and a manual remote pc."""

    def __init__(self, *, link_offers: bool) -> None:
        self.sent: asyncio.Queue[ClientMessage] = asyncio.Queue()
        self.tracks: list[RemoteTrack] = []
        self.video = PatternVideoTrack(width=160, height=120, fps=15)
        self.pump = TrackPump(self.video, capacity=2)
        options = LinkOptions(
            local_peer_id="p_a" if link_offers else "p_z",
            ice_servers=(),
            ice_addresses=LOOPBACK_ONLY,
            receive=True,
            video_buffer_frames=4,
            audio_buffer_frames=8,
            negotiation_timeout_s=20,
        )
        self.link = PeerLink(
            MANUAL,
            options=options,
            local_media=[self.pump],
            send=self._send,
            on_track=self.tracks.append,
            on_change=lambda: None,
        )
        self.remote = RTCPeerConnection(rtc_configuration([]))
        self.remote_tracks: asyncio.Queue[Any] = asyncio.Queue()
        self.remote.on("track", self.remote_tracks.put_nowait)

    async def _send(self, message: ClientMessage) -> None:
        self.sent.put_nowait(message)

    async def set_remote_local(self, description: RTCSessionDescription) -> None:
        with host_candidate_policy(LOOPBACK_ONLY):
            await self.remote.setLocalDescription(description)

    async def aclose(self) -> None:
        await self.link.aclose()
        await self.pump.aclose()
        await self.remote.close()
        self.video.stop()


@pytest.fixture
async def harness(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    h = Harness(link_offers=request.param)
    try:
        yield h
    finally:
        await h.aclose()


def split_candidates(sdp: str) -> tuple[str, list[tuple[str, str]]]:
    """The SDP without its candidates, and the candidates as (mid, line without 'a=')."""
    kept, found, mid = [], [], ""
    for line in sdp.splitlines():
        if line.startswith("a=mid:"):
            mid = line[len("a=mid:") :]
        if line.startswith("a=candidate:"):
            found.append((mid, line[2:]))
        elif line != "a=end-of-candidates":
            kept.append(line)
    return "\r\n".join(kept) + "\r\n", found


def trickle(h: Harness, candidates: list[tuple[str, str]]) -> None:
    for mid, line in candidates:
        h.link.deliver(RelayedIceCandidate(from_peer_id="p_m", candidate=line, sdp_mid=mid))


async def next_sent(h: Harness) -> ClientMessage:
    async with asyncio.timeout(10):
        return await h.sent.get()


async def assert_media_flows(h: Harness) -> None:
    async with asyncio.timeout(20):
        track = await h.remote_tracks.get()
        stamps = []
        while len(stamps) < 5:
            stamp = await asyncio.to_thread(read_stamp, await track.recv())
            if stamp is not None:
                stamps.append(stamp.frame_number)
    assert stamps == sorted(stamps)
    assert h.link.state == "connected" and h.link.failed is None


@pytest.mark.parametrize("harness", [True], indirect=True, ids=["link-offers"])
async def test_trickled_candidates_before_the_answer_are_applied(harness: Harness) -> None:
    h = harness
    h.remote.addTransceiver("video", direction="recvonly")  # m-lines come from the link's offer
    h.link.start()
    offer = await next_sent(h)
    assert isinstance(offer, Offer)
    await h.remote.setRemoteDescription(RTCSessionDescription(offer.sdp, "offer"))
    await h.set_remote_local(await h.remote.createAnswer())
    bare, candidates = split_candidates(h.remote.localDescription.sdp)
    assert candidates
    trickle(h, candidates)  # before the answer: the link must buffer them
    h.link.deliver(RelayedAnswer(from_peer_id="p_m", sdp=bare))
    h.link.deliver(RelayedIceCandidate(from_peer_id="p_m", candidate=""))  # end of candidates
    await assert_media_flows(h)


@pytest.mark.parametrize("harness", [False], indirect=True, ids=["link-answers"])
async def test_trickled_candidates_after_the_offer_are_applied(harness: Harness) -> None:
    h = harness
    h.remote.addTransceiver("video", direction="recvonly")
    await h.set_remote_local(await h.remote.createOffer())
    bare, candidates = split_candidates(h.remote.localDescription.sdp)
    h.link.start()
    h.link.deliver(RelayedOffer(from_peer_id="p_m", sdp=bare))
    trickle(h, [(mid, "candidate:" + line.removeprefix("candidate:")) for mid, line in candidates])
    h.link.deliver(RelayedIceCandidate(from_peer_id="p_m", candidate=""))
    answer = await next_sent(h)
    assert isinstance(answer, Answer)
    await h.remote.setRemoteDescription(RTCSessionDescription(answer.sdp, "answer"))
    await assert_media_flows(h)


@pytest.mark.parametrize("harness", [False], indirect=True, ids=["link-answers"])
async def test_mdns_and_hostname_candidates_never_open_a_socket(harness: Harness) -> None:
    h = harness
    h.remote.addTransceiver("video", direction="recvonly")
    await h.set_remote_local(await h.remote.createOffer())
    sdp = h.remote.localDescription.sdp.replace("a=mid:0\r\n", f"a=mid:0\r\n{MDNS_LINE}\r\n", 1)
    assert MDNS_LINE in sdp
    h.link.start()
    h.link.deliver(RelayedOffer(from_peer_id="p_m", sdp=sdp))
    for host in ("a1b2c3.local", "example.invalid"):
        line = f"candidate:7 1 udp 2130706431 {host} 40001 typ host"
        h.link.deliver(RelayedIceCandidate(from_peer_id="p_m", candidate=line, sdp_mid="0"))
    answer = await next_sent(h)
    assert isinstance(answer, Answer)
    await h.remote.setRemoteDescription(RTCSessionDescription(answer.sdp, "answer"))
    await assert_media_flows(h)
    sockets = own_udp_sockets()
    assert all(addr == "127.0.0.1" for addr, _ in sockets), sockets


def _mutations(sdp: str) -> dict[str, str]:
    return {
        "bad-m-line": "v=0\r\nm=video abc\r\n",
        "bogus-setup": sdp.replace("a=setup:actpass", "a=setup:bogus"),
        "text-m-line": sdp + "m=text 9 UDP/TLS/RTP/SAVPF 0\r\nc=IN IP4 0.0.0.0\r\na=mid:9\r\n",
    }


@pytest.mark.parametrize("harness", [False], indirect=True, ids=["link-answers"])
@pytest.mark.parametrize("mutation", ["bad-m-line", "bogus-setup", "text-m-line"])
async def test_hostile_offer_fails_the_link_and_closing_is_clean(
    harness: Harness, mutation: str
) -> None:
    h = harness
    h.remote.addTransceiver("video", direction="recvonly")
    await h.set_remote_local(await h.remote.createOffer())
    sdp = _mutations(h.remote.localDescription.sdp)[mutation]
    assert sdp != h.remote.localDescription.sdp
    h.link.start()
    h.link.deliver(RelayedOffer(from_peer_id="p_m", sdp=sdp))
    async with asyncio.timeout(10):
        while h.link.failed is None:
            await asyncio.sleep(0.02)
    assert "offer" in str(h.link.failed)
    await h.link.aclose()  # must not raise whatever aiortc raised
    assert h.sent.empty()  # nothing was answered
