"""Which UDP sockets this process holds, read from /proc (Linux), to prove where ICE bound."""

from __future__ import annotations

import os
import socket
import struct


def _socket_inodes(pid: int | str) -> set[str]:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def _decode_v4(hex_addr: str) -> tuple[str, int]:
    host, port = hex_addr.split(":")
    return socket.inet_ntoa(struct.pack("<I", int(host, 16))), int(port, 16)


def _decode_v6(hex_addr: str) -> tuple[str, int]:
    host, port = hex_addr.split(":")
    raw = bytes.fromhex(host)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
    return socket.inet_ntop(socket.AF_INET6, words), int(port, 16)


def own_udp_sockets(pid: int | str = "self") -> list[tuple[str, int]]:
    """(local address, port) of every UDP socket process ``pid`` (default: this one) has open."""
    mine = _socket_inodes(pid)
    found = []
    for path, decode in (("/proc/net/udp", _decode_v4), ("/proc/net/udp6", _decode_v6)):
        try:
            with open(path) as fh:
                lines = fh.readlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            if fields[9] in mine:
                found.append(decode(fields[1]))
    return found
