"""pytest plugin: end-to-end media tests of real calls, in any project that installs callbot.

Registered through the ``pytest11`` entry point, so ``pip install callbot`` is all a team's
suite needs. Fixtures (all ``callbot_``-prefixed, so they never clash with a project's own):

- ``callbot_relay``: a real relay on a free loopback port, one per test; or, with
  ``--callbot-relay ws://HOST:PORT/ws`` (or ``CALLBOT_RELAY_URL``), a relay elsewhere, and
  nothing is started.
- ``callbot_participants``: ``await callbot_participants("alice")`` joins a participant that
  publishes a stamped test pattern and a tone, in a room unique to the test; closed at teardown.
- ``callbot_probe``: ``await callbot_probe(bob, "alice")`` measures what bob receives from
  alice (fps, drops, freezes, latency, and PSNR/SSIM against alice's regenerated pattern).

``assert_video`` / ``assert_audio`` turn summaries into pass/fail with every measured number in
the message; they need no pytest. ``--callbot-report DIR`` writes each test's HTML report
(plots, worst frames) to ``DIR/<test>/index.html``.

Why the heavy imports (aiortc, av, the relay) happen inside the fixtures: this module is loaded
into every pytest run of an environment where callbot is installed, most of which never ask for
a callbot fixture.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from aiortc import MediaStreamTrack

    from media.analysis import AudioSummary, FrameRecord, PatternSpec, TrackProbe, VideoSummary
    from media.report import StreamReport
    from peer import Participant

__all__ = [
    "MediaAssertionError",
    "ParticipantFactory",
    "ProbeFactory",
    "Relay",
    "assert_audio",
    "assert_video",
]

RELAY_ENV = "CALLBOT_RELAY_URL"
WORST_FRAMES = 4  # thumbnails per video stream in a report
_REPORTS = pytest.StashKey[list[Path]]()


# ----------------------------------------------------------------------------- assertions


class MediaAssertionError(AssertionError):
    """A media threshold was not met; the message names it and lists every measured number."""


def _fail(kind: str, label: str, failures: list[str], measured: str) -> None:
    if failures:
        name = f" {label!r}" if label else ""
        raise MediaAssertionError(
            f"{kind}{name} failed: {'; '.join(failures)}\n  measured: {measured}"
        )


def _unstamped(summary: VideoSummary) -> str | None:
    """Why nothing that needs stamps (drops, latency, PSNR/SSIM) was measured; None if some
    frame was stamped. Frames without a readable stamp come from a sender that is not a callbot
    pattern (a browser camera, your own track) or one scaled too small to read."""
    if summary.frames == 0:
        return "no frames received"
    if summary.stamped == 0:
        return f"0 of {summary.frames} frames stamped"
    return None


def _no_quality(summary: VideoSummary) -> str:
    """Why PSNR/SSIM are missing from a summary."""
    unstamped = _unstamped(summary)
    if unstamped is not None:
        return unstamped
    if summary.quality_skipped >= summary.stamped:
        return f"all {summary.stamped} stamped frames skipped to keep up"
    return "no reference pattern"


def assert_video(
    summary: VideoSummary | TrackProbe,
    *,
    min_fps: float | None = None,
    max_freeze_ms: float | None = None,
    max_freezes: int | None = None,
    max_latency_ms: float | None = None,
    min_psnr_db: float | None = None,
    min_ssim: float | None = None,
    max_drops: int | None = None,
    min_frames: int | None = None,
    label: str = "",
) -> None:
    """Check a :class:`VideoSummary` (or a probe's, labelled with the probe's label) against
    thresholds (``None``: not checked).

    ``max_latency_ms`` applies to the p95 latency, ``min_psnr_db``/``min_ssim`` to the mean over
    the measured frames; a threshold on something that was not measured (no frames, no stamps,
    no reference) fails rather than passing silently. Drops and latency need stamps; fps and
    freezes count every frame.
    """
    from media.analysis import TrackProbe
    from media.report import describe_video

    if isinstance(summary, TrackProbe):
        label = label or summary.label
        summary = summary.video_summary()
    failures: list[str] = []
    unstamped = _unstamped(summary)
    if min_frames is not None and summary.frames < min_frames:
        failures.append(f"frames {summary.frames} < min_frames {min_frames}")
    if min_fps is not None and summary.fps < min_fps:
        failures.append(f"fps {summary.fps:.1f} < min_fps {min_fps:g}")
    if max_freeze_ms is not None:
        if summary.frames == 0:
            failures.append(
                f"freezes not measured: no frames received (max_freeze_ms {max_freeze_ms:g})"
            )
        elif summary.max_freeze_ms > max_freeze_ms:
            failures.append(
                f"longest freeze {summary.max_freeze_ms:.0f} ms > max_freeze_ms {max_freeze_ms:g}"
            )
    if max_freezes is not None:
        if summary.frames == 0:
            failures.append(f"freezes not measured: no frames received (max_freezes {max_freezes})")
        elif summary.freezes > max_freezes:
            failures.append(f"freezes {summary.freezes} > max_freezes {max_freezes}")
    if max_drops is not None:
        if unstamped is not None:
            failures.append(f"drops not measured: {unstamped} (max_drops {max_drops})")
        elif summary.drops > max_drops:
            failures.append(f"drops {summary.drops} > max_drops {max_drops}")
    if max_latency_ms is not None:
        p95 = (summary.latency_ms or {}).get("p95")
        if p95 is None:
            why = unstamped or "no capture times"
            failures.append(f"latency not measured: {why} (max_latency_ms {max_latency_ms:g})")
        elif p95 > max_latency_ms:
            failures.append(f"latency p95 {p95:.1f} ms > max_latency_ms {max_latency_ms:g}")
    if min_psnr_db is not None:
        psnr = (summary.psnr_db or {}).get("mean")
        if psnr is None:
            failures.append(
                f"PSNR not measured: {_no_quality(summary)} (min_psnr_db {min_psnr_db:g})"
            )
        elif psnr < min_psnr_db:
            failures.append(f"PSNR mean {psnr:.1f} dB < min_psnr_db {min_psnr_db:g}")
    if min_ssim is not None:
        ssim = (summary.ssim or {}).get("mean")
        if ssim is None:
            failures.append(f"SSIM not measured: {_no_quality(summary)} (min_ssim {min_ssim:g})")
        elif ssim < min_ssim:
            failures.append(f"SSIM mean {ssim:.3f} < min_ssim {min_ssim:g}")
    _fail("video", label, failures, describe_video(summary))


def _no_sync(summary: AudioSummary) -> str:
    """Why the A/V offset and audio latency are missing from a summary: no beeps, or beeps with
    no video flash to pair them with."""
    if not summary.beeps:
        return (
            "no beep detected (the sender needs sync marks: "
            "callbot_participants(name, sync_every_s=1.0))"
        )
    return (
        f"{len(summary.beeps)} beeps but no video flash paired with them (probe the same "
        "sender's video too, callbot_probe(receiver, sender), and pass the audio probe or "
        "callbot_probe.audio_summary(probe))"
    )


def assert_audio(
    summary: AudioSummary | TrackProbe,
    *,
    present: bool | None = True,
    max_glitches: int | None = None,
    max_av_offset_ms: float | None = None,
    max_latency_ms: float | None = None,
    label: str = "",
) -> None:
    """Check an :class:`AudioSummary`: audio present (or, ``present=False``, absent), glitches,
    the A/V offset (absolute, beep vs flash), the p95 latency; ``None``: not checked.

    Given a probe, uses its label and ``probe.audio_summary()``; for a probe from
    ``callbot_probe`` that includes the flashes of the same sender's video probe (A/V offset,
    latency)."""
    from media.analysis import TrackProbe
    from media.report import describe_audio

    if isinstance(summary, TrackProbe):
        label = label or summary.label
        summary = summary.audio_summary()
    failures: list[str] = []
    if present is not None and summary.present != present:
        failures.append("no audio received" if present else "audio received, none expected")
    if max_glitches is not None and summary.glitches > max_glitches:
        failures.append(f"glitches {summary.glitches} > max_glitches {max_glitches}")
    if max_av_offset_ms is not None:
        offset = summary.av_offset_ms
        if offset is None:
            failures.append(
                f"A/V offset not measured: {_no_sync(summary)} "
                f"(max_av_offset_ms {max_av_offset_ms:g})"
            )
        elif abs(offset) > max_av_offset_ms:
            failures.append(f"A/V offset {offset:.1f} ms > max_av_offset_ms {max_av_offset_ms:g}")
    if max_latency_ms is not None:
        p95 = (summary.latency_ms or {}).get("p95")
        if p95 is None:
            failures.append(
                f"audio latency not measured: {_no_sync(summary)} "
                f"(max_latency_ms {max_latency_ms:g})"
            )
        elif p95 > max_latency_ms:
            failures.append(f"audio latency p95 {p95:.1f} ms > max_latency_ms {max_latency_ms:g}")
    _fail("audio", label, failures, describe_audio(summary))


# ----------------------------------------------------------------------------- the relay


@dataclass(frozen=True, slots=True)
class Relay:
    """Where the test's participants meet; ``external``: not started by this test run."""

    ws_url: str
    external: bool

    @property
    def http_url(self) -> str:
        scheme, _, rest = self.ws_url.partition("://")
        host = rest.split("/", 1)[0]
        return f"{'https' if scheme == 'wss' else 'http'}://{host}"


