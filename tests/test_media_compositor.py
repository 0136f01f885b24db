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
    Scene,
    SceneElement,
    SpeakerSelector,
    Tile,
    ToneAudioTrack,
    fit,
    read_stamp,
)
from media import compositor as compositor_module
from media.canvas import STALL_MARK_YUV, placeholder_yuv

from .test_media_canvas import BLACK, YUV, Model, colour, pixel, planes, region_is, solid
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
            assert isinstance(frame, av.VideoFrame)
            times.append(time.monotonic())
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
        assert isinstance(frame, av.VideoFrame)
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
    assert isinstance(frame, av.VideoFrame)
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
        assert isinstance(frame, av.VideoFrame)
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
        assert isinstance(blank, av.VideoFrame)
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
            assert isinstance(frame, av.VideoFrame)
            times.append(time.monotonic())
            pts.append(frame.pts)
        assert_paced(pts, times, t0=t0, step=3000, period=1 / 30)
        assert times[-1] - t0 >= 9 / 30 - 0.001
        assert isinstance(frame, av.VideoFrame)
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


# -- layouts, placeholders, stalls and resolution changes, checked pixel by pixel -----------


class _SolidTrack(MediaStreamTrack):
    """New solid-colour frames at ~30 fps; size and colour can change mid-stream (as Chrome
    downscales), and it can pause: stay live but deliver nothing."""

    kind = "video"

    def __init__(self, width: int, height: int, yuv: YUV) -> None:
        super().__init__()
        self._picture = (width, height, yuv)
        self._flowing = asyncio.Event()
        self._flowing.set()
        self.sent = 0

    def set_picture(self, width: int, height: int, yuv: YUV) -> None:
        self._picture = (width, height, yuv)

    def pause(self) -> None:
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    async def recv(self) -> av.VideoFrame:
        await asyncio.sleep(1 / 30)
        await self._flowing.wait()
        if self.readyState != "live":
            raise MediaStreamError
        frame = solid(*self._picture)
        frame.pts = self.sent * 3000
        frame.time_base = fractions.Fraction(1, 90000)
        self.sent += 1
        return frame


async def _output_where(
    comp: Compositor, predicate: Callable[[av.VideoFrame], bool], timeout: float = 15.0
) -> av.VideoFrame:
    """The first output frame that satisfies ``predicate`` (the timeout only guards a hang)."""
    async with asyncio.timeout(timeout):
        while True:
            frame = await comp.output.recv()
            assert isinstance(frame, av.VideoFrame)
            assert isinstance(frame, av.VideoFrame)
            if predicate(frame):
                return frame


def _model(width: int, height: int, tiles: list[tuple[Rect, int, int, YUV]]) -> Model:
    model = Model(width, height)
    for cell, w, h, yuv in tiles:
        model.tile(cell, w, h, yuv)
    return model


async def test_output_follows_mid_stream_resolution_changes() -> None:
    track = _SolidTrack(640, 480, colour(1))
    canvas = Rect(0, 0, 640, 360)
    steps = [
        (640, 480, colour(1), Rect(80, 0, 480, 360)),  # 4:3: pillarbox
        (320, 180, colour(2), Rect(0, 0, 640, 360)),  # downscaled to 16:9: fills the canvas
        (840, 360, colour(3), Rect(0, 42, 640, 274)),  # 21:9: letterbox
        (1280, 720, colour(4), Rect(0, 0, 640, 360)),  # back up
        (240, 320, colour(5), Rect(184, 0, 270, 360)),  # portrait
    ]
    async with Compositor(width=640, height=360, fps=30, labels=False) as comp:
        comp.add_track(track, label="a")
        for w, h, yuv, picture in steps:
            track.set_picture(w, h, yuv)
            model = _model(640, 360, [(canvas, w, h, yuv)])
            frame = await _output_where(comp, model.matches)
            model.assert_matches(frame)
            assert comp.layout() == [("a", picture)]
        assert comp.stats()["a"].frames == track.sent
        track.stop()
    assert _other_tasks() == []


