"""``callbot`` command line: the one place that wires the relay, the participant and media together.

Each sub-command parses flags into config dataclasses and runs one coroutine. Errors a user can
cause (unreachable relay, refused join, bad file) print one line and exit non-zero.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import inspect
import json
import logging
import math
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import aiohttp
from aiortc import MediaStreamTrack

from media import (
    AudioMixer,
    FileSource,
    Compositor,
    MediaError,
    PatternVideoTrack,
    Recorder,
    RecordingInfo,
    ToneAudioTrack,
)
from peer import (
    DEFAULT_SERVER_URL,
    LOOPBACK_ONLY,
    Call,
    CallbotError,
    ConfigError,
    ConnectError,
    Mode,
    Participant,
    ParticipantConfig,
    RemoteTrack,
    ServerError,
)
from signaling_server import ServerSettings, start_server
from signaling_server.protocol import CallInfo, CallStatus

logger = logging.getLogger("callbot")

EXIT_ERROR = 1
EXIT_SIGNALLED = 128 + signal.SIGTERM
LOG_LEVELS = ["debug", "info", "warning", "error"]
LOG_FORMATS = ["text", "json"]


# ----------------------------------------------------------------------------- helpers


def _env(name: str, default: str) -> str:
    return os.environ.get(f"CALLBOT_{name}", default)


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not WIDTHxHEIGHT") from None
    if w < 16 or h < 16 or w % 2 or h % 2:
        raise argparse.ArgumentTypeError("canvas sides must be even and at least 16")
    return w, h


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError("must be a finite number greater than zero")
    return value


def _fps(text: str) -> float:
    value = _positive(text)
    if value > 120:
        raise argparse.ArgumentTypeError("must be at most 120")
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

    def line(self) -> str:
        rates = ", ".join(f"{name} {fps:.1f} fps" for name, fps in sorted(self.fps.items()))
        return (
            f"recorded {self.info.video_frames} frames ({self.info.duration_s:.1f} s) "
            f"to {self.info.path}; received: {rates or 'nothing'}"
        )


class CallRecorder:
    """Lays every remote video out on a canvas, mixes every remote audio, records both."""

    def __init__(self, path: Path, *, size: tuple[int, int], fps: float) -> None:
        self._compositor = Compositor(width=size[0], height=size[1], fps=fps)
        self._mixer = AudioMixer()
        self._recorder = Recorder(
            path, video=self._compositor.output, audio=self._mixer.output, fps=fps
        )
        self._feeder: asyncio.Task[None] | None = None
        self._videos: list[tuple[str, RemoteTrack]] = []

    async def start(self, participant: Participant) -> None:
        await self._recorder.start()
        self._feeder = asyncio.create_task(self._feed(participant), name="callbot-record-feed")

    async def _feed(self, participant: Participant) -> None:
        async for track in participant.tracks():
            try:
                if track.kind == "video":
                    label = self._add_video(track)
                    self._videos.append((label, track))
                else:
                    self._mixer.add_track(track)
            except (MediaError, ValueError) as exc:  # one odd track must not stop the rest
                logger.warning("not recording %r: %s", track, exc)

    def _add_video(self, track: RemoteTrack) -> str:
        """Tile labels must be unique, display names need not be: add the peer id's tail."""
        taken = {label for label, t in self._videos if not t.ended}
        for label in (track.peer_name, f"{track.peer_name} {track.peer_id[-4:]}"):
            if label not in taken:
                break
        else:
            label = f"{track.peer_name} {track.peer_id}#{len(self._videos)}"
        self._compositor.add_track(track, label=label)
        return label

    async def aclose(self) -> RecordingSummary:
        if self._feeder is not None:
            self._feeder.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._feeder
        try:
            info = await self._recorder.aclose()
        finally:
            await self._compositor.aclose()
            await self._mixer.aclose()
        # Arrival rate where frames are decoded (the compositor's inputs start with a burst).
        fps: dict[str, float] = {}
        for label, track in self._videos:
            fps[label] = max(fps.get(label, 0.0), track.fps)
        return RecordingSummary(info=info, fps=fps)


