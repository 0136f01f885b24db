"""``callbot`` command line: the one place that wires the relay, the participant and media together.

Each sub-command parses flags into config dataclasses and runs one coroutine. Errors a user can
cause (unreachable relay, refused join, bad file) print one line and exit non-zero.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import functools
import importlib
import inspect
import json
import logging
import math
import os
import signal
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import aiohttp
import av
from aiortc import MediaStreamTrack

from bench._report import print_result
from media import (
    LAYOUTS,
    AudioMixer,
    Compositor,
    FileSource,
    LayoutName,
    MediaClock,
    MediaError,
    PatternVideoTrack,
    Recorder,
    RecordingInfo,
    ToneAudioTrack,
)
from media.analysis import PatternSpec, TrackProbe, VideoAnalyzer, VideoSummary
from media.offline import MIN_FPS, CompositeJob
from media.recorder import VideoCodec
from media.report import (
    WORST_FRAMES,
    StreamReport,
    describe_audio,
    render_report,
    worst_pictures,
    write_report,
)
from media.timecode import read_stamp
from peer import (
    DEFAULT_SERVER_URL,
    LOOPBACK_ONLY,
    Call,
    CallbotError,
    ConfigError,
    ConnectError,
    LinkState,
    Mode,
    Participant,
    ParticipantConfig,
    RemoteTrack,
    ServerError,
)
from peer.config import check_room
from peer.tracks import TrackPump
from signaling_server import ServerSettings, StoreError, start_server
from signaling_server.protocol import CallInfo, CallStatus
from signaling_server.settings import DEFAULT_RESUME_GRACE_S

logger = logging.getLogger("callbot")

EXIT_ERROR = 1
EXIT_SIGNALLED = 128 + signal.SIGTERM
#: How long a call command that lost the relay waits for it before trying again.
RELAY_BACK_S = 30.0
#: How often a call command is sent in all before its ConnectError is the bot's error.
RELAY_COMMAND_TRIES = 4
RELAY_SLOW_PAUSE_S = 1.0
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
LOG_LEVELS = ["debug", "info", "warning", "error"]
LOG_FORMATS = ["text", "json"]
PATTERN_MIN_SIDE = 64  # PatternVideoTrack's smallest frame
#: Largest side: libx264 and libvpx take up to 8192, but a 4096x4096 frame (24 MiB as
#: YUV 4:2:0, several in flight) is already more than a real-time composite can keep up with.
MAX_SIDE = 4096


# ----------------------------------------------------------------------------- helpers


def _env(name: str, default: str) -> str:
    return os.environ.get(f"CALLBOT_{name}", default)


def _dimensions(text: str, what: str, least: int) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not WIDTHxHEIGHT") from None
    if not (least <= w <= MAX_SIDE and least <= h <= MAX_SIDE) or w % 2 or h % 2:
        raise argparse.ArgumentTypeError(
            f"{what} sides must be even, from {least} to {MAX_SIDE}, got {w}x{h}"
        )
    return w, h


def _size(text: str) -> tuple[int, int]:
    """A canvas size (record, composite)."""
    return _dimensions(text, "canvas", 16)


def _pattern_size(text: str) -> tuple[int, int]:
    """A test pattern's size: PatternVideoTrack needs even sides of at least 64."""
    return _dimensions(text, "pattern", PATTERN_MIN_SIDE)


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError("must be a finite number of at least zero")
    return value


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError("must be a finite number greater than zero")
    return value


def _fps(text: str) -> float:
    """A frame rate from 1 to 120: below 1 fps a frame stands for so much time that a
    composite's progress stalls and a recording's canvas barely moves."""
    value = _positive(text)
    if not MIN_FPS <= value <= 120:
        raise argparse.ArgumentTypeError(f"must be between {MIN_FPS:g} and 120")
    return value


def _int_in(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low} and {high}")
        return value

    return parse


def _seed(name: str) -> int:
    return sum(name.encode()) % 7


@contextlib.asynccontextmanager
async def _sources(specs: Sequence[str], label: str) -> AsyncIterator[dict[str, MediaStreamTrack]]:
    """Open what ``--source`` names: ``pattern``, ``tone``, ``none`` or a media file."""
    tracks: dict[str, MediaStreamTrack] = {}
    async with contextlib.AsyncExitStack() as stack:
        for spec in specs:
            if spec == "none":
                continue
            if spec == "pattern":
                tracks["video"] = PatternVideoTrack(label=label, seed=_seed(label))
            elif spec == "tone":
                tracks["audio"] = ToneAudioTrack()
            else:
                source = await stack.enter_async_context(await FileSource.open(spec))
                if source.video is not None:
                    tracks["video"] = source.video
                if source.audio is not None:
                    tracks["audio"] = source.audio
        try:
            yield tracks
        finally:
            for track in tracks.values():
                track.stop()


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordingSummary:
    info: RecordingInfo
    fps: dict[str, float]
    """Video arrival rate per participant that sent video."""
    audio: frozenset[str] = frozenset()
    """Participants that sent audio."""
    split: tuple[Path, ...] = ()

    def line(self) -> str:
        parts = []
        for name in sorted(self.fps.keys() | self.audio):
            video = f"{self.fps[name]:.1f} fps" if name in self.fps else ""
            audio = "audio" if name in self.audio else ""
            parts.append(f"{name} {' + '.join(filter(None, (video, audio)))}")
        if self.info.empty:
            path = self.info.path
            text = f"recorded nothing (stopped before any media; no file written to {path})"
        else:
            text = (
                f"recorded {self.info.video_frames} frames ({self.info.duration_s:.1f} s) "
                f"to {self.info.path}"
            )
        text += f"; received: {', '.join(parts) or 'nothing'}"
        if self.split:
            text += f"; {len(self.split)} per-track files in {self.split[0].parent}"
        return text


def _file_safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text).strip("._") or "peer"


class _Peer:
    """A remote participant as the recording sees it: one tile, one mixer input, its tracks."""

    __slots__ = ("key", "split_session", "tracks")

    def __init__(self, key: str) -> None:
        self.key = key
        self.tracks: list[RemoteTrack] = []
        self.split_session: str | None = None  # "" or "-N": its per-track files' suffix


