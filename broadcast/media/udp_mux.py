"""One UDP port for the media of every session, demultiplexed here (STUN requests by
the ICE ufrag they name: `ufrag_routing.py`).

aioice binds a socket per connection; firewalls, NAT and containers want one known port,
and one socket lets a packet reach all its viewers in one `sendmmsg`. A `MediaSocket`
carries every session on one address: a STUN request goes to the session whose ICE
username fragment it names (RFC 8445 §7.2.2), a STUN response to the session whose
request it answers, and anything else (DTLS, SRTP, SRTCP) to the session that has
authenticated its sender with ICE. Datagrams matching nothing are dropped and counted.

Packets to send are queued and leave together when the event loop's current step ends:
the viewers of one incoming packet share one system call when the native extension
(`_fanout.c`) is built, one `sendto` each otherwise.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
from collections.abc import Callable
from typing import Any, Protocol, cast

import aioice
import pylibsrtp
from aioice import stun
from aioice.ice import StunProtocol
from pylibsrtp._binding import ffi, lib

from broadcast.media.ufrag_routing import (
    STUN_INDICATION,
    STUN_REQUEST,
    STUN_SUCCESS,
    PortsByUfrag,
    looks_like_stun,
    stun_class,
)

try:
    from broadcast.media import _fanout
except ImportError:  # not built: the pure-Python path sends the same packets
    _fanout = None  # type: ignore[assignment]  # a module or None: mypy has no such type

logger = logging.getLogger(__name__)

Address = tuple[str, int]
Outbox = list[tuple[bytes, Address]]
# A viewer for the native fan-out: (address of its srtp_t, its address, payload type or
# -1 to keep the packet's, the pylibsrtp Session that owns the srtp_t, kept alive here).
FanOutTarget = tuple[int, Address, int, pylibsrtp.Session]
# BROADCAST_NATIVE=0 sends the pure-Python way, to compare or to rule the extension out.
NATIVE = _fanout is not None and os.environ.get("BROADCAST_NATIVE") != "0"
# libsrtp's srtp_protect, from pylibsrtp: the native fan-out protects with the very
# sessions (and library) that the Python path uses, so their SRTP state stays one.
SRTP_PROTECT = int(ffi.cast("uintptr_t", ffi.addressof(lib, "srtp_protect")))
# Room for a burst (a GOP sent to a joining viewer) without kernel drops.
SOCKET_BUFFER_BYTES = 4 << 20


def send_each(sock: socket.socket, outbox: Outbox) -> int:
    """Send queued datagrams one `sendto` each; returns how many left."""
    sent = 0
    sendto = sock.sendto
    for data, addr in outbox:
        try:
            sendto(data, addr)
        except BlockingIOError:
            break  # the socket buffer is full: the rest is dropped, like UDP would
        except OSError as exc:
            if exc.errno == errno.ENOBUFS:
                break  # the kernel is out of buffers, as the native path stops too
            continue  # this address cannot be reached; the others may
        sent += 1
    return sent


def send_batched(sock: socket.socket, outbox: Outbox) -> int:
    """Send queued datagrams with `sendmmsg` (native); same outcome as `send_each`."""
    return _fanout.send(sock.fileno(), sock.family, outbox)


def fan_out_each(
    sock: socket.socket, packet: bytes, targets: list[FanOutTarget]
) -> tuple[int, int]:
    """`_fanout.fan_out` in Python: protect one packet for every target and send
    them; (sent, refused by SRTP). No object or call per viewer but libsrtp's."""
    outbox: Outbox = []
    refused = 0
    marker = packet[1] & 0x80
    for _, addr, payload_type, session in targets:
        data = packet
        if payload_type >= 0:
            data = packet[:1] + bytes((marker | payload_type,)) + packet[2:]
        try:
            outbox.append((session.protect(data), addr))
        except (pylibsrtp.Error, ValueError):
            refused += 1
    return send_each(sock, outbox), refused


def default_sender() -> Callable[[socket.socket, Outbox], int]:
    return send_batched if NATIVE else send_each


def srtp_session_address(session: Any) -> int:
    """The address of a pylibsrtp Session's srtp_t, for the native fan-out."""
    return int(ffi.cast("uintptr_t", session._srtp[0]))


