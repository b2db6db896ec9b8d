"""ICE-TCP on the media port, for viewers whose network blocks UDP (RFC 6544).

Beside each shared UDP socket the server listens on TCP at the same address and port,
and offers it as a passive host candidate: the viewer connects, and ICE, DTLS and SRTP
then flow over the connection as RFC 4571 frames (a 16-bit length, then the message).
Like a datagram on the UDP socket, a connection belongs to no session until its first
frame, a STUN request, names the session's ICE username fragment; it may carry DTLS and
SRTP once ICE has answered a check on it with success (the check was signed with the
session's ICE password). A viewer that falls behind loses frames, never the server's
memory: each connection's send buffer is bounded.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from collections import Counter
from typing import cast

import aioice
from aioice import stun
from aioice.ice import StunProtocol

from broadcast.media.udp_mux import Address, SharedEndpoint
from broadcast.media.ufrag_routing import (
    STUN_REQUEST,
    PortsByUfrag,
    looks_like_stun,
    stun_class,
)

logger = logging.getLogger(__name__)

FRAME_HEADER = struct.Struct("!H")  # RFC 4571 §2
# A connection that has not named a session by then is a port scanner or a stray.
FIRST_FRAME_TIMEOUT_S = 10.0
# Connections that have named no session yet (in all, and from one address: one host
# cannot take every slot), and per session: a viewer needs one (two while it tries
# another address); more is a flood, not a viewer.
MAX_PENDING_CONNECTIONS = 256
MAX_PENDING_PER_HOST = 16
MAX_CONNECTIONS_PER_SESSION = 4
# About 2 s of a 4 Mbit/s stream: past this a viewer is too far behind to catch up, and
# frames are dropped (whole, so the framing stays intact) instead of queued.
MAX_SEND_BUFFER_BYTES = 1 << 20
# RFC 6544 §4.2: local preference from the direction (passive: 4) and the type
# preference below every UDP candidate's, so a peer that has UDP uses it.
TCP_HOST_TYPE_PREFERENCE = 90
TCP_PASSIVE_LOCAL_PREFERENCE = (4 << 13) | 8191


def tcp_candidate_priority(component: int) -> int:
    """RFC 8445 §5.1.2.1 with RFC 6544 §4.2's preferences for a passive host candidate."""
    return (
        (TCP_HOST_TYPE_PREFERENCE << 24)
        + (TCP_PASSIVE_LOCAL_PREFERENCE << 8)
        + (256 - component)
    )


class MediaTcpListener:
    """The ICE-TCP listener of one address, and which session each connection is for."""

    def __init__(self) -> None:
        self.address: Address = ("", 0)
        self._server: asyncio.AbstractServer | None = None
        self._by_ufrag = PortsByUfrag[TcpSessionPort](self)
        self.unrouted = 0  # connections that named no session, or sent junk first
        self.pending: Counter[str] = Counter()  # by host: not named a session yet
        self.send_dropped = 0  # frames dropped because a viewer fell behind

    @classmethod
    async def open(cls, host: str, port: int) -> MediaTcpListener:
        """Listen on `host:port` (the shared UDP socket's port, so never 0 here)."""
        listener = cls()
        loop = asyncio.get_running_loop()
        listener._server = await loop.create_server(
            lambda: _TcpPeer(listener), host, port, reuse_address=True, backlog=512
        )
        listener.address = listener._server.sockets[0].getsockname()[:2]
        return listener

    def __repr__(self) -> str:
        return f"MediaTcpListener({self.address[0]}:{self.address[1]})"

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for port in list(self._by_ufrag.ports.values()):
            port.drop_peers()

    def attach(self, connection: aioice.Connection) -> TcpSessionPort:
        """A protocol for `connection`'s ICE-TCP candidate, found by its ufrag."""
        return self._by_ufrag.attach(
            connection, lambda ufrag: TcpSessionPort(connection, self, ufrag)
        )

    def detach(self, port: TcpSessionPort) -> None:
        self._by_ufrag.detach(port)
        port.drop_peers()

    def session_for(self, first_frame: bytes) -> TcpSessionPort | None:
        """The session a connection's first frame, a STUN request, asks for."""
        if not looks_like_stun(first_frame) or stun_class(first_frame) != STUN_REQUEST:
            return None
        return self._by_ufrag.for_request(first_frame)