class CallRecorder:
    """Lays every remote participant out on a canvas, mixes their audio, records both.

    Video and audio run on one :class:`MediaClock`, so the recorder lines them up from
    timestamps. A participant gets a tile (a placeholder until its video arrives) from its
    first track until all its tracks end. With ``split_dir`` every remote track is also
    written to its own file there (``NAME-video.mkv`` / ``NAME-audio.mka``; a participant's
    next session ``NAME-video-2.mkv`` / ``NAME-audio-2.mka``), re-encoded from the decoded
    frames, each tagged with where it starts in the room recording (``composite`` puts the
    files of one participant in one tile, at that place).
    """

    def __init__(
        self,
        path: Path,
        *,
        size: tuple[int, int],
        fps: float,
        layout: LayoutName = "grid",
        split_dir: Path | None = None,
        video_codec: VideoCodec | None = None,
    ) -> None:
        clock = MediaClock()
        self._mixer = AudioMixer(clock=clock)
        self._compositor = Compositor(
            width=size[0], height=size[1], fps=fps, layout=layout, clock=clock,
            levels=self._mixer.levels,
        )  # fmt: skip
        self._recorder = Recorder(
            path,
            video=self._compositor.output,
            audio=self._mixer.output,
            fps=fps,
            width=size[0],
            height=size[1],
            clock=clock,
            video_codec=video_codec,
        )
        self._split_dir = split_dir
        self._split_ready = split_dir is None
        self._video_codec = video_codec
        self._tasks: list[asyncio.Task[None]] = []
        self._peers: dict[str, _Peer] = {}  # by peer id, while any of its tracks is live
        self._videos: list[tuple[str, RemoteTrack]] = []
        self._audios: set[str] = set()
        self._pumps: list[TrackPump] = []
        self._split: dict[MediaStreamTrack, Recorder] = {}
        self._split_paths: list[Path] = []
        self._summary: RecordingSummary | None = None

    @property
    def recorder(self) -> Recorder:
        return self._recorder

    @property
    def participants(self) -> int:
        return len(self._peers)

    async def prepare(self) -> None:
        """Create the split directory: a bad one fails before anything joins or opens."""
        if self._split_dir is not None and not self._split_ready:
            try:
                await asyncio.to_thread(self._split_dir.mkdir, parents=True, exist_ok=True)
            except OSError as exc:
                raise MediaError(f"cannot create split directory {self._split_dir}: {exc}") from exc
            self._split_ready = True

    async def start(self, participant: Participant) -> None:
        """Start recording what ``participant`` receives.

        If this fails or is cancelled, what it opened is closed (the file finalised) before
        the error propagates, so a caller without a ``finally`` leaves no broken file.
        """
        try:
            await self._recorder.start()  # first: a cancel from here on leaves a valid file
            await self.prepare()
            loop = asyncio.get_running_loop()
            self._tasks.append(
                loop.create_task(self._feed(participant), name="callbot-record-feed")
            )
            self._tasks.append(loop.create_task(self._tidy(), name="callbot-record-tidy"))
        except BaseException:
            with contextlib.suppress(MediaError):
                await self.aclose()
            raise

    def _key_for(self, track: RemoteTrack) -> str:
        """Tile labels must be unique, display names need not be: add the peer id's tail."""
        peer = self._peers.get(track.peer_id)
        if peer is not None:
            return peer.key
        taken = {p.key for p in self._peers.values()}
        for key in (track.peer_name, f"{track.peer_name} {track.peer_id[-4:]}"):
            if key not in taken:
                return key
        return f"{track.peer_name} {track.peer_id}"

    async def _feed(self, participant: Participant) -> None:
        async for track in participant.tracks():
            try:
                await self._add(track)
            except (MediaError, ValueError) as exc:  # one odd track must not stop the rest
                logger.warning("not recording %r: %s", track, exc)

    async def _add(self, track: RemoteTrack) -> None:
        key = self._key_for(track)
        peer = self._peers.setdefault(track.peer_id, _Peer(key))
        peer.tracks.append(track)
        self._compositor.add_participant(key)
        source: MediaStreamTrack = track
        if self._split_dir is not None:
            pump = TrackPump(track, capacity=4 if track.kind == "video" else 25, name=key)
            self._pumps.append(pump)
            source = pump.subscribe()
            await self._start_split(peer, track.kind, pump.subscribe())
        if track.kind == "video":
            self._compositor.add_track(source, label=key)
            self._videos.append((key, track))
        else:
            self._mixer.add_track(source, label=key)
            self._audios.add(key)

    def _split_path(self, peer: _Peer, kind: str) -> Path:
        """``NAME-KIND[-N].ext``: one ``N`` per session of a participant, so that its video
        and audio files pair up (``composite`` groups them by these names)."""
        assert self._split_dir is not None
        ext = ".mkv" if kind == "video" else ".mka"
        stem = _file_safe(peer.key)
        taken = {p.name for p in self._split_paths}
        if peer.split_session is None:
            n = 1
            while any(
                f"{stem}-{k}{'' if n == 1 else f'-{n}'}{e}" in taken
                for k, e in (("video", ".mkv"), ("audio", ".mka"))
            ):
                n += 1
            peer.split_session = "" if n == 1 else f"-{n}"
        name = f"{stem}-{kind}{peer.split_session}{ext}"
        n = 2
        while name in taken:  # a second track of one kind in one stay: not a pair's half
            name, n = f"{stem}-{kind}{peer.split_session}.{n}{ext}", n + 1
        return self._split_dir / name

    async def _start_split(self, peer: _Peer, kind: str, ring: MediaStreamTrack) -> None:
        path = self._split_path(peer, kind)
        main = self._recorder
        if kind == "video":
            # The sender's rate, not the canvas's: declared from what arrives.
            rec = Recorder(
                path, video=ring, fps=None, video_codec=self._video_codec,
                timeline=lambda: main.origin,
            )  # fmt: skip
        else:
            rec = Recorder(path, video=None, audio=ring, timeline=lambda: main.origin)
        await rec.start()
        self._split[ring] = rec
        self._split_paths.append(path)

    async def _tidy(self) -> None:
        """Drop participants whose tracks all ended; finalise their per-track files."""
        while True:
            await asyncio.sleep(0.25)
            for peer_id, peer in list(self._peers.items()):
                if all(t.ended for t in peer.tracks):
                    del self._peers[peer_id]
                    self._compositor.remove_participant(peer.key)
            for ring, rec in list(self._split.items()):
                if getattr(ring, "ended", False):
                    del self._split[ring]
                    await self._close_split(rec)

    async def _close_split(self, rec: Recorder) -> None:
        try:
            info = await rec.aclose()
        except MediaError as exc:
            logger.warning("per-track recording %s failed: %s", rec.path, exc)
            return
        if info.empty:  # the track ended before its first frame: no file was left
            self._split_paths.remove(rec.path)

    async def aclose(self) -> RecordingSummary:
        """Finalise every file; idempotent."""
        if self._summary is not None:
            return self._summary
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        try:
            info = await self._recorder.aclose()
        finally:
            await self._compositor.aclose()
            await self._mixer.aclose()
            for rec in self._split.values():
                await self._close_split(rec)
            self._split.clear()
            for pump in self._pumps:
                await pump.aclose()
        # Arrival rate where frames are decoded (the compositor's inputs start with a burst).
        fps: dict[str, float] = {}
        for label, track in self._videos:
            fps[label] = max(fps.get(label, 0.0), track.fps)
        self._summary = RecordingSummary(
            info=info, fps=fps, audio=frozenset(self._audios), split=tuple(self._split_paths)
        )
        return self._summary


class _Progress:
    """One live status line on a terminal; a plain log line every few seconds otherwise."""

    def __init__(self, stream: Any = None, *, every_s: float = 5.0) -> None:
        self._stream = stream if stream is not None else sys.stdout
        self._tty = bool(getattr(self._stream, "isatty", lambda: False)())
        self._every = every_s
        self._last_plain = 0.0
        self._drawn = False

    @property
    def tty(self) -> bool:
        return self._tty

    def show(self, text: str, *, force: bool = False) -> None:
        if self._tty:
            self._stream.write("\r\x1b[2K" + text)
            self._stream.flush()
            self._drawn = True
            return
        now = time.monotonic()
        if force or now - self._last_plain >= self._every:
            self._last_plain = now
            print(text, file=self._stream, flush=True)

    def done(self) -> None:
        if self._tty and self._drawn:
            self._stream.write("\n")
            self._stream.flush()
            self._drawn = False


def _human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"  # pragma: no cover - loop always returns


def _clock_text(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h:d}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class _RateMeter:
    """Output fps for the progress line: frames over the media time they span, over about
    the last ``window_s`` of polls. Counting frames per wall-clock window aliases at low
    rates (0.5 fps reads 0 and 1 by turns); media time says exactly how far apart they are.
    """

    def __init__(self, window_s: float = 3.0) -> None:
        self._window = window_s
        self._samples: collections.deque[tuple[float, int, float]] = collections.deque()

    def update(self, now: float, frames: int, media_s: float) -> float:
        """Record a poll (frames written so far, media time of the newest); the rate now."""
        self._samples.append((now, frames, media_s))
        while len(self._samples) > 1 and self._samples[1][0] <= now - self._window:
            self._samples.popleft()
        _, first_frames, first_s = self._samples[0]
        count = frames - first_frames - (first_frames == 0)  # steps between frames
        span = media_s - first_s
        return count / span if count > 0 and span > 0 else 0.0