def _external_relay(config: pytest.Config) -> str | None:
    url: str | None = config.getoption("callbot_relay") or os.environ.get(RELAY_ENV) or None
    return url


# ----------------------------------------------------------------------------- participants


@dataclass(frozen=True, slots=True)
class _Published:
    """What a participant of this test sends, so a receiver's probe can regenerate it."""

    pattern: PatternSpec | None
    frequency: float | None
    beep_every_s: float | None


class ParticipantFactory:
    """``await factory(name, ...)``: a joined participant with stamped sources.

    The ``callbot_participants`` fixture; it remembers what each participant publishes so that
    probes on the receiving side can regenerate it.
    """

    def __init__(self, relay: Relay, room: str) -> None:
        self.relay = relay
        self.room = room
        self._stack = contextlib.AsyncExitStack()
        self._tracks: list[MediaStreamTrack] = []
        self._published: dict[str, _Published] = {}  # by peer id and by name
        self.participants: list[Participant] = []

    async def __call__(
        self,
        name: str,
        *,
        video: str | MediaStreamTrack | None = "pattern",
        audio: str | MediaStreamTrack | None = "tone",
        size: tuple[int, int] = (320, 240),
        fps: float = 30.0,
        frequency: float = 440.0,
        sync_every_s: float | None = None,
        seed: int | None = None,
        **config: Any,
    ) -> Participant:
        """Join ``name`` to the test's room (``room=`` to choose another) and return it.

        ``video``/``audio``: ``"pattern"``/``"tone"`` (stamped, remembered for probes), ``None``,
        or a track of your own. ``size``/``fps``/``seed`` shape the pattern (labelled ``name``),
        ``frequency`` the tone; ``sync_every_s`` puts both on one clock with a white flash and a
        beep every that many seconds (A/V offset, audio latency). Other keywords go to
        :class:`peer.ParticipantConfig` (``receive=False``, ``video_codecs=("H264",)``, ...).
        """
        from media import MediaClock, PatternVideoTrack, ToneAudioTrack
        from media.analysis import PatternSpec
        from peer import Participant, ParticipantConfig

        clock = MediaClock() if sync_every_s is not None else None
        spec: PatternSpec | None = None
        if video == "pattern":
            video = PatternVideoTrack(
                width=size[0], height=size[1], fps=fps, label=name,
                seed=seed if seed is not None else len(self._published) // 2 + 1,
                clock=clock, flash_every_s=sync_every_s,
            )  # fmt: skip
            self._tracks.append(video)
            spec = PatternSpec.of(video)
        tone: float | None = None
        if audio == "tone":
            audio = ToneAudioTrack(frequency=frequency, clock=clock, beep_every_s=sync_every_s)
            self._tracks.append(audio)
            tone = frequency
        if isinstance(video, str) or isinstance(audio, str):
            raise ValueError(
                'video must be "pattern", None or a track; audio "tone", None or a track'
            )
        settings: dict[str, Any] = {
            "room": self.room, "server_url": self.relay.ws_url, "name": name, **config,
        }  # fmt: skip
        participant = Participant(ParticipantConfig(**settings), video=video, audio=audio)
        await self._stack.enter_async_context(participant)
        self.participants.append(participant)
        published = _Published(spec, tone, sync_every_s if tone is not None else None)
        self._published[participant.peer_id] = published
        self._published.setdefault(name, published)
        return participant

    def published(self, peer: str) -> _Published | None:
        """What the participant with this peer id (or name) of this test publishes."""
        return self._published.get(peer)

    async def aclose(self) -> None:
        try:
            await self._stack.aclose()
        finally:
            for track in self._tracks:
                track.stop()