async def test_participant_without_video_shows_a_placeholder() -> None:
    track = _SolidTrack(640, 480, colour(1))
    async with Compositor(width=640, height=360, fps=30, labels=False) as comp:
        comp.add_participant("carol")
        comp.add_track(track, label="a")
        cell_a, cell_c = Rect(0, 0, 320, 360), Rect(320, 0, 320, 360)
        assert comp.layout() == [("carol", cell_a), ("a", cell_c)]  # carol has no frame: her cell
        col = placeholder_yuv("carol")

        def shows_both(frame: av.VideoFrame) -> bool:
            got = planes(frame)
            pic = fit(640, 480, cell_c)
            y = got[0][: cell_a.h, : cell_a.w]
            return region_is(got, pic, colour(1)) and bool(
                (y == col[0]).mean() > 0.9 and ((y == col[0]) | (y == 235)).all()
            )

        frame = await _output_where(comp, shows_both)
        got = planes(frame)
        assert int((got[0][:, :320] == 235).sum()) > 50  # her name, in white
        assert pixel(got, 0, 0) == col and pixel(got, 318, 358) == col
        # Carol's video arrives, then ends: her tile shows it, then the placeholder again.
        carol = _SolidTrack(320, 240, colour(2))
        comp.add_track(carol, label="carol")
        await _output_where(comp, lambda f: region_is(planes(f), fit(320, 240, cell_a), colour(2)))
        carol.stop()
        await _output_where(comp, lambda f: pixel(planes(f), 0, 0) == col)
        assert [label for label, _ in comp.layout()] == ["carol", "a"]  # she stays
        assert comp.stats()["carol"].stalled is False  # no video is not a stall
        track.stop()


async def test_stalled_input_keeps_its_last_frame_inside_a_red_border() -> None:
    track = _SolidTrack(640, 480, colour(1))
    cell = Rect(0, 0, 640, 360)
    pic = Rect(80, 0, 480, 360)
    ring = [
        Rect(pic.x, pic.y, pic.w, 2),
        Rect(pic.x, pic.bottom - 2, pic.w, 2),
        Rect(pic.x, pic.y, 2, pic.h),
        Rect(pic.right - 2, pic.y, 2, pic.h),
    ]
    inner = Rect(pic.x + 20, pic.y + 20, pic.w - 40, pic.h - 40)

    def bordered(yuv: YUV) -> Callable[[av.VideoFrame], bool]:
        def check(frame: av.VideoFrame) -> bool:
            got = planes(frame)
            return all(region_is(got, r, STALL_MARK_YUV) for r in ring) and region_is(
                got, inner, yuv
            )

        return check

    async with Compositor(width=640, height=360, fps=30, stall_s=0.3, labels=False) as comp:
        comp.add_track(track, label="a")
        await _output_where(comp, _model(640, 360, [(cell, 640, 480, colour(1))]).matches)
        assert comp.stats()["a"].stalled is False
        track.set_picture(640, 480, colour(2))  # the last frame before the stall
        await _output_where(comp, _model(640, 360, [(cell, 640, 480, colour(2))]).matches)
        track.pause()  # still live, sends nothing
        await _until(lambda: comp.stats()["a"].stalled, timeout=15)
        frame = await _output_where(comp, bordered(colour(2)))
        got = planes(frame)
        assert region_is(got, Rect(0, 0, 80, 360), BLACK)  # bars stay black
        assert comp.layout() == [("a", pic)]  # still shown, where it was
        # Frames resume: the border goes.
        track.set_picture(640, 480, colour(3))
        track.resume()
        clean = _model(640, 360, [(cell, 640, 480, colour(3))])
        await _output_where(comp, clean.matches)
        await _until(lambda: not comp.stats()["a"].stalled, timeout=15)
        track.stop()