async def _report_recording(recorder: CallRecorder, progress: _Progress) -> None:
    """Elapsed, output fps, bitrate, size and participants, twice a second."""
    started = time.monotonic()
    meter = _RateMeter()
    while True:
        await asyncio.sleep(0.5)
        now = time.monotonic()
        fps = meter.update(now, recorder.recorder.video_frames, recorder.recorder.video_time_s)
        try:
            size = (await asyncio.to_thread(os.stat, recorder.recorder.path)).st_size
        except OSError:
            size = 0
        elapsed = now - started
        rate = size * 8 / elapsed / 1e6 if elapsed > 0 else 0.0
        progress.show(
            f"recording {_clock_text(elapsed)}  {fps:4.1f} fps  {rate:5.2f} Mb/s  "
            f"{_human_bytes(size)}  {recorder.participants} participants  "
            f"-> {recorder.recorder.path}"
        )


class _Stopper:
    """SIGINT/SIGTERM for the whole command, installed as soon as its loop runs.

    While the command waits in :func:`_until_stopped`, a signal ends that wait, so it leaves
    the way it would at the end of ``--duration``. Before that (connecting, joining), a signal
    cancels the command: its ``async with`` blocks still unwind and close what they opened.
    Once a stop is under way (a signal came, or the wait ended), further signals are ignored:
    a second Ctrl-C must not cancel the finalising of a recording (SIGKILL still ends it).
    """

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.waiting = 0
        self.stopping = False
        self._told = False
        self._task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        for sig in _STOP_SIGNALS:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self._signalled)

    def close(self) -> None:
        """The command is over: ignore the signals while the process exits.

        Left to asyncio, closing the loop would restore the defaults, and a late Ctrl-C
        would turn a finished, finalised stop into exit 130 (SIGTERM into 143).
        """
        self.stopping = True
        loop = asyncio.get_running_loop()
        for sig in _STOP_SIGNALS:
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                if loop.remove_signal_handler(sig):
                    signal.signal(sig, signal.SIG_IGN)

    def _signalled(self) -> None:
        if self.stopping:
            if not self._told:
                self._told = True
                print("callbot: stopping, finishing up (SIGKILL aborts)", file=sys.stderr)
            return
        self.stopping = True
        if self.waiting:
            self.event.set()
        elif self._task is not None:
            self._task.cancel()


async def _until_stopped(stopper: _Stopper, duration: float | None) -> None:
    """Sleep for ``duration`` (forever if None), returning early on SIGINT/SIGTERM."""
    stopper.waiting += 1
    try:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(duration):
                await stopper.event.wait()
    finally:
        stopper.waiting -= 1
        stopper.stopping = True  # what follows is the command's wind-down


async def _run(args: argparse.Namespace) -> int:
    args.stopper = _Stopper()
    try:
        code: int = await args.func(args)
    except asyncio.CancelledError:
        return EXIT_SIGNALLED  # stopped by a signal before it could stop gracefully
    finally:
        args.stopper.close()
    return code


# ----------------------------------------------------------------------------- commands