class _Stopper:
    """SIGINT/SIGTERM for the whole command, installed as soon as its loop runs.

    While the command waits in :func:`_until_stopped`, a signal ends that wait, so it leaves
    the way it would at the end of ``--duration``. Before that (connecting, joining), a signal
    cancels the command: its ``async with`` blocks still unwind and close what they opened.
    """

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.waiting = 0
        self._task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self._signalled)

    def _signalled(self) -> None:
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


async def _run(args: argparse.Namespace) -> int:
    args.stopper = _Stopper()
    try:
        code: int = await args.func(args)
    except asyncio.CancelledError:
        return EXIT_SIGNALLED  # stopped by a signal before it could stop gracefully
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
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    async with start_server(settings) as server:
        # Printed, not logged: with --port 0 this is how a user learns the port.
        print(f"callbot relay listening on {server.ws_url}", flush=True)
        await _until_stopped(args.stopper, None)
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
    )
    recorder = (
        CallRecorder(Path(args.record), size=args.canvas, fps=args.fps) if args.record else None
    )
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
        jobs = list(stoppers)
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


async def _cancel(tasks: Sequence[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def _answer(me: Participant, policy: str) -> None:
    """Answer every incoming call by ``policy``: auto (accept), decline, or ignore (let it ring)."""
    async for call in me.incoming_calls():
        print(f"incoming call {call.call_id} from {call.started_by}: {policy}", flush=True)
        try:
            if policy == "auto":
                await call.accept()
                # One call at a time: others keep ringing until this one is over for us.
                await _hang_up_when_over(call)
            elif policy == "decline":
                await call.decline()
        except ServerError as exc:  # e.g. it ended while we were answering
            print(f"could not {policy} call {call.call_id}: {exc}", flush=True)


async def _hang_up_when_over(call: Call) -> CallInfo:
    """Leave once everyone else has; return the final state of the call as we saw it."""
    info = await call.wait_alone_or_ended()
    if info.status is not CallStatus.ENDED:
        await call.leave()
        # We were the last one in it: the relay ends it right after our leave is applied.
        info = await call.wait_ended(timeout_s=10)
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
    await _hang_up_when_over(call)


async def _calls(args: argparse.Namespace) -> int:
    url = _http_url(args.server, f"/rooms/{quote(args.room, safe='')}/calls")
    async with aiohttp.ClientSession() as session:
        try:
            async with session.get(url, params={"limit": str(args.limit)}) as response:
                body = await response.json(content_type=None)
                if response.status != 200:
                    raise CallbotError(f"{body.get('code')}: {body.get('message')}")
                calls = body["calls"]
        except (aiohttp.ClientError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ConnectError(f"cannot read call history from {url}: {exc!r}") from exc
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


BENCHMARKS = {"compositor": "bench.compositor"}


def _bench(args: argparse.Namespace) -> int:
    """Synchronous: a benchmark owns its event loops so setup never counts against the loop."""
    module = importlib.import_module(BENCHMARKS[args.name])
    result: dict[str, float] = module.run(args.frames)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:40s} {value:10.3f}")
    return 0


# ----------------------------------------------------------------------------- parser


def _add_server_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--server",
        default=_env("SERVER", DEFAULT_SERVER_URL),
        help=f"relay WebSocket URL (default {DEFAULT_SERVER_URL}; CALLBOT_SERVER)",
    )


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
        help="run the signaling relay",
        description="Run the signaling relay (WebSocket at /ws).",
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
        help="SQLite file for call history, kept across restarts (CALLBOT_DB; default: in memory)",
    )
    serve.add_argument(
        "--ring-timeout",
        type=_positive,
        default=90.0,
        metavar="SECONDS",
        help="a call nobody answers ends no_answer after this long (default 90)",
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
    join.add_argument("--fps", type=_fps, default=30.0, help="recording frame rate (max 120)")
    join.add_argument(
        "--no-receive",
        action="store_true",
        help="publish only: negotiate send-only media and decode nothing",
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
    join.set_defaults(func=_join)

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
    _configure_logging(args.log_level, args.log_format)
    try:
        if inspect.iscoroutinefunction(args.func):
            code: int = asyncio.run(_run(args))
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
