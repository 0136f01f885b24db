"""What aiortc gets wrong when a negotiated connection is negotiated again, and the repairs.

aiortc handles a *remote* re-offer well enough, but its own later offers break a live session:

* ``createOffer`` resets every transceiver to aiortc's default payload types and header-extension
  ids. When aiortc answered first, the session runs on the *remote* side's numbers, so the new
  offer renumbers them: Chromium refuses it ("RTP extension ID reassignment not supported"), and
  even when accepted media stops, because aiortc's running senders and receivers keep the numbers
  they started with (aiortc issues 686 and 1079). :func:`negotiated_mapping` records the numbers
  in use and :func:`keep_mapping` rewrites the offer (and the transceivers) back to them; a new
  m-line borrows the mapping of an m-line of its kind and never reuses a number that means
  something else elsewhere in the BUNDLE group.
* A transceiver added after the first negotiation gets its own ICE/DTLS transport, so the offer
  would put new ICE credentials and a new fingerprint in a bundled m-line, and the orphan transport
  would keep the connection state short of ``connected``. :func:`share_bundle_transport` puts it
  on the bundle's transport, the way aiortc itself does for a remote re-offer.
* There is no rollback (glare in the W3C "perfect negotiation" pattern): :func:`rollback` undoes
  a pending local offer.

Depends on aiortc 1.16 internals (``RTCRtpTransceiver._codecs``/``_headerExtensions``, the
peer connection's private transport sets and signaling state); pinned by ``aiortc>=1.14,<2``
and covered by tests/test_renegotiation.py.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass
from typing import Any

from aiortc import RTCPeerConnection
from aiortc import sdp as aiortc_sdp

_PC = "_RTCPeerConnection__"
_DYNAMIC_PT = tuple(itertools.chain(range(96, 128), range(35, 64)))
_EXT_IDS = range(1, 15)  # one-byte header extension ids


@dataclass(slots=True)
class Mapping:
    """The payload types and header-extension ids one negotiated m-line runs on."""

    kind: str
    codecs: list[Any]
    extensions: list[Any]


def negotiated_mapping(pc: RTCPeerConnection) -> dict[str, Mapping]:
    """mid -> mapping, for every transceiver that has been through an offer/answer."""
    return {
        t.mid: Mapping(t.kind, list(t._codecs), list(t._headerExtensions))
        for t in pc.getTransceivers()
        if t.mid is not None and t.currentDirection is not None and t._codecs
    }


def _codec_key(codec: Any) -> tuple[Any, ...]:
    params = tuple(sorted((str(k), str(v)) for k, v in codec.parameters.items()))
    return (codec.mimeType.lower(), codec.clockRate, codec.channels, params)


def keep_mapping(pc: RTCPeerConnection, offer_sdp: str, mapping: dict[str, Mapping]) -> str:
    """``offer_sdp`` (fresh from ``createOffer``) on the numbers the session already uses.

    Negotiated m-lines get their recorded codecs and extensions back; new m-lines take those of a
    negotiated m-line of their kind, or keep aiortc's defaults renumbered away from any payload
    type or extension id that the BUNDLE group already uses for something else.
    """
    if not mapping:
        return offer_sdp
    description = aiortc_sdp.SessionDescription.parse(offer_sdp)
    by_kind = {m.kind: m for m in mapping.values()}
    used_pt = {c.payloadType: _codec_key(c) for m in mapping.values() for c in m.codecs}
    used_ext = {e.uri: e.id for m in mapping.values() for e in m.extensions}
    # createOffer gave every transceiver its m-line index; new ones get their mid only later.
    transceivers = {t._get_mline_index(): t for t in pc.getTransceivers()}
    for index, media in enumerate(description.media):
        mid = media.rtp.muxId
        if media.kind not in ("audio", "video") or index not in transceivers:
            continue
        if mid in mapping:
            codecs, extensions = mapping[mid].codecs, mapping[mid].extensions
        elif media.kind in by_kind:
            codecs = copy.deepcopy(by_kind[media.kind].codecs)
            extensions = copy.deepcopy(by_kind[media.kind].extensions)
        else:
            codecs = _renumber_codecs(media.rtp.codecs, used_pt)
            extensions = _renumber_extensions(media.rtp.headerExtensions, used_ext)
        media.fmt = [c.payloadType for c in codecs]
        media.rtp.codecs = codecs
        media.rtp.headerExtensions = extensions
        transceiver = transceivers[index]
        transceiver._codecs = list(codecs)
        transceiver._headerExtensions = list(extensions)
    return str(description)


def _renumber_codecs(codecs: list[Any], used: dict[int, tuple[Any, ...]]) -> list[Any]:
    taken = dict(used)
    renamed: dict[int, int] = {}
    out = []
    for codec in codecs:
        codec = copy.deepcopy(codec)
        key = _codec_key(codec)
        pt = codec.payloadType
        if pt in taken and taken[pt] != key and pt in _DYNAMIC_PT:
            free = (p for p in _DYNAMIC_PT if p not in taken and p not in renamed.values())
            pt = next(free, None)
            if pt is None:
                raise ValueError("no free payload type left in the BUNDLE group")
        renamed[codec.payloadType] = pt
        codec.payloadType = pt
        taken[pt] = key
        out.append(codec)
    for codec in out:  # RTX points at its codec by payload type
        apt = codec.parameters.get("apt")
        if isinstance(apt, int) and apt in renamed:
            codec.parameters["apt"] = renamed[apt]
    return out


def _renumber_extensions(extensions: list[Any], used: dict[str, int]) -> list[Any]:
    taken = set(used.values())
    out = []
    for ext in extensions:
        ext = copy.deepcopy(ext)
        if ext.uri in used:
            ext.id = used[ext.uri]
        elif ext.id in taken:
            free_id = next((i for i in _EXT_IDS if i not in taken), None)
            if free_id is None:
                raise ValueError("no free one-byte header extension id left")
            ext.id = free_id
        taken.add(ext.id)
        out.append(ext)
    return out


async def share_bundle_transport(pc: RTCPeerConnection, transceiver: Any) -> None:
    """Put a transceiver added mid-session on the transport the BUNDLE group already uses."""
    primary = next(
        (
            t.receiver.transport
            for t in pc.getTransceivers()
            if t is not transceiver and t.currentDirection is not None
        ),
        None,
    )
    if primary is None and pc.sctp is not None and pc.sctp.transport.state != "new":
        primary = pc.sctp.transport
    own = transceiver.receiver.transport
    if primary is None or own is primary:
        return
    transceiver.receiver.setTransport(primary)
    transceiver.sender.setTransport(primary)
    transceiver._bundled = True
    getattr(pc, _PC + "dtlsTransports").discard(own)
    getattr(pc, _PC + "iceTransports").discard(own.transport)
    await own.stop()
    await own.transport.stop()


def rollback(pc: RTCPeerConnection) -> None:
    """Undo our pending offer (``setLocalDescription({type: "rollback"})``, which aiortc lacks).

    Transceivers that got their mid from that offer lose it again, so the remote offer that
    caused the glare can claim them (JSEP does the same).
    """
    if pc.signalingState != "have-local-offer":
        raise ValueError(f"nothing to roll back in state {pc.signalingState}")
    current = getattr(pc, _PC + "currentRemoteDescription")
    negotiated = {m.rtp.muxId for m in current.media} if current is not None else set()
    seen = getattr(pc, _PC + "seenMids")
    for t in pc.getTransceivers():
        if t.mid is not None and t.mid not in negotiated:
            seen.discard(t.mid)
            setattr(t, "_RTCRtpTransceiver__mid", None)  # noqa: B010 - a private attribute
            setattr(t, "_RTCRtpTransceiver__mline_index", None)  # noqa: B010
    setattr(pc, _PC + "pendingLocalDescription", None)
    getattr(pc, _PC + "setSignalingState")("stable")


def ice_ufrag(sdp: str) -> str | None:
    """The first ICE username fragment in an SDP (a new one means a new connection)."""
    for line in sdp.splitlines():
        if line.startswith("a=ice-ufrag:"):
            return line.removeprefix("a=ice-ufrag:").strip()
    return None


__all__ = [
    "Mapping",
    "ice_ufrag",
    "keep_mapping",
    "negotiated_mapping",
    "rollback",
    "share_bundle_transport",
]