async def _serve(args: argparse.Namespace) -> int:
    try:
        settings = ServerSettings(
            host=args.host,
            port=args.port,
            max_peers_per_room=args.max_room_size,
            db_path=args.db,
            ring_timeout_s=args.ring_timeout,
            resume_grace_s=args.resume_grace,
            secret=os.environ.get("CALLBOT_SECRET") or None,
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    try:
        async with start_server(settings) as server:
            # Printed, not logged: with --port 0 this is how a user learns the port.
            print(f"callbot relay listening on {server.ws_url}", flush=True)
            await _until_stopped(args.stopper, None)
    except StoreError as exc:  # --db names no usable SQLite file
        raise ConfigError(str(exc)) from None
    # Leaving the block closed every client socket with 1001 (going away).
    return 0


async def _join(args: argparse.Namespace) -> int:
    name = args.name or f"bot-{os.getpid()}"
    calling = args.call is not None
    mode = Mode(args.mode) if args.mode else Mode.CALL if calling or args.answer else Mode.ROOM
    config = ParticipantConfig(
        room=args.room,
        server_url=args.server,
        name=name,
        mode=mode,
        receive=not args.no_receive,
        ice_addresses=tuple(args.ice_address or LOOPBACK_ONLY),
        video_codecs=(args.video_codec,) if args.video_codec else (),
    )
    recorder = (
        CallRecorder(Path(args.record), size=args.canvas, fps=args.fps) if args.record else None
    )
    if args.record:  # before joining: peers would see us arrive, then leave at once
        await asyncio.to_thread(_check_writable, Path(args.record))
    async with (
        _sources(args.source or ["pattern", "tone"], name) as tracks,
        Participant(config, video=tracks.get("video"), audio=tracks.get("audio")) as me,
        contextlib.AsyncExitStack() as tasks,
    ):
        print(f"joined room {args.room!r} as {me.peer_id} ({len(me.peers)} others)", flush=True)
        if recorder is not None:
            await recorder.start(me)
        # We stop on duration/signal, or when the call we placed is over.
        stoppers = [
            asyncio.create_task(_until_stopped(args.stopper, args.duration), name="callbot-stop")
        ]
        if calling:
            stoppers.append(asyncio.create_task(_place_call(me, args.call), name="callbot-call"))
        jobs = [*stoppers, asyncio.create_task(_say_connection(me), name="callbot-conn")]
        if args.answer:
            jobs.append(asyncio.create_task(_answer(me, args.answer), name="callbot-answer"))
        tasks.push_async_callback(_cancel, jobs)
        try:
            done, _ = await asyncio.wait(stoppers, return_when=asyncio.FIRST_COMPLETED)
            for job in done:
                job.result()
        finally:
            if recorder is not None:
                print((await recorder.aclose()).line(), flush=True)
    return 0


def _check_writable(path: Path) -> None:
    """Refuse an output file that cannot be created (blocking: run it in a thread)."""
    parent = path.parent
    if not parent.is_dir():
        raise ConfigError(f"cannot record to {path}: no directory {parent}")
    if path.is_dir():
        raise ConfigError(f"cannot record to {path}: it is a directory")
    if not os.access(parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ConfigError(f"cannot record to {path}: permission denied")


def _check_join(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Flags that contradict each other: argparse's usage error (exit 2)."""
    if args.no_receive and args.record:
        parser.error("--record records what the others send, which --no-receive never decodes")


async def _say_connection(me: Participant, progress: _Progress | None = None) -> None:
    """One line per change of the relay connection (media goes on while it is away)."""
    first = True
    async for state in me.connection_states():
        if first:
            first = False
            continue
        text = f"relay: {state.state}"
        if state.state is LinkState.RECONNECTING:
            text += f" (attempt {state.attempt})"
        elif state.reason and state.state is not LinkState.CONNECTED:
            text += f" ({state.reason})"
        if progress is not None:
            progress.done()  # end the live line so this one stands on its own
        print(text, flush=True)


async def _cancel(tasks: Sequence[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def _answer(me: Participant, policy: str) -> None:
    """Answer every incoming call by ``policy``: auto (accept), decline, or ignore (let it ring).

    One call at a time: others keep ringing until this one is over for us; one that ended
    meanwhile is reported as missed. No failure of one call stops the answering.
    """
    async for call in me.incoming_calls():
        if call.status is CallStatus.ENDED:
            print(f"missed call {call.call_id} from {call.started_by} ({call.reason})", flush=True)
            continue
        print(f"incoming call {call.call_id} from {call.started_by}: {policy}", flush=True)
        try:
            if policy == "auto":
                await _relay_command(me, call.accept, functools.partial(_rings_us, me, call))
                if call.joined:
                    await _hang_up_when_over(me, call)
            elif policy == "decline":
                await _relay_command(me, call.decline, functools.partial(_rings_us, me, call))
        except CallbotError as exc:  # e.g. it ended while we were answering
            print(f"could not {policy} call {call.call_id}: {exc}", flush=True)


def _rings_us(me: Participant, call: Call) -> bool:
    """``call`` still waits for our answer (a target that has neither accepted nor declined)."""
    info, us = call.info, me.peer_id
    return (
        info.status is not CallStatus.ENDED
        and us in info.targets
        and us not in info.declined_by
        and us not in info.participants
    )


async def _relay_command(
    me: Participant, command: Callable[[], Awaitable[CallInfo]], needed: Callable[[], bool]
) -> None:
    """Send a call command. If the relay connection drops under it, wait until the participant
    is back (its calls resynced) and send it again while ``needed()`` says the relay has not
    applied it: the first one may have got through before the drop. Gives up (re-raising)
    after RELAY_COMMAND_TRIES, so a relay that keeps failing it cannot hold the bot for ever."""
    for attempt in range(1, RELAY_COMMAND_TRIES + 1):
        failed_at = time.monotonic()
        try:
            await command()
            return
        except ConnectError as exc:
            if attempt == RELAY_COMMAND_TRIES:
                raise
            logger.warning("call command not sent (%s); again once the relay is back", exc)
        await _relay_back(me, failed_at)
        if not needed():
            return


async def _relay_back(me: Participant, since: float) -> None:
    """Wait (up to RELAY_BACK_S) until ``me`` has reconnected to the relay after ``since``
    (``time.monotonic()``); ``ConnectError`` if it has given up. Still connected a moment
    later (the relay was only slow to reply, the socket is fine): at once."""
    if me.connection.connected:
        await asyncio.sleep(RELAY_SLOW_PAUSE_S)  # time for a dropped socket to be noticed
        if me.connection.connected:
            return
    with contextlib.suppress(TimeoutError):
        async with (
            asyncio.timeout(RELAY_BACK_S),
            contextlib.aclosing(me.connection_states()) as states,
        ):
            async for state in states:
                if state.state is LinkState.CONNECTED and state.since >= since:
                    return
                if state.state is LinkState.CLOSED:
                    raise ConnectError(f"lost the relay: {state.reason}")


async def _hang_up_when_over(me: Participant, call: Call) -> CallInfo:
    """Leave once everyone else has; return the final state of the call as we saw it.

    It cannot wait for ever: a call the relay forgot in a restart ends locally
    (``relay_restart``), and a relay lost for good raises ``CallbotError``.
    """
    info = await call.wait_alone_or_ended()
    if info.status is not CallStatus.ENDED:
        if not call.joined:  # we lost our place in it (away too long); it goes on without us
            print(f"call {info.call_id} goes on without us", flush=True)
            return info
        try:
            await _relay_command(me, call.leave, lambda: call.joined)
        except ServerError:
            if call.status is not CallStatus.ENDED:
                raise
            # it ended just before our leave: the mirror has how
        else:
            # We were the last one in it: the relay ends it right after our leave is applied
            # (unless a target accepted just before: then it goes on).
            info = await call.wait_until(
                lambda i: i.status is CallStatus.ENDED or bool(i.participants), timeout_s=10
            )
            if info.status is not CallStatus.ENDED:
                print(f"left call {info.call_id}; it goes on without us", flush=True)
                return info
    info = call.info
    print(
        f"call {info.call_id} ended: {info.reason} after {info.duration_s or 0:.1f} s "
        f"(declined by {', '.join(info.declined_by) or 'nobody'})",
        flush=True,
    )
    return info


async def _place_call(me: Participant, targets: Sequence[str]) -> None:
    """Ring ``targets`` (names or peer ids; ``all``: everyone else), wait for the call to end."""
    named = [t for t in targets if t != "all"]
    peers = await me.wait_for_peers(named, timeout_s=None)
    call = await me.start_call([p.peer_id for p in peers] if named else None)
    print(f"calling {', '.join(call.info.targets)}: call {call.call_id}", flush=True)
    await _hang_up_when_over(me, call)


async def _record(args: argparse.Namespace) -> int:
    output = Path(args.output)
    config = ParticipantConfig(
        room=args.room,
        server_url=args.server,
        name=args.name,
        ice_addresses=tuple(args.ice_address or LOOPBACK_ONLY),
    )
    recorder = CallRecorder(
        output,
        size=args.size,
        fps=args.fps,
        layout=args.layout,
        split_dir=Path(args.split) if args.split else None,
        video_codec=args.codec,
    )
    await asyncio.to_thread(_check_writable, output)  # before peers see us join
    progress = _Progress()
    await recorder.prepare()  # a bad --split DIR fails before joining
    async with Participant(config) as me:
        print(f"recording room {args.room!r} as {me.peer_id} to {output}", flush=True)
        helpers: list[asyncio.Task[None]] = []
        try:
            await recorder.start(me)
            helpers = [
                asyncio.create_task(_report_recording(recorder, progress), name="callbot-prog"),
                asyncio.create_task(_say_connection(me, progress), name="callbot-conn"),
            ]
            await _until_stopped(args.stopper, args.duration)
        finally:
            await _cancel(helpers)
            progress.done()
            summary = await recorder.aclose()
            print(summary.line(), flush=True)
    return 0


async def _composite(args: argparse.Namespace) -> int:
    job = await asyncio.to_thread(
        CompositeJob,
        args.inputs,
        args.output,
        layout=args.layout,
        width=args.size[0],
        height=args.size[1],
        fps=args.fps,
        video_codec=args.codec,
    )
    progress = _Progress(every_s=2.0)
    runner = asyncio.create_task(asyncio.to_thread(job.run), name="callbot-composite")
    stop = asyncio.create_task(_until_stopped(args.stopper, None), name="callbot-composite-stop")
    started = time.monotonic()
    try:
        while not runner.done():
            await asyncio.wait([runner, stop], timeout=0.25, return_when=asyncio.FIRST_COMPLETED)
            if stop.done() and not runner.done():
                job.cancel()  # stops within the current frame, then finalises the file
            elapsed = time.monotonic() - started
            done, total = job.frames_done, job.total_frames
            speed = done / job.fps / elapsed if elapsed > 0 else 0.0
            bar = "#" * (30 * done // total) + "-" * (30 - 30 * done // total)
            progress.show(
                f"[{bar}] {100 * done // total:3d}%  {done}/{total} frames  {speed:4.1f}x real time"
            )
    finally:
        await _cancel([stop])
        progress.done()
    result = await runner
    if result.cancelled:
        print(
            f"stopped: composed {result.duration_s:.1f} s of {job.duration_s:.1f} s into "
            f"{result.path} (playable up to there)",
            flush=True,
        )
        return EXIT_SIGNALLED
    print(
        f"composed {len(result.inputs)} files as {len(job.participants)} participants "
        f"({', '.join(job.participants)}) into {result.path}: "
        f"{result.video_frames} frames, {result.duration_s:.1f} s",
        flush=True,
    )
    return 0


async def _calls(args: argparse.Namespace) -> int:
    check_room(args.room)  # the relay's rules, as join checks them
    url = _http_url(args.server, f"/rooms/{quote(args.room, safe='')}/calls")
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        try:
            async with session.get(url, params={"limit": str(args.limit)}) as response:
                status = response.status
                try:
                    body = await response.json(content_type=None)
                except ValueError:
                    body = None
        except (aiohttp.ClientError, TimeoutError) as exc:
            detail = str(exc) or type(exc).__name__
            raise ConnectError(f"cannot reach the relay at {args.server}: {detail}") from None
    if status != 200 and isinstance(body, dict) and "code" in body:
        raise CallbotError(f"{body.get('code')}: {body.get('message')}")
    calls = body.get("calls") if isinstance(body, dict) else None
    if status != 200 or not isinstance(calls, list):
        raise CallbotError(f"{url} did not answer with call history (HTTP {status})")
    if args.json:
        print(json.dumps(calls, indent=2))
        return 0
    rows = [["CALL", "STATUS", "STARTED (UTC)", "BY", "TARGETS", "DECLINED", "REASON", "SECONDS"]]
    for c in calls:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(c["started_at"]))
        duration = c.get("duration_s")
        rows.append([
            c["call_id"], c["status"], started, c["started_by"], ",".join(c["targets"]),
            ",".join(c["declined_by"]) or "-", c.get("reason") or "-",
            f"{duration:.1f}" if duration is not None else "-",
        ])  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    if not calls:
        print(f"(no calls in room {args.room!r})")
    return 0


def _http_url(ws_url: str, path: str) -> str:
    parts = urlsplit(ws_url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme)
    if scheme is None:
        raise ConfigError(f"server URL {ws_url!r} must start with ws:// or wss://")
    return urlunsplit((scheme, parts.netloc, path, "", ""))


async def _demo(args: argparse.Namespace) -> int:
    output = Path(args.output)
    room = "demo"
    async with start_server(ServerSettings(port=0)) as server:
        url = server.ws_url
        recorder = CallRecorder(output, size=(1280, 720), fps=30.0)
        viewer = Participant(ParticipantConfig(room=room, server_url=url, name="recorder"))
        sources = {
            i: (PatternVideoTrack(label=f"bot-{i}", seed=i), ToneAudioTrack(frequency=330.0 * i))
            for i in range(1, 4)
        }
        bots = [
            Participant(
                ParticipantConfig(room=room, server_url=url, name=f"bot-{i}", receive=False),
                video=video,
                audio=tone,
            )
            for i, (video, tone) in sources.items()
        ]
        try:
            await viewer.join()
            for bot in bots:
                await bot.join()
            await viewer.wait_connected(len(bots), timeout_s=30)
            await recorder.start(viewer)
            started = time.monotonic()
            await _until_stopped(args.stopper, args.duration)
            logger.info("recorded for %.1f s", time.monotonic() - started)
        finally:
            summary = await recorder.aclose()
            for bot in bots:
                await bot.aclose()
            await viewer.aclose()
            for pair in sources.values():
                for track in pair:
                    track.stop()
    print(summary.info.path.resolve())
    print(summary.line())
    if args.json:
        print(
            json.dumps(
                {
                    "path": str(summary.info.path),
                    "frames": summary.info.video_frames,
                    "fps": summary.fps,
                }
            )
        )
    return 0


# ----------------------------------------------------------------------------- analyze, probe


class InputError(MediaError):
    """Input ``analyze``/``probe`` cannot measure; ``code`` names the kind, for scripts."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


@dataclass(frozen=True, slots=True)
class PatternArg:
    """``--pattern WxH[,LABEL[,SEED[,FPS]]]``; ``fps`` None: the file's nominal frame rate."""

    width: int
    height: int
    label: str = ""
    seed: int = 0
    fps: float | None = None


def _pattern(text: str) -> PatternArg:
    """How the recorded PatternVideoTrack was built. The FPS is the pattern's own: its motion
    depends on it, and a recorder may declare another rate (``Recorder(fps=30)`` of a 15 fps
    pattern)."""
    parts = text.split(",")
    if len(parts) > 4:
        raise argparse.ArgumentTypeError(f"{text!r} has more fields than WxH,LABEL,SEED,FPS")
    w, h = _pattern_size(parts[0])
    label = parts[1] if len(parts) > 1 else ""
    seed_text = parts[2] if len(parts) > 2 else ""
    try:
        seed = int(seed_text) if seed_text else 0
    except ValueError:
        raise argparse.ArgumentTypeError(f"seed {seed_text!r} is not a whole number") from None
    fps = None
    if len(parts) > 3 and parts[3]:
        try:
            fps = _fps(parts[3])
        except argparse.ArgumentTypeError as exc:
            raise argparse.ArgumentTypeError(f"fps {parts[3]!r}: {exc}") from None
    return PatternArg(w, h, label, seed, fps)


LOW_PSNR_DB = 25.0  # an intact stamped recording of the right pattern is far above this
RATE_MISMATCH = 0.1  # stamp rate vs the reference's fps, as a share


@dataclass(slots=True)
class FileAnalysis:
    """What ``analyze`` measured in one file, and what looks wrong about the reference."""

    summary: VideoSummary
    analyzer: VideoAnalyzer
    spec: PatternSpec | None
    stamp_fps: float | None
    """Frame numbers per second of capture clock: the rate the source actually produced."""
    warnings: list[str]


def _first_stamp(path: Path) -> tuple[float, int] | None:
    """(pts seconds, capture ms) of the first stamped frame: anchors file time to the stamps."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        with contextlib.suppress(av.FFmpegError):
            for frame in container.decode(stream):
                stamp = read_stamp(frame)
                if stamp is not None and frame.time is not None:
                    return frame.time, stamp.capture_time_ms
    return None


def _nominal_rate(stream: av.video.stream.VideoStream) -> float | None:
    """The stream's nominal frame rate. Not ``average_rate``: that is frames / duration
    (2280/91 for 76 frames of a 30-fps MP4), and the pattern's motion needs the exact rate."""
    for rate in (stream.guessed_rate, stream.base_rate, stream.average_rate):
        if rate:
            return float(rate)
    return None


def _reference_warnings(
    summary: VideoSummary, spec: PatternSpec | None, stamp_fps: float | None
) -> list[str]:
    """Every frame stamped (so it is a callbot pattern) yet a PSNR no intact recording of it
    has: the reference is wrong (fps, size, label or seed), not the recording."""
    psnr = (summary.psnr_db or {}).get("mean")
    if spec is None or psnr is None or summary.stamped < summary.frames:
        return []
    mismatch = stamp_fps is not None and abs(stamp_fps - spec.fps) > RATE_MISMATCH * spec.fps
    if psnr >= LOW_PSNR_DB and not (mismatch and psnr < 35.0):
        return []
    rate = (
        f"; the stamps advance at {stamp_fps:.1f} frames/s but the reference assumes "
        f"{spec.fps:g} fps: give the pattern's fps as --pattern "
        f"{spec.width}x{spec.height},{spec.label},{spec.seed},FPS"
        if mismatch and stamp_fps is not None
        else ""
    )
    return [
        f"every frame is stamped but PSNR is only {psnr:.1f} dB: the --pattern reference "
        f"(size, label, seed, fps) is probably not the recorded pattern{rate}"
    ]


def _analyze_file(path: Path, pattern: PatternArg | None, *, keep_worst: int) -> FileAnalysis:
    """Decode a recording of a stamped source and analyse every frame (blocking).

    A file has no receive clock: a frame's arrival is its pts, anchored so that the first
    stamped frame arrived when it was captured. Latencies are then the delay of each frame
    relative to the first one (what the recording path added or recovered), not absolute.
    """
    if path.is_dir():
        raise InputError("not_video", f"{path} is a directory, not a recording")
    if not path.is_file():
        raise InputError("not_found", f"no such file: {path}")
    try:
        with av.open(str(path)) as container:
            streams = container.streams.video
            if not streams:
                raise InputError("not_video", f"{path} has no video stream")
            rate = _nominal_rate(streams[0])
    except (av.FFmpegError, ValueError) as exc:
        raise InputError("not_video", f"{path} is not a readable media file: {exc}") from None
    fps = rate or 30.0
    anchor = _first_stamp(path)
    if anchor is None:
        raise InputError(
            "no_stamps",
            f"no stamped frame in {path}: not a recording of one callbot test pattern (a "
            "composite, as join --record and record -o write, has its stamps inside the tiles: "
            "analyze the per-track files of record --split DIR)",
        )
    offset = anchor[1] / 1000.0 - anchor[0]
    spec = None
    if pattern is not None:
        spec = PatternSpec(
            width=pattern.width, height=pattern.height, fps=pattern.fps or fps,
            label=pattern.label, seed=pattern.seed,
        )  # fmt: skip
    analyzer = VideoAnalyzer(reference=spec, keep_worst=keep_worst)
    first: tuple[int, int] | None = None  # (frame number, capture ms) of the first stamp
    last: tuple[int, int] | None = None  # ... and of the highest frame number
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        index = 0
        try:
            for frame in container.decode(stream):
                time_s = frame.time if frame.time is not None else index / fps
                record = analyzer.add(frame, time_s + offset)
                index += 1
                number, capture = record.frame_number, record.capture_ms
                if number is None or capture is None:
                    continue
                first = first or (number, capture)
                if last is None or number > last[0]:
                    last = (number, capture)
        except av.FFmpegError as exc:  # a recording cut short: keep what decoded
            logger.warning("stopped decoding %s after %d frames: %s", path, index, exc)
    stamp_fps = None
    if first is not None and last is not None and last[1] - first[1] >= 500:
        stamp_fps = (last[0] - first[0]) * 1000.0 / (last[1] - first[1])
    summary = analyzer.summary()
    warnings = _reference_warnings(summary, spec, stamp_fps)
    return FileAnalysis(summary, analyzer, spec, stamp_fps, warnings)


def _summary_lines(summary: VideoSummary, *, latency: str = "latency") -> list[str]:
    lat, psnr, ssim = summary.latency_ms, summary.psnr_db, summary.ssim
    lines = [
        f"frames    {summary.frames} (stamped {summary.stamped})  drops {summary.drops}  "
        f"duplicates {summary.duplicates}  reordered {summary.reordered}",
        f"fps       {summary.fps:.1f}",
        f"freezes   {summary.freezes} (longest {summary.max_freeze_ms:.0f} ms, "
        f"frozen {summary.frozen_ms:.0f} ms)",
    ]
    if lat:
        lines.append(
            f"{latency:9s} median {lat['median']:.1f} ms  p95 {lat['p95']:.1f} ms  "
            f"max {lat['max']:.1f} ms"
        )
    if psnr:
        lines.append(f"PSNR      mean {psnr['mean']:.1f} dB  min {psnr['min']:.1f} dB")
    if ssim:
        lines.append(f"SSIM      mean {ssim['mean']:.3f}  min {ssim['min']:.3f}")
    sizes = ", ".join(f"{w}x{h}" for _, w, h in summary.resolutions)
    if sizes:
        lines.append(f"size      {sizes}")
    return lines


def _analyze(args: argparse.Namespace) -> int:
    """Synchronous: no event loop, so decoding and drawing may block."""
    path = Path(args.file)
    result = _analyze_file(path, args.pattern, keep_worst=WORST_FRAMES if args.html else 0)
    summary, spec = result.summary, result.spec
    report = None
    if args.html:
        stream = StreamReport(
            label=path.name, video=summary, records=result.analyzer.records, reference=spec,
            worst=worst_pictures(result.analyzer.worst_frames()),
            notes=(
                "latency is each frame's delay relative to the first stamped frame",
                *result.warnings,
            ),
        )  # fmt: skip
        report = render_report(args.html, [stream], title=f"callbot analyze {path.name}")
    if args.json:
        print(
            json.dumps(
                {
                    "file": str(path),
                    "video": summary.as_dict(),
                    "reference": dataclasses.asdict(spec) if spec else None,
                    "stamp_fps": result.stamp_fps,
                    "latency_basis": "first_frame",
                    "warnings": result.warnings,
                    "report": str(report) if report else None,
                }
            )
        )
        return 0
    print(path)
    print("\n".join(_summary_lines(summary, latency="delay")))
    print("(delay: each frame's latency relative to the first stamped frame)")
    if spec is None:
        print("(no PSNR/SSIM: give --pattern WxH[,LABEL[,SEED[,FPS]]] of the recorded pattern)")
    for warning in result.warnings:
        print(f"warning   {warning}")
    if report is not None:
        print(f"report    {report}")
    return 0


async def _probe(args: argparse.Namespace) -> int:
    config = ParticipantConfig(
        room=args.room,
        server_url=args.server,
        name=args.name,
        ice_addresses=tuple(args.ice_address or LOOPBACK_ONLY),
    )
    probes: list[tuple[RemoteTrack, TrackProbe]] = []

    def reference(track: RemoteTrack) -> PatternSpec | None:
        if args.reference != "names" or track.kind != "video":
            return None
        w, h = args.pattern_size
        return PatternSpec(width=w, height=h, label=track.peer_name, seed=_seed(track.peer_name))

    async def attach(me: Participant) -> None:
        async for track in me.tracks():
            probe = TrackProbe(
                track,
                reference=reference(track),
                frequency=440.0 if args.reference == "names" and track.kind == "audio" else None,
                label=f"{track.peer_name} {track.kind}",
                keep_worst=WORST_FRAMES if args.html else 0,
            )
            probe.start()
            probes.append((track, probe))

    # Receive-only: nothing is published, so the probe never disturbs what it measures.
    async with Participant(config) as me:
        print(
            f"probing room {args.room!r} as {me.peer_id} ({len(me.peers)} others) "
            f"for {args.duration:g} s",
            file=sys.stderr if args.json else sys.stdout,
            flush=True,
        )
        attacher = asyncio.create_task(attach(me), name="callbot-probe-attach")
        try:
            await _until_stopped(args.stopper, args.duration)
        finally:
            await _cancel([attacher])
            for _, probe in probes:
                await probe.aclose()
    if not probes:
        raise InputError(
            "no_media", f"nobody in room {args.room!r} sent media within {args.duration:g} s"
        )
    streams: list[StreamReport] = []
    by_peer: dict[str, dict[str, Any]] = {}
    videos = {track.peer_id: probe for track, probe in probes if track.kind == "video"}
    for track, probe in probes:
        peer = by_peer.setdefault(
            track.peer_id, {"peer_id": track.peer_id, "name": track.peer_name}
        )
        if track.kind == "video":
            video = await asyncio.to_thread(probe.video_summary)
            peer["video"] = video.as_dict()
            ref = reference(track)
            worst = await asyncio.to_thread(worst_pictures, probe.worst_frames())
            records = probe.records if args.html else []  # only the report plots them
            streams.append(
                StreamReport(
                    label=probe.label, video=video, records=records, reference=ref, worst=worst
                )
            )
        else:
            video_probe = videos.get(track.peer_id)
            flashes = video_probe.flashes if video_probe is not None else ()
            audio = await asyncio.to_thread(probe.audio_summary, flashes)
            peer["audio"] = audio.as_dict()
            streams.append(StreamReport(label=probe.label, audio=audio))
    report = None
    if args.html:
        report = await write_report(args.html, streams, title=f"callbot probe {args.room}")
    if args.json:
        print(json.dumps({"room": args.room, "participants": list(by_peer.values()),
                          "report": str(report) if report else None}))  # fmt: skip
        return 0
    for stream in streams:
        print(stream.label)
        if stream.video is not None:
            for line in _summary_lines(stream.video):
                print("  " + line)
        if stream.audio is not None:
            print("  " + describe_audio(stream.audio))
    if report is not None:
        print(f"report    {report}")
    return 0


BENCHMARKS = {
    "analysis": "bench.analysis",
    "compositor": "bench.compositor",
    "record": "bench.record",
    "resilience": "bench.resilience",
    "scale": "bench.scale",
}


def _bench(args: argparse.Namespace) -> int:
    """Synchronous: a benchmark owns its event loops so setup never counts against the loop."""
    module = importlib.import_module(BENCHMARKS[args.name])
    result: dict[str, float] = module.run(args.frames)
    print_result(result, as_json=args.json)
    return 0


# ----------------------------------------------------------------------------- parser


def _add_server_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--server",
        default=_env("SERVER", DEFAULT_SERVER_URL),
        help=f"relay WebSocket URL (default {DEFAULT_SERVER_URL}; CALLBOT_SERVER)",
    )


def _add_html_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--html", metavar="DIR",
        help="also write an HTML report with plots and the worst frames to DIR (needs the "
        "report extra: pip install 'callbot[report]')",
    )  # fmt: skip


def _add_codec_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--codec", choices=["h264", "vp8"],
        help="video codec (default: h264 for .mkv/.mp4, vp8 for .webm; .mkv takes either, "
        ".mp4 only h264, .webm only vp8)",
    )  # fmt: skip


def _add_layout_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--layout", choices=LAYOUTS, default="grid",
        help="grid: everyone equal; speaker: the active speaker large over a filmstrip; pip: "
        "the active speaker full-frame, the others as insets (default grid)",
    )  # fmt: skip
    parser.add_argument(
        "--size", type=_size, default=(1280, 720), metavar="WxH",
        help="canvas size (default 1280x720)",
    )  # fmt: skip
    parser.add_argument(
        "--fps", type=_fps, default=30.0, help="frame rate, 1 to 120 (default 30)"
    )  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="callbot",
        description="Headless WebRTC participants, a signaling relay and call recording.",
    )
    parser.add_argument(
        "--log-level",
        default=_env("LOG_LEVEL", "warning"),
        choices=LOG_LEVELS,
        help="default: warning (CALLBOT_LOG_LEVEL)",
    )
    parser.add_argument(
        "--log-format",
        default=_env("LOG_FORMAT", "text"),
        choices=LOG_FORMATS,
        help="log line format (CALLBOT_LOG_FORMAT)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser(
        "serve",
        help="run the signaling relay and its browser client",
        description="Run the signaling relay (WebSocket at /ws) and serve the browser client "
        "at / (join a room with camera and microphone, talk to bots).",
    )
    serve.add_argument(
        "--host",
        default=_env("HOST", "127.0.0.1"),
        help="address to bind (default 127.0.0.1; CALLBOT_HOST)",
    )
    serve.add_argument(
        "--port",
        type=_int_in(0, 65535),
        default=_env("PORT", "8080"),  # a string: argparse converts (and checks) it
        help="port (default 8080; 0 picks a free one; CALLBOT_PORT)",
    )
    serve.add_argument(
        "--max-room-size",
        type=_int_in(1, 100_000),
        default=64,
        metavar="N",
        help="peers allowed in one room (default 64); more are refused",
    )
    serve.add_argument(
        "--db",
        default=os.environ.get("CALLBOT_DB"),
        metavar="PATH",
        help="SQLite file for call history and live calls, kept across restarts: a call goes on "
        "through a restart (CALLBOT_DB; default: in memory)",
    )
    serve.add_argument(
        "--ring-timeout",
        type=_positive,
        default=90.0,
        metavar="SECONDS",
        help="a call nobody answers ends no_answer after this long (default 90)",
    )
    serve.add_argument(
        "--resume-grace",
        type=_non_negative,
        default=DEFAULT_RESUME_GRACE_S,
        metavar="SECONDS",
        help="a peer whose connection drops may resume (same id, no churn) for this long before "
        f"the room hears it left (default {DEFAULT_RESUME_GRACE_S:g}; 0 = at once); also how "
        "long the members of a call restored after a restart (--db) have to come back. Resume "
        "tokens survive a restart with --db or CALLBOT_SECRET (16+ characters)",
    )
    serve.set_defaults(func=_serve)

    join = sub.add_parser(
        "join",
        help="put a bot into a room",
        description="Join ROOM, connect to everyone in it, publish a source, optionally record "
        "the composite of what the others send. Leaves after --duration or on Ctrl-C/SIGTERM.",
    )
    join.add_argument("room", help="room to join")
    _add_server_flag(join)
    join.add_argument("--name", help="display name (default bot-PID)")
    join.add_argument(
        "--source",
        action="append",
        metavar="pattern|tone|none|PATH",
        help="what to publish; repeatable (default: pattern and tone). PATH is a media file, "
        "looped",
    )
    join.add_argument(
        "--record",
        metavar="FILE",
        help="record the others to FILE (.mkv, .mp4 or .webm; crash-safe)",
    )
    join.add_argument(
        "--duration",
        type=_positive,
        metavar="SECONDS",
        help="leave after this long (default: run until stopped)",
    )
    join.add_argument(
        "--canvas",
        type=_size,
        default=(1280, 720),
        metavar="WxH",
        help="recording canvas size (default 1280x720)",
    )
    join.add_argument("--fps", type=_fps, default=30.0, help="recording frame rate (1 to 120)")
    join.add_argument(
        "--no-receive",
        action="store_true",
        help="publish only: negotiate send-only media and decode nothing",
    )
    join.add_argument(
        "--video-codec",
        type=str.upper,
        choices=["VP8", "H264"],
        help="video codec to use with every peer (default: VP8 first, H264 if the peer asks)",
    )
    join.add_argument(
        "--ice-address", action="append", metavar="IP",
        help="local address ICE may offer; repeatable (default 127.0.0.1 only: calls on this "
        "machine). Give your LAN address to call across machines",
    )  # fmt: skip
    join.add_argument(
        "--mode",
        choices=["room", "call"],
        help="room: media with everyone present (default); call: media only with "
        "the other participants of our call (default with --call/--answer)",
    )
    join.add_argument(
        "--call",
        nargs="+",
        metavar="all|PEER",
        help="ring everyone else (all) or these peers (names or ids) once they are "
        "present; leave when the call ends",
    )
    join.add_argument(
        "--answer",
        choices=["auto", "decline", "ignore"],
        help="what to do when rung: accept, decline, or let it ring",
    )
    join.set_defaults(func=_join, check=lambda args: _check_join(join, args))

    record = sub.add_parser(
        "record",
        help="record a room to a crash-safe file",
        description="Join ROOM as a silent participant and record everyone in it: their videos "
        "laid out on one canvas, their audio mixed (48 kHz stereo), into FILE (.mkv or .mp4 "
        "H.264, .webm VP8; a crash loses at most the last ~2 s). Stops after --duration or on "
        "Ctrl-C/SIGTERM, finalising the file. Shows live progress on a terminal.",
    )
    record.add_argument("room", help="room to record")
    record.add_argument("-o", "--output", required=True, metavar="FILE", help="file to write")
    _add_server_flag(record)
    record.add_argument("--name", default="recorder", help="display name (default recorder)")
    _add_layout_flags(record)
    record.add_argument(
        "--duration", type=_positive, metavar="SECONDS",
        help="stop after this long (default: until Ctrl-C/SIGTERM)",
    )  # fmt: skip
    record.add_argument(
        "--split", metavar="DIR",
        help="also write every participant's track to its own file in DIR "
        "(NAME-video.mkv, NAME-audio.mka; tagged with where they start in FILE, so "
        "'composite DIR/*' lays them out in time, one tile per participant)",
    )  # fmt: skip
    _add_codec_flag(record)
    record.add_argument(
        "--ice-address", action="append", metavar="IP",
        help="local address ICE may offer; repeatable (default 127.0.0.1 only)",
    )  # fmt: skip
    record.set_defaults(func=_record)

    composite = sub.add_parser(
        "composite",
        help="compose existing recordings into one file",
        description="Lay the videos of INPUT files out on one canvas (the same compositor and "
        "layouts as live recording), mix their audio, and write OUTPUT as fast as possible, "
        "with a progress bar. NAME-video and NAME-audio files (from record --split) are one "
        "participant, placed at the time they were recorded; other inputs start at 0 s.",
    )
    composite.add_argument("inputs", nargs="+", metavar="INPUT", help="media files to compose")
    composite.add_argument("-o", "--output", required=True, metavar="OUTPUT", help="file to write")
    _add_layout_flags(composite)
    _add_codec_flag(composite)
    composite.set_defaults(func=_composite)

    demo = sub.add_parser(
        "demo",
        help="run a whole call in-process and record it",
        description="Start a relay in-process, put three bots with different patterns and tones "
        "into a room, record the composite, print the file's path and a summary.",
    )
    demo.add_argument(
        "--duration",
        type=_positive,
        default=5.0,
        metavar="SECONDS",
        help="seconds to record once everyone is connected (default 5)",
    )
    demo.add_argument(
        "--output",
        default="callbot-demo.mkv",
        metavar="FILE",
        help="recording to write (default callbot-demo.mkv)",
    )
    demo.add_argument("--json", action="store_true", help="also print a JSON summary line")
    demo.set_defaults(func=_demo)

    calls = sub.add_parser(
        "calls", help="print a room's call history",
        description="Print ROOM's calls, newest first, from the relay's history.",
    )  # fmt: skip
    calls.add_argument("room", help="room whose calls to list")
    _add_server_flag(calls)
    calls.add_argument(
        "--limit", type=_int_in(1, 100), default=20, help="how many calls (1-100, default 20)"
    )
    calls.add_argument("--json", action="store_true", help="print JSON instead of a table")
    calls.set_defaults(func=_calls)

    analyze = sub.add_parser(
        "analyze", help="measure a recording of a stamped test pattern",
        description="Decode FILE (a recording of one callbot test pattern, e.g. a Recorder of "
        "a PatternVideoTrack or a per-track file of record --split DIR; not a composite) and "
        "print frames, drops, duplicates, reordering, freezes, fps, "
        "the delay of each frame relative to the first (a file has no receive clock: a frame's "
        "arrival is its timestamp) and, with --pattern, PSNR/SSIM against the regenerated "
        "source. Exits 1 with not_found, not_video or no_stamps on bad input.",
    )  # fmt: skip
    analyze.add_argument("file", metavar="FILE", help="the recording to measure")
    analyze.add_argument("--json", action="store_true", help="print one JSON object")
    _add_html_flag(analyze)
    analyze.add_argument(
        "--pattern", type=_pattern, metavar="WxH[,LABEL[,SEED[,FPS]]]",
        help="how the recorded pattern was built (PatternVideoTrack width, height, label, "
        "seed, fps), to compute PSNR/SSIM; FPS defaults to the file's nominal rate, which is "
        "the recorder's; callbot join sends 640x480 at 30 fps, its name, and a seed from it",
    )  # fmt: skip
    analyze.set_defaults(func=_analyze)

    probe = sub.add_parser(
        "probe", help="join a room live and measure everyone's media",
        description="Join ROOM receive-only (publishing nothing), measure every track of every "
        "participant for --duration seconds (fps, drops, freezes, latency, PSNR/SSIM; audio "
        "presence, level, glitches) and print a summary per participant. Exits 1 if the relay "
        "is unreachable or nobody sent media (no_media).",
    )  # fmt: skip
    probe.add_argument("room", help="room to probe")
    _add_server_flag(probe)
    probe.add_argument("--name", default="probe", help="display name (default probe)")
    probe.add_argument(
        "--duration", type=_positive, default=10.0, metavar="SECONDS",
        help="how long to measure (default 10)",
    )  # fmt: skip
    probe.add_argument("--json", action="store_true", help="print one JSON object")
    _add_html_flag(probe)
    probe.add_argument(
        "--reference", choices=["names", "none"], default="names",
        help="names: assume each peer sends callbot join's pattern labelled with its name and a "
        "440 Hz tone, so PSNR/SSIM are computed (default); none: no reference",
    )  # fmt: skip
    probe.add_argument(
        "--pattern-size", type=_pattern_size, default=(640, 480), metavar="WxH",
        help="size of the peers' pattern for --reference names (default 640x480)",
    )  # fmt: skip
    probe.add_argument(
        "--ice-address", action="append", metavar="IP",
        help="local address ICE may offer; repeatable (default 127.0.0.1 only)",
    )  # fmt: skip
    probe.set_defaults(func=_probe)

    bench = sub.add_parser(
        "bench", help="run a benchmark and print its numbers",
        description="Run a benchmark from bench/. Each measures against a reference in the same "
        "run and reports ratios, since absolute times on a shared machine are noise.",
    )  # fmt: skip
    bench.add_argument("name", choices=sorted(BENCHMARKS), help="which benchmark")
    bench.add_argument("--json", action="store_true", help="print one JSON object")
    bench.add_argument(
        "--frames", type=_int_in(1, 100_000), default=100, help="samples per measurement"
    )
    bench.set_defaults(func=_bench)
    return parser


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(
            {
                "time": round(record.created, 3),
                "level": record.levelname.lower(),
                "logger": record.name,
                "message": record.getMessage(),
            }
        )


