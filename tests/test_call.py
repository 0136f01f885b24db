"""Real calls between in-process participants over the real relay on loopback."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
import av
import pytest
from aiortc.mediastreams import MediaStreamError

from media import FileSource, PatternVideoTrack, ToneAudioTrack, read_stamp
from peer import JoinRefused, Participant, ParticipantConfig, RemoteTrack
from peer.errors import ConnectError
from signaling_server import RunningServer
from signaling_server.protocol import ErrorCode

from .netutil import own_udp_sockets


def config(relay: RunningServer, name: str, room: str = "r1", **kw: object) -> ParticipantConfig:
    return ParticipantConfig(room=room, server_url=relay.ws_url, name=name, **kw)  # type: ignore[arg-type]


async def next_track(p: Participant, kind: str) -> RemoteTrack:
    async with asyncio.timeout(20):
        async for track in p.tracks():
            if track.kind == kind:
                return track
    raise AssertionError("participant closed before a track arrived")


async def test_two_participants_exchange_stamped_video_and_audio(relay: RunningServer) -> None:
    a_video = PatternVideoTrack(width=320, height=240, label="alice", seed=1)
    b_video = PatternVideoTrack(width=320, height=240, label="bob", seed=2)
    tones = [ToneAudioTrack(frequency=440), ToneAudioTrack(frequency=660)]
    async with (
        Participant(config(relay, "alice"), video=a_video, audio=tones[0]) as alice,
        Participant(config(relay, "bob"), video=b_video, audio=tones[1]) as bob,
    ):
        await alice.wait_connected(1)
        await bob.wait_connected(1)
        # Exactly one side offered: the id rule is deterministic.
        assert alice.link(bob.peer_id).offerer != bob.link(alice.peer_id).offerer  # type: ignore[union-attr]

        video = await next_track(bob, "video")
        assert video.peer_id == alice.peer_id and video.peer_name == "alice"
        numbers: list[int] = []
        async with asyncio.timeout(30):
            while len(numbers) < 60:
                frame = await video.recv()
                stamp = await asyncio.to_thread(read_stamp, frame)
                if stamp is not None:
                    numbers.append(stamp.frame_number)
        assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)

        audio = await next_track(alice, "audio")
        assert audio.peer_id == bob.peer_id
        async with asyncio.timeout(10):
            frames = [await audio.recv() for _ in range(25)]
        assert all(f.sample_rate == 48000 for f in frames)
        samples = b"".join(bytes(f.planes[0])[: f.samples * 2] for f in frames[5:])
        assert any(samples), "audio arrived but is all silence"

        # Network policy, proven from what was negotiated and what was bound.
        for p, other in ((alice, bob), (bob, alice)):
            link = p.link(other.peer_id)
            assert link is not None
            assert link.configuration.iceServers == []
            for transceiver in link.pc.getTransceivers():
                # The aioice connection that would contact STUN/TURN knows of none.
                ice = transceiver.receiver.transport.transport.iceGatherer._connection
                assert ice.stun_server is None and ice.turn_server is None
            for sdp in (link.pc.localDescription.sdp, link.pc.remoteDescription.sdp):
                candidates = [ln for ln in sdp.splitlines() if ln.startswith("a=candidate:")]
                assert candidates
                assert all(c.split()[4] == "127.0.0.1" for c in candidates), candidates
                assert all(c.split()[7] == "host" for c in candidates), candidates
        udp = own_udp_sockets()
        assert udp and all(addr == "127.0.0.1" for addr, _ in udp), udp
    for track in (a_video, b_video, *tones):
        track.stop()


async def test_remote_track_ends_when_peer_leaves(relay: RunningServer) -> None:
    video = PatternVideoTrack(width=160, height=120)
    async with Participant(config(relay, "viewer")) as viewer:
        sender = Participant(config(relay, "sender", receive=False), video=video)
        await sender.join()
        track = await next_track(viewer, "video")
        await track.recv()
        await sender.leave()

        async def read_until_end() -> None:
            while True:
                await track.recv()

        with pytest.raises(MediaStreamError):
            await asyncio.wait_for(read_until_end(), 10)
        assert sender.peer_id not in viewer.peers
    video.stop()


async def test_unreceived_media_stays_bounded(relay: RunningServer) -> None:
    video = PatternVideoTrack(width=160, height=120, fps=30)
    async with (
        Participant(config(relay, "lazy", video_buffer_frames=3)) as lazy,
        Participant(config(relay, "sender", receive=False), video=video),
    ):
        track = await next_track(lazy, "video")
        await asyncio.wait_for(track.recv(), 20)  # media flows; from now on nobody reads
        async with asyncio.timeout(20):
            while track.frames_in < 15:
                await asyncio.sleep(0.05)
        # Everything but the one frame read and the 3 the ring holds was dropped, not queued.
        assert track.frames_dropped >= track.frames_in - 1 - 3
    video.stop()


async def test_publish_only_bots_send_each_other_nothing(relay: RunningServer) -> None:
    tracks = [PatternVideoTrack(width=160, height=120, seed=i) for i in range(2)]
    async with (
        Participant(config(relay, "b1", receive=False), video=tracks[0]) as b1,
        Participant(config(relay, "b2", receive=False), video=tracks[1]) as b2,
    ):
        await b1.wait_connected(1)
        await asyncio.sleep(0.5)
        assert b1.received_tracks == []
        # Not just ignored: negotiated inactive, so no RTP crosses either way.
        link = b1.link(b2.peer_id)
        assert link is not None
        assert [t.currentDirection for t in link.pc.getTransceivers()] == ["inactive"]
        stats = await link.pc.getStats()
        inbound = [s for s in stats.values() if s.type == "inbound-rtp"]
        assert sum(s.packetsReceived for s in inbound) == 0
    for t in tracks:
        t.stop()


async def test_unreachable_relay_is_a_connect_error() -> None:
    cfg = ParticipantConfig(room="r", server_url="ws://127.0.0.1:9/ws", connect_timeout_s=3)
    with pytest.raises(ConnectError, match="cannot reach the relay"):
        async with Participant(cfg):
            pass


async def test_refused_join_carries_the_error_code() -> None:
    from signaling_server import ServerSettings, start_server

    async with start_server(ServerSettings(port=0, max_peers_per_room=1)) as small:
        async with Participant(config(small, "first")):
            with pytest.raises(JoinRefused) as refused:
                async with Participant(config(small, "second")):
                    pass
        assert refused.value.code == ErrorCode.RATE_LIMITED
        assert "full" in refused.value.message


async def test_garbage_on_the_relay_does_not_disturb_a_call(relay: RunningServer) -> None:
    media = [PatternVideoTrack(width=320, height=240, seed=i) for i in range(2)]
    async with (
        Participant(config(relay, "alice"), video=media[0]) as alice,
        Participant(config(relay, "bob"), video=media[1]) as bob,
        aiohttp.ClientSession() as session,
        session.ws_connect(relay.ws_url) as vandal,
    ):
        await bob.wait_connected(1)
        video = await next_track(bob, "video")
        await vandal.send_str('{"type":"join","room":"r1","name":"vandal"}')
        garbage = [
            "{",
            "[]",
            '{"type":"teleport"}',
            '{"type":"offer","target_peer_id":' + json.dumps(alice.peer_id) + "}",
            '{"type":"offer","target_peer_id":"p_nobody","sdp":"v=0"}',
            "x" * 300_000,
            '{"type":"join","room":"r1"}',
        ]
        codes: set[str] = set()
        before = video.frames_in
        for text in garbage * 3:
            await vandal.send_str(text)
        async with asyncio.timeout(10):
            while len(codes) < 6:
                reply = json.loads((await vandal.receive()).data)
                if reply["type"] == "error":
                    codes.add(reply["code"])
        assert codes == {
            "bad_json", "bad_message", "unknown_type", "unknown_peer", "too_large",
            "already_joined",
        }  # fmt: skip
        # The call went on: bob keeps decoding alice's stamped frames, in order.
        numbers = []
        async with asyncio.timeout(10):
            while len(numbers) < 20:
                stamp = await asyncio.to_thread(read_stamp, await video.recv())
                if stamp is not None:
                    numbers.append(stamp.frame_number)
        assert video.frames_in > before and numbers == sorted(numbers)
    for t in media:
        t.stop()


async def test_a_media_file_is_published_through_a_call(
    relay: RunningServer, tmp_path: Path
) -> None:
    path = tmp_path / "clip.mp4"
    pattern = PatternVideoTrack(width=320, height=240, fps=15)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=15)
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
        for i in range(30):
            frame = pattern.render(i)
            frame.pts = None
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    async with (
        await FileSource.open(path) as clip,
        Participant(config(relay, "player", receive=False), video=clip.video),
        Participant(config(relay, "viewer")) as viewer,
    ):
        video = await next_track(viewer, "video")
        numbers = []
        async with asyncio.timeout(20):
            while len(numbers) < 20:
                stamp = await asyncio.to_thread(read_stamp, await video.recv())
                if stamp is not None:
                    numbers.append(stamp.frame_number)
        assert set(numbers) <= set(range(30)) and len(set(numbers)) >= 10


async def test_a_broken_offer_fails_only_that_link(relay: RunningServer) -> None:
    media = PatternVideoTrack(width=160, height=120)
    async with (
        Participant(config(relay, "alice")) as alice,
        Participant(config(relay, "bob", receive=False), video=media),
        aiohttp.ClientSession() as session,
        session.ws_connect(relay.ws_url) as rogue,
    ):
        await rogue.send_str('{"type":"join","room":"r1","name":"rogue","id":"j"}')
        welcome = json.loads((await rogue.receive()).data)
        rogue_id = welcome["peer_id"]
        for kind in ("offer", "answer"):
            await rogue.send_str(
                json.dumps({"type": kind, "target_peer_id": alice.peer_id, "sdp": "v=0\r\nbad"})
            )
        async with asyncio.timeout(10):
            while (link := alice.link(rogue_id)) is None or link.failed is None:
                await asyncio.sleep(0.05)
        assert "with " + rogue_id in str(link.failed)
        # alice still gets bob's media.
        video = await next_track(alice, "video")
        async with asyncio.timeout(10):
            await video.recv()
        await alice.wait_connected(1)
    media.stop()