class MediaSocket(asyncio.DatagramProtocol):
    """The shared UDP socket of one address, and who each datagram belongs to."""

    def __init__(
        self,
        sock: socket.socket,
        sender: Callable[[socket.socket, Outbox], int] | None = None,
    ) -> None:
        self.sock = sock
        self.address: Address = sock.getsockname()[:2]
        self._send = sender or default_sender()
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.DatagramTransport | None = None
        self._by_ufrag = PortsByUfrag[SessionPort](self)
        self._by_address: dict[Address, SessionPort] = {}
        self._by_transaction: dict[bytes, SessionPort] = {}
        self._outbox: Outbox = []
        self.unrouted = 0  # datagrams that belonged to no session
        self.send_dropped = 0  # datagrams the kernel would not take
        self.srtp_refused = 0  # datagrams SRTP would not protect

    @classmethod
    async def open(
        cls,
        host: str,
        port: int,
        sender: Callable[[socket.socket, Outbox], int] | None = None,
    ) -> MediaSocket:
        """Bind `host:port` (0: any free port) and start receiving."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER_BYTES)
            sock.bind((host, port))
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        loop = asyncio.get_running_loop()
        _, media = await loop.create_datagram_endpoint(
            lambda: cls(sock, sender), sock=sock
        )
        return media

    def __repr__(self) -> str:
        return f"MediaSocket({self.address[0]}:{self.address[1]})"

    @property
    def sessions(self) -> int:
        return len(self._by_ufrag)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    # --- sessions ------------------------------------------------------------------

    def attach(self, connection: aioice.Connection) -> SessionPort:
        """A protocol for `connection` on this socket, found by its username fragment."""
        return self._by_ufrag.attach(
            connection, lambda ufrag: SessionPort(connection, self, ufrag)
        )

    def detach(self, port: SessionPort) -> None:
        self._by_ufrag.detach(port)
        for addr in port.addresses:
            if self._by_address.get(addr) is port:
                del self._by_address[addr]
        for transaction_id in port.transactions_sent:
            if self._by_transaction.get(transaction_id) is port:
                del self._by_transaction[transaction_id]
        port.addresses.clear()
        port.transactions_sent.clear()

    def learn(self, addr: Address, port: SessionPort) -> None:
        """`addr` has proved it is `port`'s ICE peer: its media goes there."""
        previous = self._by_address.get(addr)
        if previous is port:
            return
        if previous is not None:
            previous.addresses.discard(addr)
        self._by_address[addr] = port
        port.addresses.add(addr)

    def expect(self, transaction_id: bytes, port: SessionPort) -> None:
        """`port` sent a STUN request: its response goes back there."""
        self._by_transaction[transaction_id] = port
        port.transactions_sent.add(transaction_id)

    # --- receiving -----------------------------------------------------------------

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        if len(addr) != 2:
            addr = (addr[0], addr[1])  # IPv6 four-tuple
        if looks_like_stun(data):
            port = self._stun_destination(data, addr)
        else:
            port = self._by_address.get(addr)
        if port is None:
            self.unrouted += 1
            return
        port.datagram_received(data, addr)

    def _stun_destination(self, data: bytes, addr: Address) -> SessionPort | None:
        kind = stun_class(data)
        if kind == STUN_REQUEST:
            return self._by_ufrag.for_request(data)
        if kind == STUN_INDICATION:
            return self._by_address.get(addr)
        port = self._by_transaction.pop(data[8:20], None)
        if port is not None:
            port.transactions_sent.discard(data[8:20])
            if kind == STUN_SUCCESS:
                self.learn(addr, port)
        return port

    def error_received(self, exc: Exception) -> None:
        # ICMP errors for one peer (port unreachable) say nothing about the others.
        logger.debug("%r: %s", self, exc)

    # --- sending -------------------------------------------------------------------

    def send(self, data: bytes, addr: Address) -> None:
        """Queue a datagram; the queue leaves when the loop's current step is done."""
        self._outbox.append((data, addr))
        if len(self._outbox) == 1:
            self._loop.call_soon(self.flush)

    def flush(self) -> None:
        if self._outbox:
            outbox, self._outbox = self._outbox, []
            self.send_dropped += len(outbox) - self._send(self.sock, outbox)

    def fan_out(self, packet: bytes, targets: list[FanOutTarget]) -> None:
        """Protect `packet` for every target and send them all now: one `sendmmsg`
        (native), or one tight loop of protect + `sendto`."""
        self.flush()  # what was queued before goes first, in order
        if NATIVE:
            sent, refused = _fanout.fan_out(
                self.sock.fileno(), self.sock.family, SRTP_PROTECT, packet, targets
            )
        else:
            sent, refused = fan_out_each(self.sock, packet, targets)
        self.srtp_refused += refused
        self.send_dropped += len(targets) - sent - refused


class SessionPort(StunProtocol):
    """One session's share of a MediaSocket; to aioice, a protocol like any other."""

    def __init__(
        self, connection: aioice.Connection, media: MediaSocket, ufrag: bytes
    ) -> None:
        super().__init__(connection)
        self.media = media
        self.ufrag = ufrag
        self.addresses: set[Address] = set()
        self.transactions_sent: set[bytes] = set()
        self.connection_made(SharedEndpoint(self))

    def send_stun(self, message: stun.Message, addr: Address) -> None:
        if message.message_class == stun.Class.RESPONSE:
            # aioice answers success only to a request signed with our ICE password.
            self.media.learn(addr, self)
        elif message.message_class == stun.Class.REQUEST:
            self.media.expect(message.transaction_id, self)
        self.media.send(bytes(message), addr)

    async def send_data(self, data: bytes, addr: Address) -> None:
        self.media.send(data, addr)

    # --- what SharedEndpoint needs -------------------------------------------------

    def send(self, data: bytes, addr: Address) -> None:
        self.media.send(data, addr)

    @property
    def sockname(self) -> Address:
        return self.media.address

    def detach(self) -> None:
        self.media.detach(self)

    def rename(self, ufrag: bytes) -> None:
        """Checks naming `ufrag` (after an ICE restart) come here from now on."""
        self.media._by_ufrag.rename(self, ufrag)


class SharedPort(Protocol):
    """A session's share of a shared media socket (UDP here, or ICE-TCP)."""

    def send(self, data: bytes, addr: Address) -> None: ...

    @property
    def sockname(self) -> Address: ...

    def detach(self) -> None: ...

    def connection_lost(self, exc: Exception | None) -> None: ...


class SharedEndpoint(asyncio.DatagramTransport):
    """What aioice and our transport call `protocol.transport`: a shared socket."""

    def __init__(self, port: SharedPort) -> None:
        super().__init__()
        self._port = port
        self._closing = False

    def sendto(self, data: Any, addr: Any = None) -> None:
        self._port.send(data, addr)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "sockname":
            return self._port.sockname
        return default

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._port.detach()
        asyncio.get_running_loop().call_soon(self._port.connection_lost, None)
