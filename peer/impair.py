"""Network impairment for tests: loss, bursts, delay, jitter, reordering, duplication.

The kernel here has no netem, so impairment happens in-process, in the datagram path: every ICE
socket of one ``RTCPeerConnection`` gets its aioice ``StunProtocol.transport`` replaced by a proxy
whose ``sendto`` drops, holds (``loop.call_later``), swaps or copies datagrams before they reach the
real socket. Everything the pc sends over ICE goes through it (STUN checks, DTLS, SRTP/SRTCP,
SCTP), so the stack sees a genuinely lossy network, not simulated statistics. Decisions come from
a seeded ``random.Random``, drawn in a fixed order per datagram, so a run repeats.

See docs/impairment.md for the model and the aiortc/aioice internals this depends on.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = [
    "DatagramSender",
    "ImpairedTransport",
    "Impairment",
    "ImpairmentHandle",
    "ImpairmentStats",
    "ice_protocols",
    "impair",
    "impair_protocols",
]

_Addr = Any  # whatever the wrapped transport's sendto accepts

# A datagram held for reordering goes out after the next one, or after this long if none comes.
REORDER_MAX_HOLD_S = 0.05


def _check_probability(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")


@dataclass(frozen=True)
class Impairment:
    """What to do to each datagram one peer connection sends.

    - ``loss``: probability a datagram is dropped (independently; in the "good" state when
      ``burst_loss`` is set).
    - ``burst_loss``: ``(p_enter, p_exit)`` of a Gilbert-Elliott chain stepped once per datagram:
      good -> bad with ``p_enter``, bad -> good with ``p_exit``; every datagram sent in the bad
      state is dropped. Mean burst length is ``1 / p_exit`` datagrams, mean loss rate about
      ``p_enter / (p_enter + p_exit)`` plus ``loss`` in the good state.
    - ``delay_ms`` / ``jitter_ms``: each datagram is held ``delay_ms + uniform(-jitter, +jitter)``
      (clipped at 0). Jitter larger than the gap between datagrams reorders them, as on a real
      path.
    - ``reorder``: probability a datagram is held back and sent right after the next one
      (at most ``REORDER_MAX_HOLD_S`` later if no next datagram comes).
    - ``duplicate``: probability a datagram is sent twice (the copy gets its own delay).
    - ``seed``: seeds the decisions; the same seed and the same traffic give the same pattern.
    """

    loss: float = 0.0
    burst_loss: tuple[float, float] | None = None
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    reorder: float = 0.0
    duplicate: float = 0.0
    seed: int | None = 1

    def __post_init__(self) -> None:
        _check_probability("loss", self.loss)
        _check_probability("reorder", self.reorder)
        _check_probability("duplicate", self.duplicate)
        if self.burst_loss is not None:
            if not isinstance(self.burst_loss, tuple) or len(self.burst_loss) != 2:
                raise ValueError(
                    f"burst_loss must be None or (p_enter, p_exit), got {self.burst_loss!r}"
                )
            _check_probability("burst_loss p_enter", self.burst_loss[0])
            _check_probability("burst_loss p_exit", self.burst_loss[1])
            if self.burst_loss[1] == 0.0 and self.burst_loss[0] > 0.0:
                raise ValueError("burst_loss p_exit must be > 0, or a burst never ends")
        for name, value in (("delay_ms", self.delay_ms), ("jitter_ms", self.jitter_ms)):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{name} must be a number of milliseconds, got {value!r}")
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be finite and >= 0, got {value}")
        if self.seed is not None and (
            isinstance(self.seed, bool) or not isinstance(self.seed, int)
        ):
            raise ValueError(f"seed must be an int or None, got {self.seed!r}")

    @property
    def is_clear(self) -> bool:
        """True when nothing is impaired: datagrams go straight to the socket."""
        return (
            self.loss == 0.0
            and (self.burst_loss is None or self.burst_loss[0] == 0.0)
            and self.delay_ms == 0.0
            and self.jitter_ms == 0.0
            and self.reorder == 0.0
            and self.duplicate == 0.0
        )


@dataclass
class ImpairmentStats:
    """Counters over the handle's lifetime (``set`` does not reset them)."""

    offered: int = 0  # datagrams the stack asked to send
    dropped: int = 0  # of those, never sent
    duplicated: int = 0  # extra copies made
    delayed: int = 0  # datagrams (and copies) held by a timer for delay/jitter
    reordered: int = 0  # datagrams held back to go out after a later one
    sent: int = 0  # datagrams that reached a real socket (copies included)
    discarded: int = 0  # held datagrams never sent: transport closed or handle removed
    per_burst: list[int] = field(default_factory=list)  # lengths of finished loss bursts


