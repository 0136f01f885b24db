"""Compositor: tiles carry readable stamps, inputs come and go, nothing queues or leaks."""

from __future__ import annotations

import asyncio
import fractions
import logging
import threading
import time
import types
from collections.abc import Callable

import av
import pytest
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from media import (
    ClosedError,
    Compositor,
    PatternVideoTrack,
    Rect,
    Tile,
    ToneAudioTrack,
    read_stamp,
)
from media import compositor as compositor_module

from .test_media_pacing import assert_paced


def _other_tasks() -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]


async def _until(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    """Wait for a condition; the timeout only guards against a hang, it is no speed target."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


def _bots(n: int, fps: float = 15) -> list[PatternVideoTrack]:
    return [
        PatternVideoTrack(width=320, height=240, fps=fps, label=f"bot {i}", seed=i)
        for i in range(n)
    ]


async def test_tiles_carry_each_inputs_stamps() -> None:
    bots = _bots(3)
    async with Compositor(width=640, height=360, fps=15) as comp:
        for bot in bots:
            comp.add_track(bot, label=bot.id[:4])
        labels = [bot.id[:4] for bot in bots]
        seen: dict[str, list[int]] = {label: [] for label in labels}
        pts: list[int | None] = []
        times: list[float] = []
        t0 = time.monotonic()
        for _ in range(16):
            sent = [bot.frames_sent for bot in bots]
            frame = await comp.output.recv()
            times.append(time.monotonic())
            assert isinstance(frame, av.VideoFrame)
            assert (frame.width, frame.height, frame.format.name) == (640, 360, "yuv420p")
            assert frame.time_base == fractions.Fraction(1, 90000)
            pts.append(frame.pts)
            layout = comp.layout()
            assert [label for label, _ in layout] == labels
            for (label, rect), sent_before in zip(layout, sent, strict=True):
                stamp = read_stamp(frame, rect)
                if stamp is not None:
                    # Each tile shows its input's newest frame, not an older one.
                    assert stamp.frame_number >= sent_before - 1, (label, stamp, sent_before)
                    seen[label].append(stamp.frame_number)
        # Tiles are 240x180 (downscaled from 320x240), letterboxed in 320x180 cells.
        assert [rect for _, rect in comp.layout()] == [
            Rect(40, 0, 240, 180),
            Rect(360, 0, 240, 180),
            Rect(40, 180, 240, 180),
        ]
        for label, numbers in seen.items():
            # Only the first output frame, composed before any input delivered, may lack tiles.
            assert len(numbers) >= 15, (label, numbers)
            assert numbers == sorted(numbers)  # never goes back in time
            assert numbers[-1] > numbers[0]  # and keeps moving
        # Whole 15 fps slots in real time; a late consumer may see gaps, so no exact steps.
        assert_paced(pts, times, t0=t0, step=6000, period=1 / 15)
        # Each tile shows its own input: background chroma differs per seed.
        u_plane = frame.to_ndarray()[360 : 360 + 90].reshape(180, 320)
        tile_u = [
            float(u_plane[r.y // 2 + 30 : r.bottom // 2 - 10, r.x // 2 : r.right // 2].mean())
            for _, r in comp.layout()
        ]
        assert max(tile_u) - min(tile_u) > 10
        stats = comp.stats()
        assert set(stats) == set(labels)
        for bot, label in zip(bots, labels, strict=True):
            st = stats[label]
            assert st.label == label
            assert st.frames == bot.frames_sent  # every frame sent was read, none left queued
            assert st.frames > seen[label][-1]
            # The arrival rate never exceeds the source's: a loaded machine only lowers it
            # (the exact figure is checked on a fake clock below).
            assert 0 < st.fps <= 15 * 1.25
    assert _other_tasks() == []
    for bot in bots:
        bot.stop()


async def test_ended_input_is_removed_and_removal_works() -> None:
    a, b, c = _bots(3, fps=30)
    comp = Compositor(width=320, height=180, fps=30)
    comp.add_track(a, label="a")
    comp.add_track(b, label="b")
    comp.add_track(c, label="c")
    await _until(lambda: all(s.frames > 0 for s in comp.stats().values()))
    b.stop()  # its recv now raises MediaStreamError: the input must go away by itself
    await _until(lambda: [label for label, _ in comp.layout()] == ["a", "c"])
    comp.remove_track(a)
    assert [label for label, _ in comp.layout()] == ["c"]
    assert comp.layout()[0][1] == Rect(40, 0, 240, 180)  # the survivor takes the whole canvas
    comp.remove_track(a)  # removing twice is harmless
    frame = await comp.output.recv()
    assert read_stamp(frame, comp.layout()[0][1]) is not None
    await comp.aclose()
    await comp.aclose()
    assert _other_tasks() == []
    with pytest.raises(MediaStreamError):
        await comp.output.recv()
    with pytest.raises(ClosedError):
        comp.add_track(a, label="again")
    for track in (a, c):
        track.stop()


class _ClockedTrack(MediaStreamTrack):
    """``frames`` pattern frames, each advancing a fake clock by one period, then silence."""

    kind = "video"

    def __init__(self, clock: list[float], period: float, frames: int) -> None:
        super().__init__()
        self._clock = clock
        self._period = period
        self._frames = frames
        self._pattern = PatternVideoTrack(width=160, height=120)
        self.sent = 0

    async def recv(self) -> av.VideoFrame:
        if self.sent == self._frames:
            await asyncio.Event().wait()  # stays an input, delivers nothing more
        await asyncio.sleep(0)
        self._clock[0] += self._period
        frame = self._pattern.render(self.sent)
        self.sent += 1
        return frame


async def test_input_stats_measure_the_arrival_rate(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [500.0]
    monkeypatch.setattr(
        compositor_module, "time", types.SimpleNamespace(monotonic=lambda: clock[0])
    )
    steady, sparse = _ClockedTrack(clock, 1 / 15, 16), _ClockedTrack([0.0], 0.0, 1)
    async with Compositor(width=320, height=180) as comp:
        comp.add_track(steady, label="steady")
        comp.add_track(sparse, label="sparse")
        await _until(lambda: steady.sent == 16 and sparse.sent == 1)
        stats = comp.stats()
        # 16 frames one fake period apart: 15 intervals over exactly one second.
        assert stats["steady"].frames == 16
        assert stats["steady"].fps == pytest.approx(15)
        assert stats["steady"].dropped == 15  # nobody read the output
        assert (stats["sparse"].frames, stats["sparse"].fps) == (1, 0.0)  # no rate from one


async def test_slow_consumer_keeps_only_latest_frame() -> None:
    bots = _bots(2, fps=30)
    async with Compositor(width=320, height=240, fps=30) as comp:
        for i, bot in enumerate(bots):
            comp.add_track(bot, label=str(i))
        # Nobody reads the output meanwhile.
        await _until(lambda: all(st.frames >= 12 for st in comp.stats().values()))
        for bot, st in zip(bots, comp.stats().values(), strict=True):
            # The reader drained the source at its own pace (nothing piled up upstream)...
            assert st.frames >= 12
            assert bot.frames_sent - st.frames <= 1
            # ...and held one frame at a time: every frame but the newest was discarded.
            assert st.dropped == st.frames - 1
        sent_before = [bot.frames_sent for bot in bots]
        frame = await comp.output.recv()
        for (_, rect), sent in zip(comp.layout(), sent_before, strict=True):
            stamp = read_stamp(frame, rect)
            assert stamp is not None
            assert stamp.frame_number >= sent - 1  # the newest frame, not an old one
    for bot in bots:
        bot.stop()
    assert _other_tasks() == []


async def test_layout_before_first_frame_and_validation() -> None:
    async with Compositor(width=640, height=360) as comp:
        assert comp.layout() == []
        blank = await comp.output.recv()
        y = blank.to_ndarray()[:360]
        assert int(y.max()) == 16  # black canvas when there are no inputs
        track = PatternVideoTrack(width=320, height=240)
        comp.add_track(track, label="x")
        assert comp.layout() == [("x", Rect(0, 0, 640, 360))]  # no frame yet: the whole cell
        with pytest.raises(ValueError, match="already an input"):
            comp.add_track(track, label="y")
        with pytest.raises(ValueError, match="label"):
            comp.add_track(PatternVideoTrack(), label="x")
        tone = ToneAudioTrack()
        with pytest.raises(ValueError, match="video"):
            comp.add_track(tone, label="tone")
        track.stop()
    with pytest.raises(ValueError, match="even"):
        Compositor(width=641)
    with pytest.raises(ValueError, match="fps"):
        Compositor(fps=0)


class _BrokenTrack(MediaStreamTrack):
    kind = "video"

    async def recv(self) -> av.VideoFrame:
        await asyncio.sleep(0.01)
        raise RuntimeError("decoder exploded")


async def test_failing_input_is_logged_and_removed(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="media.compositor")
    async with Compositor(width=320, height=180) as comp:
        comp.add_track(_BrokenTrack(), label="broken")
        await _until(lambda: comp.layout() == [])
        await asyncio.sleep(0)
    assert "input reader failed" in caplog.text
    assert _other_tasks() == []


async def test_output_is_paced_and_composed_off_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    bots = [PatternVideoTrack(width=640, height=480, fps=30, seed=i) for i in range(3)]
    async with Compositor(width=1280, height=720, fps=30) as comp:
        compose_threads: list[int] = []
        real_compose = comp._canvas.compose

        def spy(tiles: list[Tile]) -> av.VideoFrame:
            compose_threads.append(threading.get_ident())
            return real_compose(tiles)

        monkeypatch.setattr(comp._canvas, "compose", spy)
        for i, bot in enumerate(bots):
            comp.add_track(bot, label=f"b{i}")
        await _until(lambda: all(s.frames > 0 for s in comp.stats().values()))
        # Paced at 30 fps: never ahead of real time, never a burst after a stall. How fast
        # composing is on an idle machine is bench/compositor.py's business, not this test's.
        pts: list[int | None] = []
        times: list[float] = []
        t0 = time.monotonic()
        for _ in range(10):
            frame = await comp.output.recv()
            times.append(time.monotonic())
            pts.append(frame.pts)
        assert_paced(pts, times, t0=t0, step=3000, period=1 / 30)
        assert times[-1] - t0 >= 9 / 30 - 0.001
        assert (frame.width, frame.height) == (1280, 720)
        for _, rect in comp.layout():
            assert read_stamp(frame, rect) is not None
        snap = await comp.snapshot()
        assert snap.pts is None and (snap.width, snap.height) == (1280, 720)
    assert len(compose_threads) == 11
    assert threading.get_ident() not in compose_threads  # never on the event loop's thread
    with pytest.raises(ClosedError):
        await comp.snapshot()
    for bot in bots:
        bot.stop()