class _TcpPeer(asyncio.Protocol):
    """One accepted connection: RFC 4571 frames in, to the session it named."""

    def __init__(self, listener: MediaTcpListener) -> None:
        self.listener = listener
        self.port: TcpSessionPort | None = None
        self.authenticated = False  # ICE answered a check on it with success
        self.addr: Address = ("", 0)
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._first_frame_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.addr = (peer[0], peer[1])
        pending = self.listener.pending
        if (
            pending.total() >= MAX_PENDING_CONNECTIONS
            or pending[self.addr[0]] >= MAX_PENDING_PER_HOST
        ):
            self.listener.unrouted += 1
            self._transport.abort()
            return
        pending[self.addr[0]] += 1
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._first_frame_timer = asyncio.get_running_loop().call_later(
            FIRST_FRAME_TIMEOUT_S, self._refuse
        )

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        offset = 0
        while len(buffer) - offset >= FRAME_HEADER.size:
            (length,) = FRAME_HEADER.unpack_from(buffer, offset)
            end = offset + FRAME_HEADER.size + length
            if end > len(buffer):
                break
            frame = bytes(buffer[offset + FRAME_HEADER.size : end])
            offset = end
            if not self._frame_received(frame):
                return
        del buffer[:offset]

    def _frame_received(self, frame: bytes) -> bool:
        """Hand one frame to the session; False once the connection is refused."""
        port = self.port
        if port is None:
            port = self.listener.session_for(frame)
            if port is None or len(port.peers) >= MAX_CONNECTIONS_PER_SESSION:
                self._refuse()
                return False
            self._named()
            self.port = port
            port.peers[self.addr] = self
        if self.authenticated or looks_like_stun(frame):
            port.datagram_received(frame, self.addr)
        return True

    def _named(self) -> None:
        """No longer pending: it named a session, or it is gone."""
        if self._first_frame_timer is not None:
            self._first_frame_timer.cancel()
            self._first_frame_timer = None
            pending = self.listener.pending
            pending[self.addr[0]] -= 1
            if pending[self.addr[0]] <= 0:
                del pending[self.addr[0]]

    def _refuse(self) -> None:
        if self.port is None and self._transport is not None:
            self.listener.unrouted += 1
            self._named()
            self._transport.abort()

    def write_frame(self, data: bytes) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        if transport.get_write_buffer_size() > MAX_SEND_BUFFER_BYTES:
            self.listener.send_dropped += 1
            return
        transport.write(FRAME_HEADER.pack(len(data)) + data)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._named()
        if self.port is not None:
            self.port.peer_lost(self)


class TcpSessionPort(StunProtocol):
    """One session's ICE-TCP candidate; to aioice, a protocol like any other.

    We are passive: checks aioice would send to a peer that has not connected go
    nowhere. Its check that answers the peer's own check goes back on that connection.
    """

    def __init__(
        self, connection: aioice.Connection, listener: MediaTcpListener, ufrag: bytes
    ) -> None:
        super().__init__(connection)
        self.listener = listener
        self.ufrag = ufrag
        self.peers: dict[Address, _TcpPeer] = {}
        self.connection_made(SharedEndpoint(self))

    def send_stun(self, message: stun.Message, addr: Address) -> None:
        peer = self.peers.get(addr)
        if peer is None:
            return
        if message.message_class == stun.Class.RESPONSE:
            # aioice answers success only to a request signed with our ICE password.
            peer.authenticated = True
        peer.write_frame(bytes(message))

    async def send_data(self, data: bytes, addr: Address) -> None:
        self.send(data, addr)

    def peer_lost(self, peer: _TcpPeer) -> None:
        """A connection closed: if it carried the session, the session is over now
        rather than when ICE consent expires (~30 s)."""
        if self.peers.get(peer.addr) is not peer:
            return
        del self.peers[peer.addr]
        connection = self.receiver
        for pair in connection._nominated.values():
            if pair.protocol is self and pair.remote_addr == peer.addr:
                connection.protocol_lost(self)

    def drop_peers(self) -> None:
        for peer in list(self.peers.values()):
            peer.close()

    # --- what SharedEndpoint needs -------------------------------------------------

    def send(self, data: bytes, addr: Address) -> None:
        peer = self.peers.get(addr)
        if peer is not None:
            peer.write_frame(data)

    @property
    def sockname(self) -> Address:
        return self.listener.address

    def detach(self) -> None:
        self.listener.detach(self)

    def rename(self, ufrag: bytes) -> None:
        """New connections naming `ufrag` (after an ICE restart) come here."""
        self.listener._by_ufrag.rename(self, ufrag)