async def test_speaker_layout_follows_levels_with_hysteresis(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    quiet, loud = -70.0, -20.0
    levels = {"a": quiet, "b": quiet, "c": quiet}
    sizes = {"a": (640, 480), "b": (1280, 720), "c": (840, 360)}
    tracks = {k: _SolidTrack(*sizes[k], colour(i)) for i, k in enumerate(sizes)}
    main_cell = Rect(0, 0, 640, 288)
    strip = [Rect(192, 288, 128, 72), Rect(320, 288, 128, 72)]

    def model_for(main: str) -> Model:
        others = [k for k in sizes if k != main]
        cells = [(main, main_cell), *zip(others, strip, strict=True)]
        return _model(
            640, 360, [(cell, *sizes[k], colour(list(sizes).index(k))) for k, cell in cells]
        )

    async with Compositor(
        width=640,
        height=360,
        fps=30,
        layout="speaker",
        levels=lambda: levels,
        stall_s=60,  # the fake clock below jumps; stalls are not this test's business
        labels=False,
        speaker=SpeakerSelector(hold_s=0.2),
    ) as comp:
        for key, track in tracks.items():
            comp.add_track(track, label=key)

        def speaker() -> str | None:
            return comp.speaker

        # Nobody has spoken yet: the first participant is large.
        await _output_where(comp, model_for("a").matches)
        assert speaker() is None
        # b speaks: it becomes the large tile, but only after the hold.
        levels["b"] = loud
        t0 = time.monotonic()
        await _output_where(comp, model_for("b").matches)
        assert time.monotonic() - t0 >= 0.2
        assert speaker() == "b"
        layout = comp.layout()
        assert layout[0] == ("b", Rect(64, 0, 512, 288))  # 16:9 in the 20:9 main cell

        # The rest runs on a fake clock, so "short" and "long" are exact.
        clock = [time.monotonic()]
        monkeypatch.setattr(
            compositor_module, "time", types.SimpleNamespace(monotonic=lambda: clock[0])
        )

        async def main_after(dt: float) -> str:
            clock[0] += dt
            frame = await comp.snapshot()
            for key in sizes:
                if model_for(key).matches(frame):
                    return key
            raise AssertionError("the frame matches no speaker layout")

        # A short blip from c (louder than b by far, for less than the hold) changes nothing.
        levels["c"] = -5.0
        assert await main_after(0.0) == "b"
        assert await main_after(0.15) == "b"
        levels["c"] = quiet
        assert await main_after(0.1) == "b"
        assert await main_after(1.0) == "b"
        # A pause (everyone quiet) keeps the speaker too.
        levels["b"] = quiet
        assert await main_after(5.0) == "b"
        # c talks for longer than the hold: c takes over.
        levels["c"] = -5.0
        assert await main_after(0.0) == "b"
        assert await main_after(0.1) == "b"
        assert await main_after(0.15) == "c"
        assert comp.speaker == "c"
        # Pinning wins over levels, at once; unpinning goes back to detection.
        comp.set_speaker("a")
        assert comp.speaker == "a"
        assert await main_after(0.0) == "a"
        assert await main_after(5.0) == "a"
        comp.set_speaker(None)
        assert await main_after(0.0) == "c"
        # Switching to pip puts the speaker full-canvas.
        comp.set_layout("pip")
        pip = _model(
            640,
            360,
            [
                (Rect(0, 0, 640, 360), *sizes["c"], colour(2)),
                (Rect(472, 262, 160, 90), *sizes["a"], colour(0)),
                (Rect(304, 262, 160, 90), *sizes["b"], colour(1)),
            ],
        )
        pip.assert_matches(await comp.snapshot())
        assert comp.layout()[0] == ("c", Rect(0, 42, 640, 274))
    for track in tracks.values():
        track.stop()


async def test_pip_main_full_canvas_insets_on_top() -> None:
    sizes = {"a": (640, 480), "b": (1280, 720), "c": (840, 360)}
    tracks = {k: _SolidTrack(*sizes[k], colour(i)) for i, k in enumerate(sizes)}
    async with Compositor(width=640, height=360, fps=30, layout="pip", labels=False) as comp:
        for key, track in tracks.items():
            comp.add_track(track, label=key)
        comp.set_speaker("b")
        # Insets are a quarter of the canvas (160x90), 8 px from the edges and each other.
        cells = [
            ("b", Rect(0, 0, 640, 360)),
            ("a", Rect(472, 262, 160, 90)),
            ("c", Rect(304, 262, 160, 90)),
        ]
        model = _model(640, 360, [(r, *sizes[k], colour(list(sizes).index(k))) for k, r in cells])
        frame = await _output_where(comp, model.matches)
        got = planes(frame)
        assert comp.layout() == [
            ("b", Rect(0, 0, 640, 360)),
            ("a", Rect(492, 262, 120, 90)),  # 4:3 pillarboxed in its inset
            ("c", Rect(304, 272, 160, 68)),  # 21:9 letterboxed (even-rounded)
        ]
        assert pixel(got, 500, 300) == colour(0)  # the inset covers main
        assert pixel(got, 474, 300) == BLACK  # and so do its bars
        assert pixel(got, 470, 300) == colour(1)  # main between the insets
        # An explicit scene: b small on top of a, c left out.
        scene = Scene(
            (
                SceneElement("b", Rect(400, 200, 320, 180), z=1),  # runs off the canvas
                SceneElement("a", Rect(0, 0, 640, 360), z=0),
            )
        )
        comp.set_layout(scene)
        model = _model(
            640,
            360,
            [
                (Rect(0, 0, 640, 360), 640, 480, colour(0)),
                (Rect(400, 200, 240, 160), 1280, 720, colour(1)),
            ],
        )
        await _output_where(comp, model.matches)
        assert [label for label, _ in comp.layout()] == ["a", "b"]
    for track in tracks.values():
        track.stop()


async def test_tiles_are_labelled_with_the_participant_name_unless_disabled() -> None:
    for labels in (True, False):
        track = _SolidTrack(640, 480, colour(1))
        async with Compositor(width=640, height=360, fps=30, labels=labels) as comp:
            comp.add_track(track, label="Zoe")
            pic = Rect(80, 0, 480, 360)
            frame = await _output_where(comp, lambda f: pixel(planes(f), 300, 20) == colour(1))
            got = planes(frame)
            bright = got[0] > 200
            band = bright[pic.bottom - 40 : pic.bottom, pic.x : pic.x + 200]
            assert int(band.sum()) == (int(bright.sum()) if labels else 0)
            if labels:
                assert band.sum() > 30  # the name, bottom-left of the picture
            track.stop()


async def test_pin_on_departed_participant_does_not_freeze_detection() -> None:
    levels = {"a": -70.0, "b": -70.0}
    async with Compositor(
        width=320, height=180, layout="speaker", levels=lambda: levels,
        speaker=SpeakerSelector(hold_s=0.0),
    ) as comp:  # fmt: skip
        comp.add_participant("a")
        comp.add_participant("b")
        comp.add_participant("gone")
        comp.set_speaker("gone")
        comp.remove_participant("gone")  # the pinned participant hangs up
        levels["b"] = -10.0
        comp.layout()  # a composition samples the levels
        assert comp.speaker == "b"  # detection took over from the absent pin


async def test_departed_participants_leave_no_canvas_state() -> None:
    async with Compositor(width=1280, height=720) as comp:
        for i in range(20):
            comp.add_participant(f"guest-{i}")
            await comp.snapshot()  # paints (and caches) a full-canvas placeholder
            comp.remove_participant(f"guest-{i}")
        assert comp._canvas._keys == {}  # no per-participant cache outlives its participant