# ----------------------------------------------------------------------------- probes


@dataclass(slots=True)
class _Attached:
    probe: TrackProbe
    sender: str
    reference: PatternSpec | None


class ProbeFactory:
    """Attaches :class:`media.analysis.TrackProbe` objects to received tracks (``callbot_probe``).

    ``await factory(receiver, "alice")`` waits for alice's video at ``receiver`` and measures
    it; ``factory.attach(track)`` probes a track you already hold. Tracks from participants of
    this test come with their sender's pattern and tone, so PSNR, SSIM and audio latency work.
    """

    def __init__(self, participants: ParticipantFactory, *, keep_worst: bool = False) -> None:
        self._participants = participants
        self._keep_worst = keep_worst
        self._attached: list[_Attached] = []

    @property
    def probes(self) -> list[TrackProbe]:
        return [a.probe for a in self._attached]

    def attach(
        self,
        track: MediaStreamTrack,
        *,
        reference: PatternSpec | None = None,
        frequency: float | None = None,
        beep_every_s: float | None = None,
        freeze_ms: float = 150.0,
        label: str = "",
    ) -> TrackProbe:
        """Start measuring ``track``. For a track from a participant of this test, the
        sender's pattern (``reference``), tone ``frequency`` and beeps default to what it sends.
        An audio probe's ``audio_summary()`` uses the flashes of the same sender's video probe
        (attached before or after it), for the A/V offset and latency."""
        sender_id = getattr(track, "peer_id", None)
        sender = getattr(track, "peer_name", None) or sender_id or ""
        published = self._participants.published(sender_id) if sender_id else None
        if published is not None:
            reference = reference or published.pattern
            frequency = frequency or published.frequency
            beep_every_s = beep_every_s or published.beep_every_s
        label = label or f"{sender or 'track'} {track.kind}".strip()
        from media.analysis import TrackProbe  # heavy: imported on first use

        probe = TrackProbe(
            track,
            sync_flashes=lambda: self._video_flashes(sender),
            reference=reference if track.kind == "video" else None,
            freeze_ms=freeze_ms,
            frequency=frequency if track.kind == "audio" else None,
            beep_every_s=beep_every_s if track.kind == "audio" else None,
            label=label,
            keep_worst=WORST_FRAMES if self._keep_worst else 0,
        )
        self._attached.append(_Attached(probe, sender, reference))
        probe.start()
        return probe

    async def __call__(
        self,
        receiver: Participant,
        sender: str,
        kind: str = "video",
        *,
        timeout_s: float = 30.0,
        freeze_ms: float = 150.0,
    ) -> TrackProbe:
        """Wait until ``receiver`` gets a ``kind`` track from ``sender`` (name or peer id),
        then probe it."""
        from peer import WaitTimeout

        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    for track in receiver.received_tracks:
                        if track.kind == kind and sender in (track.peer_name, track.peer_id):
                            return self.attach(track, freeze_ms=freeze_ms)
                    await asyncio.sleep(0.02)  # no event to wait on: tracks() has one reader
        except TimeoutError:
            raise WaitTimeout(
                f"{receiver.config.name or receiver.peer_id} received no {kind} from {sender!r} "
                f"within {timeout_s:g} s"
            ) from None

    def _video_flashes(self, sender: str) -> list[FrameRecord]:
        for attached in self._attached:
            if attached.sender == sender and attached.probe.kind == "video":
                return attached.probe.flashes
        return []

    def flashes_for(self, probe: TrackProbe) -> list[FrameRecord]:
        """The flash records of the same sender's video as ``probe`` (an audio probe): its sync
        marks, for the whole track (``records`` keeps only the latest few minutes)."""
        sender = next((a.sender for a in self._attached if a.probe is probe), None)
        return [] if sender is None else self._video_flashes(sender)

    def audio_summary(self, probe: TrackProbe) -> AudioSummary:
        """``probe.audio_summary`` with the same sender's video flashes (A/V offset, latency)."""
        return probe.audio_summary(self.flashes_for(probe))

    async def aclose(self) -> None:
        """Close every probe, even if one fails to; then raise the first failure."""
        results = await asyncio.gather(
            *(attached.probe.aclose() for attached in self._attached), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def streams(self) -> list[StreamReport]:
        """Each probe's measurements, for :func:`media.report.write_report` (after ``aclose``)."""
        from media.report import StreamReport, worst_pictures

        out: list[StreamReport] = []
        for attached in self._attached:
            probe = attached.probe
            if probe.kind == "video":
                worst = await asyncio.to_thread(worst_pictures, probe.worst_frames())
                video = await asyncio.to_thread(probe.video_summary)
                notes = () if attached.reference else ("no reference pattern: no PSNR/SSIM",)
                out.append(
                    StreamReport(
                        label=probe.label, video=video, records=probe.records,
                        reference=attached.reference, worst=worst, notes=notes,
                    )
                )  # fmt: skip
            else:
                audio = await asyncio.to_thread(self.audio_summary, probe)
                out.append(StreamReport(label=probe.label, audio=audio))
        return out


# ----------------------------------------------------------------------------- pytest hooks


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("callbot", "callbot end-to-end media tests")
    group.addoption(
        "--callbot-relay",
        metavar="URL",
        default=None,
        help=f"use the relay at URL (ws://HOST:PORT/ws) instead of starting one per test "
        f"(env {RELAY_ENV})",
    )
    group.addoption(
        "--callbot-report",
        metavar="DIR",
        default=None,
        help="write each test's media report (HTML, plots, worst frames) to DIR/<test>/",
    )


def _relay_url_problem(url: str) -> str | None:
    """What is wrong with a ``--callbot-relay`` URL, or None. Without a path it names the
    relay's web page, not its WebSocket endpoint, and every test would fail to connect."""
    match = re.match(r"^wss?://[^/\s]+(\S*)$", url)
    if match is None:
        return f"must look like ws://HOST:PORT/ws, got {url!r}"
    if match.group(1) in ("", "/"):
        return (
            f"needs the relay's WebSocket path: ws://HOST:PORT/ws, got {url!r} "
            f"(did you mean {url.rstrip('/')}/ws?)"
        )
    return None


def pytest_configure(config: pytest.Config) -> None:
    url = _external_relay(config)
    problem = _relay_url_problem(url) if url is not None else None
    if problem is not None:
        raise pytest.UsageError(f"--callbot-relay/{RELAY_ENV} {problem}")
    config.stash[_REPORTS] = []


def pytest_report_header(config: pytest.Config) -> list[str]:
    lines = []
    url = _external_relay(config)
    if url is not None:
        lines.append(f"callbot: relay {url} (external)")
    report = config.getoption("callbot_report")
    if report:
        lines.append(f"callbot: media reports in {report}")
    return lines


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    reports = config.stash.get(_REPORTS, [])
    if reports:
        terminalreporter.section("callbot media reports")
        for path in reports:
            terminalreporter.line(str(path))


def _room_for(node: pytest.Item | Any) -> str:
    name = re.sub(r"[^A-Za-z0-9_-]+", "-", getattr(node, "name", "test")).strip("-")
    return f"callbot-{name[:40]}-{uuid.uuid4().hex[:8]}"


def _report_dir(config: pytest.Config, node: Any) -> Path | None:
    base = config.getoption("callbot_report")
    if not base:
        return None
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", node.nodeid).strip("._")[:120] or "test"
    return Path(base) / slug


def _async_fixture(func: Callable[..., Any]) -> Any:
    """pytest-asyncio's fixture decorator (works in its strict and auto modes). Without
    pytest-asyncio the fixture fails when used, instead of the plugin breaking every pytest
    run in the environment."""
    try:
        import pytest_asyncio
    except ImportError:  # pragma: no cover - the test extra installs it

        def missing() -> None:
            pytest.fail("callbot's fixtures need pytest-asyncio: pip install pytest-asyncio")

        return pytest.fixture(name=func.__name__)(missing)
    return pytest_asyncio.fixture(func)


@_async_fixture
async def callbot_relay(request: pytest.FixtureRequest) -> AsyncIterator[Relay]:
    """A real relay on a free loopback port for this test, or the ``--callbot-relay`` one."""
    url = _external_relay(request.config)
    if url is not None:
        yield Relay(url, external=True)
        return
    from signaling_server import ServerSettings, start_server

    async with start_server(ServerSettings(host="127.0.0.1", port=0)) as server:
        yield Relay(server.ws_url, external=False)


@_async_fixture
async def callbot_participants(
    callbot_relay: Relay, request: pytest.FixtureRequest
) -> AsyncIterator[ParticipantFactory]:
    """A factory of joined participants with stamped sources, in a room unique to this test."""
    factory = ParticipantFactory(callbot_relay, _room_for(request.node))
    try:
        yield factory
    finally:
        await factory.aclose()


@_async_fixture
async def callbot_probe(
    callbot_participants: ParticipantFactory, request: pytest.FixtureRequest
) -> AsyncIterator[ProbeFactory]:
    """A factory of probes on received tracks; closed (and reported) at teardown."""
    target = _report_dir(request.config, request.node)
    probes = ProbeFactory(callbot_participants, keep_worst=target is not None)
    try:
        yield probes
    finally:
        await probes.aclose()
        if target is not None and probes.probes:
            from media.report import write_report

            path = await write_report(target, await probes.streams(), title=request.node.nodeid)
            request.config.stash[_REPORTS].append(path)
