"""Offline compositing (``CompositeJob``): who gets a tile, when, and what the mix holds.

Inputs are written here with PyAV, frame by frame, so their content and timing are exact:
stamped pattern frames (frame ``n`` at ``n / FPS``) and tones, with or without the
``CALLBOT_OFFSET`` tag that ``callbot record --split`` writes.
"""

from __future__ import annotations

import fractions
from pathlib import Path

import av
import numpy as np
import pytest

from media import PatternVideoTrack, ToneAudioTrack, fit, grid, placeholder_yuv, read_stamp
from media.layout import speaker_layout
from media.offline import CompositeError, CompositeJob
from media.recorder import OFFSET_TAG

FPS = 10
SIZE = (320, 240)


def _write(
    path: Path,
    seconds: float,
    *,
    video: bool = True,
    audio: bool = False,
    offset: float | None = None,
    frequency: float = 440.0,
) -> None:
    """``seconds`` of stamped 160x120 pattern at FPS and/or a tone, tagged with ``offset``."""
    with av.open(str(path), "w") as out:
        if offset is not None:
            out.metadata[OFFSET_TAG] = f"{offset:.3f}"
        vs = out.add_stream("libx264", rate=FPS) if video else None
        if isinstance(vs, av.video.stream.VideoStream):
            vs.codec_context.width, vs.codec_context.height = 160, 120
            vs.codec_context.pix_fmt = "yuv420p"
            vs.codec_context.options = {"preset": "ultrafast"}
        aus = out.add_stream("libopus", rate=48000) if audio else None
        pattern = PatternVideoTrack(width=160, height=120, fps=FPS)
        tone = ToneAudioTrack(frequency=frequency)
        if vs is not None:
            for n in range(round(seconds * FPS)):
                frame = pattern.render(n)
                frame.pts, frame.time_base = n, fractions.Fraction(1, FPS)
                out.mux(vs.encode(frame))
            out.mux(vs.encode(None))
        if aus is not None:
            for start in range(0, round(seconds * 48000), 960):
                out.mux(aus.encode(tone.render(start)))
            out.mux(aus.encode(None))
        pattern.stop()
        tone.stop()


def _frames(path: Path) -> dict[float, av.VideoFrame]:
    with av.open(str(path)) as container:
        return {round(float(f.time or 0.0), 3): f for f in container.decode(video=0)}