def _configure_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # argparse checks choices only for values given as flags, not for CALLBOT_* defaults.
    if args.log_level not in LOG_LEVELS:
        parser.error(f"CALLBOT_LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}")
    if args.log_format not in LOG_FORMATS:
        parser.error(f"CALLBOT_LOG_FORMAT must be one of {', '.join(LOG_FORMATS)}")
    check = getattr(args, "check", None)
    if check is not None:
        check(args)
    _configure_logging(args.log_level, args.log_format)
    try:
        if inspect.iscoroutinefunction(args.func):
            saved = {sig: signal.getsignal(sig) for sig in _STOP_SIGNALS}
            try:
                code: int = asyncio.run(_run(args))
            finally:
                # _run left the signals ignored. The program's own process (argv from the
                # command line) just exits; a caller of main([...]) gets its handlers back.
                main_thread = threading.current_thread() is threading.main_thread()
                for sig, handler in saved.items():
                    if argv is not None and handler is not None and main_thread:
                        signal.signal(sig, handler)
        else:
            code = args.func(args)
    except KeyboardInterrupt:
        return 130
    except (CallbotError, MediaError, OSError) as exc:
        print(f"callbot: error: {str(exc) or type(exc).__name__}", file=sys.stderr)
        return EXIT_ERROR
    return code


if __name__ == "__main__":
    sys.exit(main())