class DatagramSender(Protocol):
    """A datagram protocol that sends through its ``transport`` attribute (aioice's does)."""

    transport: asyncio.DatagramTransport


class _Engine:
    """Decisions and timers shared by every socket of one handle."""

    def __init__(self, loop: asyncio.AbstractEventLoop, impairment: Impairment) -> None:
        self.loop = loop
        self.stats = ImpairmentStats()
        self.timers: set[asyncio.TimerHandle] = set()
        self.held: dict[int, tuple[asyncio.DatagramTransport, bytes, _Addr, asyncio.TimerHandle]]
        self.held = {}
        self.configure(impairment)

    def configure(self, impairment: Impairment) -> None:
        self.impairment = impairment
        self.rng = random.Random(impairment.seed)
        self.bad = False
        self.burst = 0

    def _lose(self) -> bool:
        imp = self.impairment
        rng = self.rng
        # Fixed draw order per datagram (state step, then loss), whatever the parameters.
        step = rng.random()
        roll = rng.random()
        if imp.burst_loss is not None:
            p_enter, p_exit = imp.burst_loss
            if self.bad and step < p_exit:
                self.bad = False
                self.stats.per_burst.append(self.burst)
                self.burst = 0
            elif not self.bad and step < p_enter:
                self.bad = True
            if self.bad:
                self.burst += 1
                return True
        return roll < imp.loss

    def send(self, real: asyncio.DatagramTransport, data: bytes, addr: _Addr) -> None:
        imp = self.impairment
        stats = self.stats
        stats.offered += 1
        if imp.is_clear:
            self._emit(real, data, addr, reorder=False)
            return
        lost = self._lose()
        rng = self.rng
        dup_roll, reorder_roll = rng.random(), rng.random()
        delays = [rng.uniform(-1.0, 1.0), rng.uniform(-1.0, 1.0)]
        if lost:
            stats.dropped += 1
            return
        copies = 2 if dup_roll < imp.duplicate else 1
        if copies == 2:
            stats.duplicated += 1
        reorder = reorder_roll < imp.reorder
        for i in range(copies):
            delay_s = max(0.0, imp.delay_ms + delays[i] * imp.jitter_ms) / 1000.0
            if delay_s > 0.0:
                stats.delayed += 1
                self._later(delay_s, real, data, addr, reorder and i == 0)
            else:
                self._emit(real, data, addr, reorder=reorder and i == 0)

    def _later(
        self,
        delay_s: float,
        real: asyncio.DatagramTransport,
        data: bytes,
        addr: _Addr,
        reorder: bool,
    ) -> None:
        def fire() -> None:
            self.timers.discard(handle)
            self._emit(real, data, addr, reorder=reorder)

        handle = self.loop.call_later(delay_s, fire)
        self.timers.add(handle)

    def _emit(
        self, real: asyncio.DatagramTransport, data: bytes, addr: _Addr, *, reorder: bool
    ) -> None:
        key = id(real)
        if reorder and key not in self.held:
            self.stats.reordered += 1

            def release() -> None:
                held = self.held.pop(key, None)
                if held is not None:
                    self._write(held[0], held[1], held[2])

            timer = self.loop.call_later(REORDER_MAX_HOLD_S, release)
            self.held[key] = (real, data, addr, timer)
            return
        self._write(real, data, addr)
        held = self.held.pop(key, None)
        if held is not None:
            held[3].cancel()
            self._write(held[0], held[1], held[2])

    def _write(self, real: asyncio.DatagramTransport, data: bytes, addr: _Addr) -> None:
        if real.is_closing():
            self.stats.discarded += 1
            return
        real.sendto(data, addr)
        self.stats.sent += 1

    def cancel(self) -> None:
        for handle in self.timers:
            handle.cancel()
        self.stats.discarded += len(self.timers) + len(self.held)
        self.timers.clear()
        for held in self.held.values():
            held[3].cancel()
        self.held.clear()


class ImpairedTransport(asyncio.DatagramTransport):
    """Stands in for one socket's transport; only ``sendto`` differs."""

    def __init__(self, real: asyncio.DatagramTransport, engine: _Engine) -> None:
        super().__init__(extra=None)
        self.real = real
        self._engine = engine

    def sendto(self, data: bytes | bytearray | memoryview, addr: _Addr = None) -> None:
        self._engine.send(self.real, bytes(data), addr)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.real.get_extra_info(name, default)

    def is_closing(self) -> bool:
        return self.real.is_closing()

    def close(self) -> None:
        self.real.close()

    def abort(self) -> None:
        self.real.abort()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.real.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self.real.get_protocol()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


