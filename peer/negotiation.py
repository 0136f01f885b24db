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
import ipaddress
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
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
from .tracks import RemoteTrack, TrackPump

logger = logging.getLogger(__name__)

KINDS = ("audio", "video")
#: Candidates buffered before the remote description; a peer that floods them has failed.
MAX_PENDING_CANDIDATES = 256
Inbound = RelayedOffer | RelayedAnswer | RelayedIceCandidate


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


class PeerLink:
    """The media connection to one remote peer. Inbound signaling is processed in order by one
    task the link owns; remote tracks are drained by tasks it owns; ``aclose()`` ends them all."""

    def __init__(
        self,
        remote: PeerInfo,
        *,
        options: LinkOptions,
        local_media: Sequence[TrackPump],
        send: Callable[[ClientMessage], Awaitable[None]],
        on_track: Callable[[RemoteTrack], None],
        on_change: Callable[[], None],
        track_for: Callable[[str], RemoteTrack | None] | None = None,
    ) -> None:
        self.remote = remote
        self.offerer = is_offerer(options.local_peer_id, remote.peer_id)
        self._options = options
        self._local = {pump.kind: pump for pump in local_media}
        self._send = send
        self._on_track = on_track
        self._on_change = on_change
        self._track_for = track_for
        self.configuration = rtc_configuration(options.ice_servers)
        self.pc = RTCPeerConnection(configuration=self.configuration)
        self._rings: list[Any] = []
        self._remote_tracks: list[RemoteTrack] = []
        self._drains: set[asyncio.Task[None]] = set()
        self._inbox: asyncio.Queue[Inbound] = asyncio.Queue()
        self._pending_candidates: list[RelayedIceCandidate] = []
        self._have_remote = False
        self._worker: asyncio.Task[None] | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._nacker: asyncio.Task[None] | None = None
        self._closed = False
        self.failed: NegotiationError | None = None
        #: The connection itself died (ICE/DTLS), as opposed to a negotiation that failed.
        self.lost = False
        self.pc.on("track", self._track_event)
        self.pc.on("connectionstatechange", self._state_event)

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

    # ------------------------------------------------------------------ the link's own task

    async def _work(self) -> None:
        try:
            if self.offerer:
                await self._make_offer()
            while True:
                message = await self._inbox.get()
                try:
                    await self._handle(message)
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
            self._have_remote = True
            await self._flush_candidates()
        elif not self._have_remote:
            if len(self._pending_candidates) >= MAX_PENDING_CANDIDATES:
                raise NegotiationError(
                    self.remote.peer_id,
                    f"over {MAX_PENDING_CANDIDATES} candidates before any description",
                )
            self._pending_candidates.append(message)
        else:
            await self._add_candidate(message)

    async def _make_offer(self) -> None:
        for kind in KINDS:
            pump = self._local.get(kind)
            wanted = direction(send=pump is not None, receive=self._options.receive)
            if wanted == "inactive":
                continue
            sender_track = self._subscribe(pump) if pump is not None else kind
            self.pc.addTransceiver(sender_track, direction=wanted)
        if not self.pc.getTransceivers():
            logger.info("nothing to send or receive with %s", self.remote.peer_id)
            return
        await self._set_local(await self.pc.createOffer())
        await self._send(
            Offer(target_peer_id=self.remote.peer_id, sdp=self.pc.localDescription.sdp)
        )

    async def _accept_offer(self, sdp: str) -> None:
        if self.pc.signalingState != "stable":
            # Cannot happen with the id rule; refusing beats corrupting the session.
            raise NegotiationError(self.remote.peer_id, "an offer arrived during our own offer")
        await self.pc.setRemoteDescription(RTCSessionDescription(self._allowed_sdp(sdp), "offer"))
        self._have_remote = True
        for transceiver in self.pc.getTransceivers():
            pump = self._local.get(transceiver.kind)
            # aiortc annotates sender.track as never None; it is None until a track is set.
            current = cast("MediaStreamTrack | None", transceiver.sender.track)
            if pump is not None and current is None:
                transceiver.sender.replaceTrack(self._subscribe(pump))
            transceiver.direction = direction(send=pump is not None, receive=self._options.receive)
        await self._set_local(await self.pc.createAnswer())
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
        reused = self._track_for(track.kind) if self._track_for is not None else None
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
        try:
            await self.pc.close()
        finally:
            drains = tuple(self._drains)
            for task in drains:
                task.cancel()
            await asyncio.gather(*drains, return_exceptions=True)
            if not keep_tracks:
                for remote in self._remote_tracks:
                    remote.end()


__all__ = ["LinkOptions", "PeerLink", "direction", "is_offerer"]