def _audio(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        chunks = [f.to_ndarray().reshape(-1) for f in container.decode(audio=0)]
    return np.concatenate(chunks).astype(np.float64)


def _stamp_in(frame: av.VideoFrame, tiles: int, index: int) -> int | None:
    """The frame number shown in grid cell ``index`` of ``tiles`` (None: no stamped picture)."""
    rect = fit(160, 120, grid(tiles, frame.width, frame.height)[index])
    stamp = read_stamp(frame, (rect.x, rect.y, rect.w, rect.h))
    return None if stamp is None else stamp.frame_number


def _yuv_at(frame: av.VideoFrame, x: int, y: int) -> tuple[int, int, int]:
    arr = frame.to_ndarray()
    w, h = frame.width, frame.height
    u = arr[h : h + h // 4].reshape(h // 2, w // 2)
    v = arr[h + h // 4 :].reshape(h // 2, w // 2)
    return int(arr[y, x]), int(u[y // 2, x // 2]), int(v[y // 2, x // 2])


def test_split_pairs_are_one_participant_per_folder_and_session(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    files = [
        one / "alice-video.mkv", one / "bob-video.mkv", one / "alice-audio.mka",
        one / "bob-audio-2.mka", one / "bob-video-2.mkv", one / "bob-audio.mka",
        two / "alice-video.mkv", one / "room.mkv", one / "carol-audio.mka",
    ]  # fmt: skip
    for path in files:
        _write(path, 0.3, video=path.suffix == ".mkv", audio=path.suffix == ".mka")
    job = CompositeJob(files, tmp_path / "out.mkv", width=SIZE[0], height=SIZE[1], fps=FPS)
    labels = [info.label for info in job.inputs]
    assert labels == [
        "alice", "bob", "alice", "bob-2", "bob-2", "bob", "alice (2)", "room", "carol",
    ]  # fmt: skip
    assert job.participants == ("alice", "bob", "bob-2", "alice (2)", "room", "carol")
    assert all(info.offset_s is None for info in job.inputs)


def test_offset_files_come_and_go_in_time_and_plain_ones_start_at_zero(tmp_path: Path) -> None:
    """x joins at 1.0 s for 1.0 s (video and audio files, tagged); plain.mkv runs 0-0.5 s."""
    _write(tmp_path / "x-video.mkv", 1.0, offset=1.0)
    _write(tmp_path / "x-audio.mka", 1.0, video=False, audio=True, offset=1.0)
    _write(tmp_path / "plain.mkv", 0.5)
    out = tmp_path / "out.mkv"
    job = CompositeJob(
        [tmp_path / "x-video.mkv", tmp_path / "x-audio.mka", tmp_path / "plain.mkv"],
        out, width=SIZE[0], height=SIZE[1], fps=FPS,
    )  # fmt: skip
    assert job.participants == ("x", "plain")
    assert [info.offset_s for info in job.inputs] == [1.0, 1.0, None]
    assert job.duration_s == pytest.approx(2.0, abs=0.05)
    result = job.run()
    assert result.video_frames in (20, 21) and not result.cancelled  # + codec padding
    frames = _frames(out)
    # Before x joins: plain alone, full canvas, at its own time (frame n at n / FPS).
    assert _stamp_in(frames[0.3], 1, 0) == 3
    # Plain ended at 0.5 s: it keeps its last frame, as before.
    assert _stamp_in(frames[0.8], 1, 0) == 4
    # From 1.0 s: x's frame (t - 1.0) * FPS next to plain's last one; one tile for two files.
    assert _stamp_in(frames[1.3], 2, 0) == 3
    assert _stamp_in(frames[1.3], 2, 1) == 4
    # Audio: silence until x joins, its tone while it is in.
    mixed = _audio(out)
    rate = 48000 * 2  # interleaved stereo samples per second
    assert np.abs(mixed[: int(0.9 * rate)]).max() < 0.01
    assert np.sqrt(np.mean(mixed[int(1.1 * rate) : int(1.9 * rate)] ** 2)) > 0.05


def test_a_participant_leaves_when_its_tagged_files_end(tmp_path: Path) -> None:
    """a runs 0.2-0.7 s, b (audio only) 1.0-1.5 s: they never share the canvas."""
    _write(tmp_path / "a-video.mkv", 0.5, offset=0.2)
    _write(tmp_path / "b-audio.mka", 0.5, video=False, audio=True, offset=1.0)
    out = tmp_path / "out.mkv"
    job = CompositeJob(
        [tmp_path / "a-video.mkv", tmp_path / "b-audio.mka"], out,
        width=SIZE[0], height=SIZE[1], fps=FPS, layout="speaker",
    )  # fmt: skip
    job.run()
    frames = _frames(out)
    background = _yuv_at(frames[0.0], 8, 8)
    assert _stamp_in(frames[0.0], 1, 0) is None  # nobody yet
    assert _stamp_in(frames[0.4], 1, 0) == 2  # a alone, full canvas
    assert _stamp_in(frames[0.8], 1, 0) is None  # a left; b not yet in
    assert _yuv_at(frames[0.8], 8, 8) == background
    y, u, v = _yuv_at(frames[1.2], 8, 8)  # b alone: its placeholder fills the canvas
    want = placeholder_yuv("b")
    assert abs(y - want[0]) <= 6 and abs(u - want[1]) <= 6 and abs(v - want[2]) <= 6


def test_the_speaker_tile_is_the_video_of_whoever_talks(tmp_path: Path) -> None:
    """Split pairs give the speaker layout a video tile with a level, not an audio placeholder."""
    _write(tmp_path / "talker-video.mkv", 2.0, offset=0.0)
    _write(tmp_path / "talker-audio.mka", 2.0, video=False, audio=True, offset=0.0)
    _write(tmp_path / "quiet-video.mkv", 2.0, offset=0.0)
    out = tmp_path / "out.mkv"
    job = CompositeJob(
        [*sorted(tmp_path.glob("*-video.mkv")), tmp_path / "talker-audio.mka"], out,
        width=SIZE[0], height=SIZE[1], fps=FPS, layout="speaker",
    )  # fmt: skip
    assert job.participants == ("quiet", "talker")
    job.run()
    last = _frames(out)[1.9]
    big = next(p for p in speaker_layout(["quiet", "talker"], "talker", *SIZE) if p.key == "talker")
    rect = fit(160, 120, big.rect)
    stamp = read_stamp(last, (rect.x, rect.y, rect.w, rect.h))
    assert stamp is not None and stamp.frame_number == 19


def test_audio_ends_with_the_inputs_whatever_the_frame_rate(tmp_path: Path) -> None:
    """At 1 fps a 2.5 s input makes 3 frames, but audio still stops at 2.5 s (not 3 s)."""
    _write(tmp_path / "in.mkv", 2.5, audio=True)
    out = tmp_path / "out.mkv"
    result = CompositeJob([tmp_path / "in.mkv"], out, width=64, height=48, fps=1).run()
    assert result.video_frames == 3
    seconds = len(_audio(out)) / 2 / 48000
    assert 2.5 <= seconds < 2.5 + 0.05, seconds


def test_rates_below_one_fps_and_directories_are_refused(tmp_path: Path) -> None:
    _write(tmp_path / "in.mkv", 0.2)
    for fps in (0.5, 1e-9, 121):
        with pytest.raises(ValueError, match="fps"):
            CompositeJob([tmp_path / "in.mkv"], tmp_path / "o.mkv", fps=fps)
    with pytest.raises(CompositeError, match="is a directory"):
        CompositeJob([tmp_path], tmp_path / "o.mkv")
