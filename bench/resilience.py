"""How a call between two bots rides out a relay restart, a loss burst and steady loss.

One in-process relay (on a fixed loopback port with a database, so resume tokens survive its
restart) and two participants sending each other a 320x240 30 fps stamped pattern. Measured:

* ``relay_restart_recovery_s``: from the restarted relay listening to both participants
  connected again (same peer ids, checked), while ``relay_outage_frames`` counts the frames
  that kept arriving while the relay was down (media does not need it);
* ``loss_burst_recovery_s``: 2 s of 100 % loss both ways (``peer.impair``), then clear: from
  the clear to the first frame captured after it arriving;
* ``fps_loss_N``: delivered fps (distinct stamped frames per second at the receiver) under N %
  random loss both ways for ``frames`` frame periods, and ``longest_freeze_loss_N_s``;
  ``fps_loss_0`` is the same measurement without loss, the reference of the ``ratio_loss_N``.

Usage: python -m bench.resilience [--json] [--frames N]
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench import _report
from media import PatternVideoTrack, read_stamp
from peer import Backoff, Participant, ParticipantConfig, RemoteTrack
from peer.impair import Impairment, ImpairmentHandle, impair
from signaling_server import ServerSettings, start_server

FPS = 30.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class _Receiver:
    """Reads one remote track; remembers when each distinct stamped frame arrived."""

    def __init__(self, track: RemoteTrack) -> None:
        self.arrivals: list[tuple[float, int, int]] = []  # (arrival, frame number, capture ms)
        self._task = asyncio.create_task(self._run(track))

    async def _run(self, track: RemoteTrack) -> None:
        last = -1
        while True:
            frame = await track.recv()
            stamp = await asyncio.to_thread(read_stamp, frame)
            if stamp is not None and stamp.frame_number > last:
                last = stamp.frame_number
                self.arrivals.append((time.monotonic(), last, stamp.capture_time_ms))

    async def aclose(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    def window(self, start: float, end: float) -> tuple[float, float]:
        """(delivered fps, longest gap between arrivals) within [start, end]."""
        times = [t for t, _, _ in self.arrivals if start <= t <= end]
        if len(times) < 2:
            return 0.0, end - start
        gaps = [b - a for a, b in itertools.pairwise(times)]
        edges = [times[0] - start, end - times[-1]]
        return (len(times) - 1) / (times[-1] - times[0]), max(gaps + edges)


async def _until(predicate: Callable[[], bool], timeout: float = 60.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110 - polling state other objects own
            await asyncio.sleep(0.01)


async def _first_track(me: Participant) -> RemoteTrack:
    async with asyncio.timeout(30):
        async for track in me.tracks():
            return track
    raise RuntimeError("no remote track arrived")


def _impair_both(a: Participant, b: Participant, imp: Impairment) -> list[ImpairmentHandle]:
    links = [a.link(b.peer_id), b.link(a.peer_id)]
    handles = []
    for i, link in enumerate(links):
        assert link is not None
        handles.append(impair(link.pc, Impairment(**{**imp.__dict__, "seed": i + 1})))
    return handles


async def _run(frames: int) -> dict[str, float]:
    result: dict[str, float] = {}
    period = frames / FPS
    with tempfile.TemporaryDirectory() as tmp:
        port = _free_port()
        settings = ServerSettings(port=port, db_path=str(Path(tmp) / "relay.db"))
        url = f"ws://127.0.0.1:{port}/ws"
        videos = [PatternVideoTrack(width=320, height=240, fps=FPS, seed=i) for i in range(2)]
        relay = start_server(settings)
        await relay.__aenter__()
        try:
            async with contextlib.AsyncExitStack() as stack:
                a, b = [
                    await stack.enter_async_context(
                        Participant(
                            ParticipantConfig(
                                room="bench", server_url=url, name=n, reconnect=Backoff(cap_s=2.0)
                            ),
                            video=v,
                        )
                    )
                    for n, v in zip("ab", videos, strict=True)
                ]
                rx_b = _Receiver(await _first_track(b))  # what b receives from a
                stack.push_async_callback(rx_b.aclose)
                await _until(lambda: len(rx_b.arrivals) >= 10)

                # Steady loss, each level measured for `frames` frame periods.
                for pct in (0, 1, 5, 10):
                    handles = _impair_both(a, b, Impairment(loss=pct / 100)) if pct else []
                    start = time.monotonic()
                    await asyncio.sleep(period)
                    fps, freeze = rx_b.window(start, time.monotonic())
                    for handle in handles:
                        handle.remove()
                    result[f"fps_loss_{pct}"] = fps
                    result[f"longest_freeze_loss_{pct}_s"] = freeze
                    await asyncio.sleep(0.5)  # let the stream settle between levels
                for pct in (1, 5, 10):
                    ref = result["fps_loss_0"]
                    result[f"ratio_loss_{pct}"] = result[f"fps_loss_{pct}"] / ref if ref else 0.0

                # A 2 s burst of total loss, then clear.
                handles = _impair_both(a, b, Impairment(loss=1.0))
                await asyncio.sleep(2.0)
                for handle in handles:
                    handle.remove()
                cleared_ms = time.time() * 1000
                cleared = time.monotonic()
                await _until(lambda: any(ms > cleared_ms for _, _, ms in rx_b.arrivals[-5:]), 30)
                first_new = next(t for t, _, ms in rx_b.arrivals if ms > cleared_ms)
                result["loss_burst_recovery_s"] = first_new - cleared

                # The relay restarts.
                ids = (a.peer_id, b.peer_id)
                await relay.__aexit__(None, None, None)
                down_at = time.monotonic()
                await _until(lambda: not a.connection.connected and not b.connection.connected)
                await asyncio.sleep(1.0)
                result["relay_outage_frames"] = float(
                    sum(1 for t, _, _ in rx_b.arrivals if t >= down_at)
                )
                relay = start_server(settings)
                await relay.__aenter__()
                back = time.monotonic()
                await _until(lambda: a.connection.connected and b.connection.connected, 30)
                result["relay_restart_recovery_s"] = time.monotonic() - back
                result["relay_restart_same_ids"] = float((a.peer_id, b.peer_id) == ids)
        finally:
            await relay.__aexit__(None, None, None)
            for video in videos:
                video.stop()
    return result


def run(frames: int) -> dict[str, float]:
    """Entry point for ``callbot bench resilience`` (``frames`` frame periods per loss level)."""
    return asyncio.run(_run(max(30, frames)))


def main(argv: list[str] | None = None) -> int:
    return _report.main(__doc__, run, argv, frames=150, frames_help="frame periods per loss level")


if __name__ == "__main__":
    raise SystemExit(main())
