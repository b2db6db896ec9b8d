"""Which session a datagram on a shared socket (UDP or ICE-TCP) is for, by ICE ufrag.

A STUN request names the ufrag of the session it checks (its USERNAME is
`ours:theirs`, RFC 8445 §7.2.2); the shared sockets read that much of it without
parsing the rest, and keep their sessions by ufrag.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

import aioice

STUN_MAGIC_COOKIE = b"\x21\x12\xa4\x42"  # RFC 8489 §5
STUN_USERNAME = 0x0006
STUN_ATTRIBUTE = struct.Struct("!HH")
STUN_REQUEST, STUN_INDICATION, STUN_SUCCESS, STUN_ERROR = range(4)


def looks_like_stun(data: bytes) -> bool:
    """RFC 8489 §5: two zero bits, then the magic cookie; anything else is media."""
    return len(data) >= 20 and data[0] < 4 and data[4:8] == STUN_MAGIC_COOKIE


def stun_class(data: bytes) -> int:
    """The class bits C1 C0 of a STUN message type (RFC 8489 §5)."""
    return ((data[0] & 0x01) << 1) | ((data[1] >> 4) & 0x01)


def stun_username(data: bytes) -> bytes | None:
    """The USERNAME attribute of a STUN message, read without parsing the rest."""
    end = min(len(data), 20 + int.from_bytes(data[2:4], "big"))
    offset = 20
    while offset + 4 <= end:
        kind, length = STUN_ATTRIBUTE.unpack_from(data, offset)
        if kind == STUN_USERNAME:
            return data[offset + 4 : offset + 4 + length]
        offset += 4 + length + (-length % 4)
    return None


def requested_ufrag(data: bytes) -> bytes | None:
    """The ICE ufrag of ours that a STUN request names (its USERNAME is
    `ours:theirs`, RFC 8445 §7.2.2): what a shared socket routes checks by."""
    username = stun_username(data)
    return None if username is None else username.split(b":", 1)[0]


class _HasUfrag(Protocol):
    ufrag: bytes


PortT = TypeVar("PortT", bound=_HasUfrag)


class PortsByUfrag(Generic[PortT]):
    """The sessions of one shared socket (UDP or ICE-TCP) by their ICE username
    fragment: what a STUN request names (RFC 8445 §7.2.2), so it must be unique on the
    socket (the transport makes it 64 bits long)."""

    def __init__(self, owner: object) -> None:
        self.owner = owner  # the socket, named when a ufrag is taken
        self.ports: dict[bytes, PortT] = {}

    def __len__(self) -> int:
        return len(self.ports)

    def attach(
        self, connection: aioice.Connection, make_port: Callable[[bytes], PortT]
    ) -> PortT:
        """`make_port(ufrag)`, kept under `connection`'s ufrag; OSError if it is taken."""
        ufrag = connection.local_username.encode()
        if ufrag in self.ports:
            raise OSError(f"ICE username fragment {ufrag!r} is taken on {self.owner!r}")
        port = self.ports[ufrag] = make_port(ufrag)
        return port

    def detach(self, port: PortT) -> None:
        """Forget `port`, unless its ufrag already names another."""
        if self.ports.get(port.ufrag) is port:
            del self.ports[port.ufrag]

    def rename(self, port: PortT, ufrag: bytes) -> None:
        """Route `ufrag` to `port` instead of its old one: an ICE restart gives the
        session new credentials (RFC 8445 §9), and the old ufrag no longer checks."""
        if ufrag in self.ports:
            raise OSError(f"ICE username fragment {ufrag!r} is taken on {self.owner!r}")
        self.detach(port)
        port.ufrag = ufrag
        self.ports[ufrag] = port

    def for_request(self, request: bytes) -> PortT | None:
        """The session a STUN request is for."""
        ufrag = requested_ufrag(request)
        return None if ufrag is None else self.ports.get(ufrag)
