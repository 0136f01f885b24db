"""One RTCPeerConnection per remote peer: who offers, what each m-line carries, trickle ICE.

Who offers is decided by the peer ids alone (the smaller id offers), so two peers that learn of
each other at the same moment never both offer, whichever of ``welcome``/``peer_joined`` each
saw first. The offerer creates one audio and one video m-line; each side's direction is what it
has to send and whether it wants to receive, so publish-only bots exchange nothing with each
other and decode nothing. aiortc gathers all candidates before ``setLocalDescription`` returns
and puts them in the SDP; candidates trickled by others (browsers) are applied as they arrive.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from aiortc import RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.sdp import candidate_from_sdp

from signaling_server.protocol import (
    Answer,
    ClientMessage,
    Offer,
    PeerInfo,
    RelayedAnswer,
    RelayedIceCandidate,
    RelayedOffer,
)

from .config import IceServer
from .errors import NegotiationError, SignalingError
from .ice import host_candidate_policy, rtc_configuration
from .nack import repeat_nacks
from .renegotiation import (
    ice_ufrag,
    keep_mapping,
    negotiated_mapping,
    rollback,
    share_bundle_transport,
)
from .tracks import DataMessage, RemoteTrack, TrackPump

logger = logging.getLogger(__name__)

KINDS = ("audio", "video")
#: Candidates buffered before the remote description; a peer that floods them has failed.
MAX_PENDING_CANDIDATES = 256
#: Every link's one data channel, negotiated out of band (same label and id on both sides).
DATA_CHANNEL_LABEL = "callbot"
DATA_CHANNEL_ID = 0


class _Renegotiate:
    """Inbox marker: local media changed, offer again when the session is stable."""

    type = "renegotiate"


Inbound = RelayedOffer | RelayedAnswer | RelayedIceCandidate | _Renegotiate


def is_offerer(local_peer_id: str, remote_peer_id: str) -> bool:
    """The deterministic glare rule: the smaller peer id makes the offer."""
    return local_peer_id < remote_peer_id


def direction(*, send: bool, receive: bool) -> str:
    return {
        (True, True): "sendrecv",
        (True, False): "sendonly",
        (False, True): "recvonly",
        (False, False): "inactive",
    }[(send, receive)]


@dataclass(frozen=True, slots=True, kw_only=True)
class LinkOptions:
    local_peer_id: str
    ice_servers: Sequence[IceServer]
    ice_addresses: Sequence[str] | None
    receive: bool
    video_buffer_frames: int
    audio_buffer_frames: int
    negotiation_timeout_s: float = 30.0
    video_codecs: tuple[str, ...] = ()
    data_channel: bool = True


def _preferred(codecs: Sequence[Any], names: Sequence[str]) -> list[Any]:
    """``codecs`` (parameters or capabilities) cut down to ``names`` in that order, plus RTX
    (for parameters: the RTX entries that point at a kept codec)."""
    wanted = [n.lower() for n in names if n.lower() != "rtx"]
    main = [c for n in wanted for c in codecs if c.mimeType.split("/", 1)[1].lower() == n]
    kept = {getattr(c, "payloadType", None) for c in main}
    rtx = [
        c
        for c in codecs
        if c.mimeType.lower().endswith("/rtx") and c.parameters.get("apt", None) in kept | {None}
    ]
    return main + rtx


async def _stop_late_consent(transports: Sequence[Any], *, limit_s: float = 2.0) -> None:
    """Cancel consent checks that aioice starts after it was closed.

    aioice 0.13's ``Connection.connect`` starts its consent-freshness task once the check list
    completes, up to one 20 ms check period after the fact; if ``close()`` ran in between (a
    link closed just as ICE succeeded), the task starts after close and is never cancelled.
    Wait until each transport's start (aiortc runs connect in it) has finished, then stop
    whatever it left running.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    for transport in transports:
        started = getattr(transport, "_RTCIceTransport__start", None)
        if started is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(deadline):
                    await started.wait()
        task = getattr(transport._connection, "_query_consent_task", None)
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


