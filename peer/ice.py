"""The host-candidate policy and the RTCConfiguration every peer connection is built from.

aioice has no per-connection choice of local addresses: ``Connection.gather_candidates`` asks the
module-level ``aioice.ice.get_host_addresses``, which skips 127.0.0.1 and returns every other
interface. We wrap that function once with one that consults a context variable; a participant
sets the variable around ``setLocalDescription`` (where aiortc gathers, awaited inline), so the
policy is per participant, and code that never sets it keeps aioice's behaviour.
"""

from __future__ import annotations

import contextlib
import contextvars
import ipaddress
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import aioice.ice
from aiortc import RTCConfiguration, RTCIceServer

from .config import IceServer

_addresses: contextvars.ContextVar[tuple[str, ...] | None] = contextvars.ContextVar(
    "callbot_ice_addresses", default=None
)
_MARK = "_callbot_policy"


def _install() -> None:
    current = aioice.ice.get_host_addresses
    if getattr(current, _MARK, False):
        return
    original: Callable[..., list[str]] = current

    def get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        chosen = _addresses.get()
        if chosen is None:
            return original(use_ipv4=use_ipv4, use_ipv6=use_ipv6)
        versions = {4} if use_ipv4 else set()
        if use_ipv6:
            versions.add(6)
        return [a for a in chosen if ipaddress.ip_address(a).version in versions]

    setattr(get_host_addresses, _MARK, True)
    aioice.ice.get_host_addresses = get_host_addresses


@contextlib.contextmanager
def host_candidate_policy(addresses: Sequence[str] | None) -> Iterator[None]:
    """Within this block, ICE gathering offers only ``addresses`` (``None``: aioice default)."""
    _install()
    token = _addresses.set(tuple(addresses) if addresses is not None else None)
    try:
        yield
    finally:
        _addresses.reset(token)


def rtc_configuration(servers: Sequence[IceServer]) -> RTCConfiguration:
    """Always an explicit list: ``iceServers=None`` would make aiortc add Google's STUN server."""
    ice: list[Any] = [
        RTCIceServer(urls=list(s.urls), username=s.username, credential=s.credential)
        for s in servers
    ]
    return RTCConfiguration(iceServers=ice)


__all__ = ["host_candidate_policy", "rtc_configuration"]
