"""The composite and the mix are ordinary tracks: a bot publishes them back into a call."""

from __future__ import annotations

import asyncio

import numpy as np

from media import AudioMixer, Compositor, PatternVideoTrack, ToneAudioTrack, fit, read_stamp
from peer import Participant, RemoteTrack
from signaling_server import RunningServer

from .test_call import config


async def test_a_bot_republishes_its_composite_and_mix(relay: RunningServer) -> None:
    sources = [PatternVideoTrack(width=320, height=240, seed=i, label=f"s{i}") for i in range(2)]
    tones = [ToneAudioTrack(frequency=f, amplitude=0.2) for f in (440, 880)]
    async with (
        Compositor(width=640, height=240, fps=15) as compositor,
        AudioMixer() as mixer,
    ):
        for i, (source, tone) in enumerate(zip(sources, tones, strict=True)):
            compositor.add_track(source, label=f"s{i}")
            mixer.add_track(tone, label=f"s{i}")
        async with (
            Participant(
                config(relay, "studio"), video=compositor.output, audio=mixer.output
            ) as studio,
            Participant(config(relay, "viewer")) as viewer,
        ):
            await viewer.wait_connected(1)
            tracks: dict[str, RemoteTrack] = {}
            async with asyncio.timeout(30):
                async for track in viewer.tracks():
                    tracks[track.kind] = track
                    if len(tracks) == 2:
                        break
            video, audio = tracks["video"], tracks["audio"]
            assert video.peer_name == "studio"
            # Both tiles of the received composite carry their own source's advancing stamps.
            seen: list[list[int]] = [[], []]
            async with asyncio.timeout(60):
                while min(len(s) for s in seen) < 10:
                    frame = await video.recv()
                    assert (frame.width, frame.height) == (640, 240)
                    for i, (_, cell) in enumerate(compositor.layout()):
                        rect = fit(320, 240, cell)
                        stamp = await asyncio.to_thread(read_stamp, frame, rect)
                        if stamp is not None:
                            seen[i].append(stamp.frame_number)
            assert all(s == sorted(s) and s[-1] > s[0] for s in seen), seen
            # The mix arrives too, with both tones in it.
            chunks: list[np.ndarray] = []
            async with asyncio.timeout(60):
                while sum(len(c) for c in chunks) < 48000:
                    sound = await audio.recv()
                    data = sound.to_ndarray().reshape(-1, len(sound.layout.channels))
                    chunks.append(data[:, 0].astype(np.float64))
            mono = np.concatenate(chunks)[-32768:]
            spectrum = np.abs(np.fft.rfft(mono * np.hanning(len(mono))))
            freqs = np.fft.rfftfreq(len(mono), 1 / sound.sample_rate)
            for hz in (440, 880):
                band = spectrum[(freqs > hz - 20) & (freqs < hz + 20)].max()
                assert band > 20 * np.median(spectrum), hz
            assert studio.peer_id != viewer.peer_id
    for local in (*sources, *tones):
        local.stop()