class ImpairmentHandle:
    """A live impairment on some sockets; ``set`` changes it, ``remove`` restores them."""

    def __init__(self, protocols: list[DatagramSender], engine: _Engine) -> None:
        self._protocols = protocols
        self._engine = engine
        self._removed = False

    @property
    def impairment(self) -> Impairment:
        return self._engine.impairment

    @property
    def stats(self) -> ImpairmentStats:
        return self._engine.stats

    @property
    def active(self) -> bool:
        return not self._removed

    def set(self, impairment: Impairment) -> None:
        """Switch to ``impairment`` from the next datagram on (reseeded with its ``seed``).

        Datagrams already held keep their schedule.
        """
        if not isinstance(impairment, Impairment):
            raise TypeError(f"expected an Impairment, got {type(impairment).__name__}")
        if self._removed:
            raise RuntimeError("impairment handle was removed")
        self._engine.configure(impairment)

    def remove(self) -> None:
        """Put the original transports back and cancel held datagrams (they are lost).

        Idempotent; a protocol whose transport was replaced by someone else since is left alone.
        """
        if self._removed:
            return
        self._removed = True
        for protocol in self._protocols:
            current = protocol.transport
            if isinstance(current, ImpairedTransport) and current._engine is self._engine:
                protocol.transport = current.real
        self._engine.cancel()

    def __enter__(self) -> ImpairmentHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def impair_protocols(
    protocols: Iterable[DatagramSender], impairment: Impairment
) -> ImpairmentHandle:
    """Impair what each of ``protocols`` sends through its ``.transport`` (a datagram transport).

    The building block of :func:`impair`; usable on any ``asyncio.DatagramProtocol`` that sends
    through a ``transport`` attribute. Must be called from the event loop's thread.
    """
    if not isinstance(impairment, Impairment):
        raise TypeError(f"expected an Impairment, got {type(impairment).__name__}")
    loop = asyncio.get_running_loop()
    engine = _Engine(loop, impairment)
    wrapped: list[DatagramSender] = []
    for protocol in protocols:
        current = protocol.transport
        if isinstance(current, ImpairedTransport):
            raise RuntimeError(f"{protocol!r} is already impaired; remove that handle first")
        protocol.transport = ImpairedTransport(current, engine)
        wrapped.append(protocol)
    return ImpairmentHandle(wrapped, engine)


def ice_protocols(pc: Any) -> list[DatagramSender]:
    """Every aioice ``StunProtocol`` (one per local socket) of ``pc``'s ICE transports.

    Path (aiortc 1.16.0 / aioice 0.13.0): ``pc.getTransceivers()[i].sender.transport``
    (RTCDtlsTransport) ``.transport`` (RTCIceTransport) ``._connection`` (aioice Connection)
    ``._protocols``; plus ``pc.sctp.transport.transport`` for data channels.
    """
    dtls_transports: list[Any] = []
    for transceiver in pc.getTransceivers():
        for end in (transceiver.sender, transceiver.receiver):
            dtls = getattr(end, "transport", None)
            if dtls is not None:
                dtls_transports.append(dtls)
    sctp = getattr(pc, "sctp", None)
    if sctp is not None:
        dtls_transports.append(sctp.transport)
    connections: dict[int, Any] = {}
    for dtls in dtls_transports:
        ice = getattr(dtls, "transport", None)
        connection = getattr(ice, "_connection", None)
        if connection is None or not hasattr(connection, "_protocols"):
            raise RuntimeError(
                "cannot reach aioice sockets (RTCIceTransport._connection._protocols): "
                "aiortc/aioice internals changed; see docs/impairment.md"
            )
        connections[id(connection)] = connection
    protocols: dict[int, DatagramSender] = {}
    for connection in connections.values():
        for protocol in connection._protocols:
            if not isinstance(getattr(protocol, "transport", None), asyncio.BaseTransport):
                raise RuntimeError(f"aioice protocol {protocol!r} has no datagram transport")
            protocols[id(protocol)] = protocol
    return list(protocols.values())


def impair(pc: Any, impairment: Impairment) -> ImpairmentHandle:
    """Impair every datagram the ``RTCPeerConnection`` ``pc`` sends from now on.

    Call it once the pc has gathered its candidates (e.g. after ``Participant.wait_connected``);
    sockets created later are not covered. Only ``pc``'s own sends are affected: impair both
    ends for loss in both directions.
    """
    protocols = ice_protocols(pc)
    if not protocols:
        raise RuntimeError("the peer connection has no ICE sockets yet; impair it once connected")
    return impair_protocols(protocols, impairment)