class PeerLink:
    """The media connection to one remote peer. Inbound signaling is processed in order by one
    task the link owns; remote tracks are drained by tasks it owns; ``aclose()`` ends them all.

    The first offer comes from the smaller peer id. After that either side may offer again (a
    track added mid-call); on glare the smaller id ignores the other's offer and the larger id
    rolls its own back (W3C "perfect negotiation").
    """

    def __init__(
        self,
        remote: PeerInfo,
        *,
        options: LinkOptions,
        local_media: Sequence[TrackPump],
        send: Callable[[ClientMessage], Awaitable[None]],
        on_track: Callable[[RemoteTrack], None],
        on_change: Callable[[], None],
        track_for: Callable[[str, int], RemoteTrack | None] | None = None,
        on_data: Callable[[DataMessage], None] | None = None,
    ) -> None:
        self.remote = remote
        self.offerer = is_offerer(options.local_peer_id, remote.peer_id)
        self._options = options
        self._pumps = list(local_media)
        self._attached: dict[TrackPump, Any] = {}  # pump -> the transceiver that sends it
        self._needs: set[TrackPump] = set(self._pumps)  # not yet in an offer/answer of ours
        self._in_flight: set[TrackPump] = set()  # in our offer that awaits its answer
        self._send = send
        self._on_track = on_track
        self._on_change = on_change
        self._track_for = track_for
        self._on_data = on_data
        self.configuration = rtc_configuration(options.ice_servers)
        self.pc = RTCPeerConnection(configuration=self.configuration)
        self._rings: list[Any] = []
        self._remote_tracks: list[RemoteTrack] = []
        self._drains: set[asyncio.Task[None]] = set()
        self._inbox: asyncio.Queue[Inbound] = asyncio.Queue()
        self._pending_candidates: list[RelayedIceCandidate] = []
        self._have_remote = False
        self.remote_ufrag: str | None = None
        self.channel: Any = None
        self._channel_open = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._nacker: asyncio.Task[None] | None = None
        self._closed = False
        self.failed: NegotiationError | None = None
        #: The connection itself died (ICE/DTLS), as opposed to a negotiation that failed.
        self.lost = False
        #: Completed offer/answer exchanges (the first one included).
        self.negotiations = 0
        self._first_offer_due = True
        self.pc.on("track", self._track_event)
        self.pc.on("connectionstatechange", self._state_event)
        if options.data_channel and self.offerer:
            self._open_channel()

    @property
    def state(self) -> str:
        return str(self.pc.connectionState)

    def start(self) -> None:
        """Begin: the offerer sends its offer; the other side waits for it."""
        name = f"callbot-link-{self.remote.peer_id}"
        self._worker = asyncio.create_task(self._work(), name=name)
        self._watchdog = asyncio.create_task(self._watch(), name=f"{name}-watchdog")
        self._nacker = asyncio.create_task(repeat_nacks(self.pc), name=f"{name}-nack")

    def deliver(self, message: Inbound) -> None:
        if not self._closed:
            self._inbox.put_nowait(message)

    def add_local(self, pump: TrackPump) -> None:
        """Send one more local track to this peer: renegotiates once the session is stable."""
        if pump not in self._pumps:
            self._pumps.append(pump)
            self._needs.add(pump)
            self.deliver(_Renegotiate())

    # ------------------------------------------------------------------ data channel

    def _open_channel(self) -> None:
        channel = self.pc.createDataChannel(DATA_CHANNEL_LABEL, negotiated=True, id=DATA_CHANNEL_ID)
        channel.on("open", self._channel_open.set)
        channel.on("close", self._channel_open.clear)
        channel.on("message", self._data_event)
        self.channel = channel

    def _data_event(self, data: str | bytes) -> None:
        if self._on_data is not None:
            self._on_data(DataMessage(self.remote.peer_id, self.remote.name, data))

    @property
    def channel_open(self) -> bool:
        return self.channel is not None and self.channel.readyState == "open"

    async def send_data(self, data: str | bytes, *, timeout_s: float) -> None:
        """Send on the data channel once it is open (``TimeoutError`` if it does not open;
        ``NegotiationError`` at once if this link has none and cannot get one)."""
        if self.channel is None and (not self._options.data_channel or self._have_remote):
            why = "disabled" if not self._options.data_channel else "not in the peer's offer"
            raise NegotiationError(self.remote.peer_id, f"no data channel ({why})")
        async with asyncio.timeout(timeout_s):
            await self._channel_open.wait()
        self.channel.send(data)

    # ------------------------------------------------------------------ the link's own task

    async def _work(self) -> None:
        if self.offerer:
            self.deliver(_Renegotiate())  # the first offer goes through the same handling
        try:
            while True:
                message = await self._inbox.get()
                try:
                    if not isinstance(message, _Renegotiate):
                        await self._handle(message)
                    if self._wants_offer():
                        await self._make_offer()
                except NegotiationError as exc:
                    self._fail(exc)
                except Exception as exc:
                    # The input is foreign (another peer's SDP), and aiortc answers bad SDP with
                    # many exception types (ValueError, KeyError, AttributeError...): whatever
                    # it raises, only this link fails; the participant goes on.
                    logger.debug("%s from %s rejected", message.type, self.remote.peer_id,
                                 exc_info=True)  # fmt: skip
                    detail = f"{message.type}: {type(exc).__name__}: {exc}"
                    self._fail(NegotiationError(self.remote.peer_id, detail))
        except NegotiationError as exc:
            self._fail(exc)
        except SignalingError as exc:  # the relay went away while we were sending
            self._fail(NegotiationError(self.remote.peer_id, str(exc)))

    async def _watch(self) -> None:
        """A link that is not connected within the negotiation timeout has failed."""
        await asyncio.sleep(self._options.negotiation_timeout_s)
        if self.state != "connected" and self.failed is None:
            self._fail(
                NegotiationError(
                    self.remote.peer_id,
                    f"not connected after {self._options.negotiation_timeout_s:g} s "
                    f"(state {self.state}, signaling {self.pc.signalingState})",
                )
            )

    async def _handle(self, message: Inbound) -> None:
        if isinstance(message, RelayedOffer):
            await self._accept_offer(message.sdp)
        elif isinstance(message, RelayedAnswer):
            if self.pc.signalingState != "have-local-offer":
                raise NegotiationError(self.remote.peer_id, "an answer came without our offer")
            sdp = self._allowed_sdp(message.sdp)
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp, "answer"))
            self._in_flight.clear()
            self._remote_applied(sdp)
            await self._flush_candidates()
        elif isinstance(message, _Renegotiate):
            pass
        elif not self._have_remote:
            if len(self._pending_candidates) >= MAX_PENDING_CANDIDATES:
                raise NegotiationError(
                    self.remote.peer_id,
                    f"over {MAX_PENDING_CANDIDATES} candidates before any description",
                )
            self._pending_candidates.append(message)
        else:
            await self._add_candidate(message)

    def _remote_applied(self, sdp: str) -> None:
        self._have_remote = True
        self.remote_ufrag = ice_ufrag(sdp)
        if self.pc.signalingState == "stable":
            self.negotiations += 1

    def _wants_offer(self) -> bool:
        """Our first offer is due, or a local track was added that no offer or answer of ours
        has carried yet."""
        if self._closed or self.pc.signalingState != "stable":
            return False
        if not self._have_remote:
            return self.offerer and self._first_offer_due
        return bool(self._needs)

    def _attach(self, pump: TrackPump, transceiver: Any) -> None:
        transceiver.sender.replaceTrack(self._subscribe(pump))
        self._attached[pump] = transceiver

    def _free_transceiver(self, kind: str) -> Any:
        """A live transceiver of this kind with nothing of ours to send on it, if any."""
        taken = set(map(id, self._attached.values()))
        for transceiver in self.pc.getTransceivers():
            free = not transceiver.stopped and id(transceiver) not in taken
            if transceiver.kind == kind and free:
                return transceiver
        return None

    def _prefer_codecs(self) -> None:
        names = self._options.video_codecs
        if not names:
            return
        for transceiver in self.pc.getTransceivers():
            if transceiver.kind != "video":
                continue
            if transceiver.currentDirection is None and transceiver._codecs:
                # Set by a remote offer; aiortc only applies preferences to its own offers.
                transceiver._codecs = _preferred(transceiver._codecs, names) or transceiver._codecs
            caps = RTCRtpSender.getCapabilities("video").codecs
            transceiver.setCodecPreferences(_preferred(caps, names))

    async def _make_offer(self) -> None:
        renegotiating = self._have_remote
        self._first_offer_due = False
        for pump in self._pumps:
            if pump in self._attached:
                continue
            transceiver = self._free_transceiver(pump.kind)
            if transceiver is None:
                transceiver = self.pc.addTransceiver(pump.kind, direction="sendrecv")
                if renegotiating:
                    await share_bundle_transport(self.pc, transceiver)
            self._attach(pump, transceiver)
        if not renegotiating and self._options.receive:
            for kind in KINDS:
                if not any(t.kind == kind for t in self.pc.getTransceivers()):
                    self.pc.addTransceiver(kind, direction="recvonly")
        self._set_directions()
        if not self.pc.getTransceivers() and self.channel is None:
            logger.info("nothing to send or receive with %s", self.remote.peer_id)
            return
        self._in_flight |= self._needs
        self._needs.clear()
        self._prefer_codecs()
        mapping = negotiated_mapping(self.pc)
        offer = await self.pc.createOffer()
        sdp = keep_mapping(self.pc, offer.sdp, mapping)
        await self._set_local(RTCSessionDescription(sdp, "offer"))
        await self._send(
            Offer(target_peer_id=self.remote.peer_id, sdp=self.pc.localDescription.sdp)
        )

    def _set_directions(self) -> None:
        mine = set(map(id, self._attached.values()))
        for transceiver in self.pc.getTransceivers():
            if not transceiver.stopped:
                transceiver.direction = direction(
                    send=id(transceiver) in mine, receive=self._options.receive
                )

    async def _accept_offer(self, sdp: str) -> None:
        state = self.pc.signalingState
        if state == "have-local-offer":
            if self.offerer:  # the impolite side: our offer stands, the peer rolls back
                logger.info("glare with %s: keeping our offer", self.remote.peer_id)
                return
            logger.info("glare with %s: rolling back our offer", self.remote.peer_id)
            rollback(self.pc)
            self._needs |= self._in_flight  # what the rolled-back offer carried gets another go
            self._in_flight.clear()
        elif state != "stable":
            raise NegotiationError(self.remote.peer_id, f"an offer arrived in state {state}")
        sdp = self._allowed_sdp(sdp)
        if self._options.data_channel and self.channel is None and "m=application" in sdp:
            self._open_channel()
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp, "offer"))
        self._have_remote = True
        for pump in self._pumps:
            if pump not in self._attached:
                transceiver = self._free_transceiver(pump.kind)
                if transceiver is not None and transceiver.mid is not None:
                    self._attach(pump, transceiver)
        for pump, transceiver in self._attached.items():
            if transceiver.mid is not None:  # our answer carries it, as far as the offer allows
                self._needs.discard(pump)
        self._set_directions()
        self._prefer_codecs()
        await self._set_local(await self.pc.createAnswer())
        self._remote_applied(sdp)
        await self._flush_candidates()
        await self._send(
            Answer(target_peer_id=self.remote.peer_id, sdp=self.pc.localDescription.sdp)
        )

    async def _set_local(self, description: RTCSessionDescription) -> None:
        with host_candidate_policy(self._options.ice_addresses):
            await self.pc.setLocalDescription(description)

    async def _flush_candidates(self) -> None:
        pending, self._pending_candidates = self._pending_candidates, []
        for candidate in pending:
            await self._add_candidate(candidate)

    async def _add_candidate(self, message: RelayedIceCandidate) -> None:
        if not message.candidate:
            await self.pc.addIceCandidate(None)  # end of candidates
            return
        text = message.candidate.removeprefix("candidate:")
        try:
            candidate = candidate_from_sdp(text)
        except (AssertionError, ValueError, IndexError):
            logger.warning("ignoring a malformed candidate from %s", self.remote.peer_id)
            return
        if not self._allowed_remote(candidate.ip):
            logger.info("ignoring candidate %s from %s: not an IP address", candidate.ip,
                        self.remote.peer_id)  # fmt: skip
            return
        candidate.sdpMid = message.sdp_mid
        candidate.sdpMLineIndex = message.sdp_m_line_index
        if candidate.sdpMid is None and candidate.sdpMLineIndex is None:
            candidate.sdpMLineIndex = 0
        await self.pc.addIceCandidate(candidate)

    def _allowed_remote(self, address: str) -> bool:
        """Under a host-candidate policy, remote candidates must be IP literals.

        Anything else would make aioice resolve it: a ``.local`` name (what browsers send by
        default) opens a wildcard mDNS socket and multicasts a query, a DNS name asks a resolver;
        neither belongs to a call confined to the policy's addresses.
        """
        if self._options.ice_addresses is None:
            return True
        try:
            ipaddress.ip_address(address)
        except ValueError:
            return False
        return True

    def _allowed_sdp(self, sdp: str) -> str:
        """The SDP without candidate lines that :meth:`_allowed_remote` refuses."""
        kept = []
        for line in sdp.splitlines():
            fields = line.split()
            refused = len(fields) > 4 and not self._allowed_remote(fields[4])
            if line.startswith("a=candidate:") and refused:
                logger.info("dropping candidate %s from %s's SDP", fields[4], self.remote.peer_id)
                continue
            kept.append(line)
        return "\r\n".join(kept) + "\r\n"

    def _subscribe(self, pump: TrackPump) -> Any:
        ring = pump.subscribe()
        self._rings.append((pump, ring))
        return ring

    # ------------------------------------------------------------------ aiortc callbacks (sync)

    def _track_event(self, track: Any) -> None:
        if not self._options.receive:
            # aiortc announces a track for every m-line the remote offers to send on, before our
            # answer makes it inactive; a publish-only participant never gets frames on it.
            return
        capacity = (
            self._options.video_buffer_frames
            if track.kind == "video"
            else self._options.audio_buffer_frames
        )
        # A rebuilt connection feeds the track the user already holds (a tile freezes and
        # resumes instead of vanishing and coming back as a new track).
        index = sum(1 for r in self._remote_tracks if r.kind == track.kind)
        reused = self._track_for(track.kind, index) if self._track_for is not None else None
        remote = reused or RemoteTrack(
            track.kind, peer_id=self.remote.peer_id, peer_name=self.remote.name, capacity=capacity
        )
        self._remote_tracks.append(remote)
        task = asyncio.create_task(self._drain(track, remote), name=f"callbot-drain-{track.kind}")
        self._drains.add(task)
        task.add_done_callback(self._drains.discard)
        if reused is None:
            self._on_track(remote)

    async def _drain(self, source: Any, ring: RemoteTrack) -> None:
        from aiortc.mediastreams import MediaStreamError

        try:
            while True:
                ring.push(await source.recv())
        except MediaStreamError:
            pass
        # No ring.end() here: a source that ends because the connection died leaves the
        # track open for a rebuilt link; aclose() ends it when the peer is really gone.

    @property
    def has_remote(self) -> bool:
        """Whether a remote description was applied (the link has been negotiated)."""
        return self._have_remote

    def _state_event(self) -> None:
        state = self.pc.connectionState
        logger.debug("link %s: %s", self.remote.peer_id, state)
        if state == "failed" or (state == "closed" and not self._closed):
            # aioice closes the connection itself when consent to send expires (RFC 7675):
            # a "closed" we did not ask for is a failure too.
            self.lost = True
            self._fail(NegotiationError(self.remote.peer_id, f"ICE/DTLS connection {state}"))
        self._on_change()

    def _fail(self, exc: NegotiationError) -> None:
        logger.warning("%s", exc)
        if self.failed is None:
            self.failed = exc
        self._on_change()

    # ------------------------------------------------------------------ close

    async def aclose(self, *, keep_tracks: bool = False) -> None:
        """Close the peer connection, end remote tracks, stop every task. Idempotent.

        ``keep_tracks``: leave the remote tracks open, for the link that replaces this one.
        """
        if self._closed:
            return
        self._closed = True
        own = [t for t in (self._worker, self._watchdog, self._nacker) if t is not None]
        for task in own:
            task.cancel()
        # return_exceptions: whatever a task died of, closing goes on to the end.
        await asyncio.gather(*own, return_exceptions=True)
        for pump, ring in self._rings:
            pump.unsubscribe(ring)
        transports = list(getattr(self.pc, "_RTCPeerConnection__iceTransports", ()))
        try:
            await self.pc.close()
            await _stop_late_consent(transports)
        finally:
            drains = tuple(self._drains)
            for task in drains:
                task.cancel()
            await asyncio.gather(*drains, return_exceptions=True)
            if not keep_tracks:
                for remote in self._remote_tracks:
                    remote.end()


__all__ = [
    "DATA_CHANNEL_ID",
    "DATA_CHANNEL_LABEL",
    "LinkOptions",
    "PeerLink",
    "direction",
    "is_offerer",
]
