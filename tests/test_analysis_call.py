"""Real calls measured with the plugin's own fixtures: a clean loopback call passes strict
thresholds; loss injected with peer.impair measurably degrades the same call."""

from __future__ import annotations

from callbot_pytest import ParticipantFactory, ProbeFactory, assert_audio, assert_video
from media.analysis import VideoSummary
from peer.impair import Impairment, impair


def degradation(clean: VideoSummary, lossy: VideoSummary) -> list[str]:
    """What got measurably worse from the clean window to the lossy one."""
    worse = []
    if lossy.frozen_ms > clean.frozen_ms + 150:
        worse.append(f"frozen {clean.frozen_ms:.0f} -> {lossy.frozen_ms:.0f} ms")
    if lossy.max_freeze_ms > max(clean.max_freeze_ms * 1.5, clean.max_freeze_ms + 100):
        worse.append(f"longest freeze {clean.max_freeze_ms:.0f} -> {lossy.max_freeze_ms:.0f} ms")
    if lossy.fps < clean.fps * 0.85:
        worse.append(f"fps {clean.fps:.1f} -> {lossy.fps:.1f}")
    clean_psnr = (clean.psnr_db or {}).get("mean")
    lossy_psnr = (lossy.psnr_db or {}).get("mean")
    if clean_psnr is not None and lossy_psnr is not None and lossy_psnr < clean_psnr - 1.0:
        worse.append(f"PSNR {clean_psnr:.1f} -> {lossy_psnr:.1f} dB")
    return worse


async def test_clean_call_passes_and_loss_degrades_it(
    callbot_participants: ParticipantFactory, callbot_probe: ProbeFactory
) -> None:
    alice = await callbot_participants("alice")
    bob = await callbot_participants("bob", video=None, audio=None)
    await alice.wait_connected(1)
    await bob.wait_connected(1)
    clean = await callbot_probe(bob, "alice")
    audio = await callbot_probe(bob, "alice", "audio")
    await clean.wait_frames(90)
    await clean.aclose()
    await audio.aclose()
    clean_summary = clean.video_summary()
    assert_video(
        clean_summary, min_fps=20, max_drops=3, max_freeze_ms=400, max_latency_ms=250,
        min_psnr_db=30, label="clean",
    )  # fmt: skip
    assert_audio(callbot_probe.audio_summary(audio), present=True)

    link = alice.link(bob.peer_id)
    assert link is not None
    # Bursty loss on what alice sends: packets, retransmissions and keyframes all suffer.
    with impair(link.pc, Impairment(loss=0.1, burst_loss=(0.05, 0.3), seed=7)) as handle:
        lossy = await callbot_probe(bob, "alice")
        await lossy.wait_frames(90, timeout_s=40)
        await lossy.aclose()
    assert handle.stats.dropped > 0
    lossy_summary = lossy.video_summary()
    worse = degradation(clean_summary, lossy_summary)
    assert worse, f"loss changed nothing measurable:\n{clean_summary}\n{lossy_summary}"


async def test_sync_marks_give_the_av_offset(
    callbot_participants: ParticipantFactory, callbot_probe: ProbeFactory
) -> None:
    await callbot_participants("alice", sync_every_s=0.5)
    bob = await callbot_participants("bob", video=None, audio=None)
    video = await callbot_probe(bob, "alice")
    audio = await callbot_probe(bob, "alice", "audio")
    await video.wait_frames(100)  # a little over three seconds: six flash/beep pairs
    await video.aclose()
    await audio.aclose()
    assert video.video_summary().flashes >= 4
    summary = callbot_probe.audio_summary(audio)  # with alice's flashes from her video probe
    assert_audio(summary, present=True, max_av_offset_ms=150, max_latency_ms=400, label="alice")
    assert summary.av_offset_ms is not None and len(summary.beeps) >= 4
