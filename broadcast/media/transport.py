"""One BUNDLEd ICE + DTLS-SRTP transport per session, built from aiortc's ORTC objects.

With gathering.py (the candidates) and the shared sockets (udp_mux.py, tcp_mux.py), the
only code that touches aiortc/aioice internals. We use aiortc for ICE, DTLS
and SRTP keys and nothing else: no RTCPeerConnection, no RTCRtpReceiver (which would
start a decoder thread), no RTCRtpSender (which packetizes per viewer). Decrypted
RTP/RTCP is handed to our callbacks; outgoing packets are protected and sent
synchronously without a coroutine per packet, or by the shared socket's fan-out.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import struct
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

import aioice
import aioice.stun
import pylibsrtp
from aioice.ice import StunProtocol
from aiortc import (
    RTCCertificate,
    RTCDtlsFingerprint,
    RTCDtlsParameters,
    RTCDtlsTransport,
    RTCIceCandidate,
    RTCIceGatherer,
    RTCIceParameters,
    RTCIceServer,
    RTCIceTransport,
)
from aiortc.rtcdtlstransport import State as DtlsState
from pylibsrtp._binding import ffi

from broadcast.media.gathering import gather_our_way
from broadcast.media.tcp_mux import MediaTcpListener, TcpSessionPort
from broadcast.media.udp_mux import MediaSocket, SessionPort, srtp_session_address
from broadcast.media.ufrag_routing import looks_like_stun

logger = logging.getLogger(__name__)

# pylibsrtp protects in a 1,500-byte buffer less 144 bytes of worst-case trailer, so it
# refuses RTP over 1,356 bytes; GStreamer's payloaders send 1,400. Our SRTP trailer is
# 10-16 bytes, so a 2 KiB buffer protects every packet that arrived in a datagram.
SRTP_BUFFER_BYTES = 2048
MAX_FAILURES_LOGGED = 5
# ICE waits forever for candidates when the offer lacks a=end-of-candidates; a session
# that has not connected by then never will, and must free its port and stream slot.
CONNECT_TIMEOUT_S = 30.0

RtpHandler = Callable[[bytes], None]
StateHandler = Callable[[str], Awaitable[None] | None]


class SecureTransport:
    """The ICE + DTLS-SRTP transport of one WHIP or WHEP session: a `Transport`
    (media/transport_protocol.py) in the process carrying its media."""

    def __init__(
        self,
        certificate: RTCCertificate,
        host_addresses: Sequence[str],
        name: str,
        stun_servers: Sequence[str] = (),
        ports: tuple[int, int] | None = None,
        media_sockets: Sequence[MediaSocket] = (),
        tcp_listeners: Sequence[MediaTcpListener] = (),
    ) -> None:
        self.name = name
        # aiortc's default is Google's STUN server: ask only those we are told to.
        self._gatherer = RTCIceGatherer(
            iceServers=[RTCIceServer(urls=url) for url in stun_servers]
        )
        if host_addresses or ports or media_sockets:
            gather_our_way(
                self._gatherer._connection,
                host_addresses,
                ports,
                media_sockets,
                tcp_listeners,
            )
        self._ice = RTCIceTransport(self._gatherer)
        self._dtls = RTCDtlsTransport(self._ice, [certificate])
        self._connection: aioice.Connection = self._gatherer._connection
        self._on_rtp: RtpHandler | None = None
        self._on_rtcp: RtpHandler | None = None
        self._dtls._handle_rtp_data = self._handle_rtp_data  # type: ignore[method-assign]
        self._dtls._handle_rtcp_data = self._handle_rtcp_data  # type: ignore[method-assign]
        self._start_task: asyncio.Task[None] | None = None
        self._on_path: list[Callable[[], None]] = []
        self._watch_nominations()
        self.closed = False
        self._widened = False
        self.failed_packets = 0
        self.foreign_packets = 0  # datagrams from addresses that are not our peer

    # --- setup -------------------------------------------------------------------

    async def gather(self) -> None:
        """Gather local candidates (host candidates are immediate on our addresses)."""
        await self._gatherer.gather()
        for protocol in self._connection._protocols:
            self._admit_only_the_peer(protocol)

    def _admit_only_the_peer(self, protocol: StunProtocol) -> None:
        """Drop DTLS/SRTP datagrams that do not come from our ICE peer.

        aioice hands every non-STUN datagram on a port to DTLS, whoever sent it. Once a
        pair is selected only its remote address may send media (RFC 8445 §12); before,
        only addresses ICE has paired with. STUN still goes to aioice, which answers
        checks from new addresses as RFC 8445 says.
        """
        deliver = protocol.datagram_received

        def datagram_received(data: bytes, addr: tuple[Any, ...]) -> None:
            if not looks_like_stun(data):
                if not self._from_peer(protocol, (addr[0], addr[1])):
                    self.foreign_packets += 1
                    return
            try:
                deliver(data, addr)
            except struct.error:
                # aioice's STUN parser catches ValueError only: an attribute too short
                # for its type (a 2-byte PRIORITY) raises this. Found by tests/fuzz.
                self.failed_packets += 1

        protocol.datagram_received = datagram_received  # type: ignore[method-assign,assignment]

    def _from_peer(self, protocol: StunProtocol, address: tuple[str, int]) -> bool:
        """Whether a DTLS/SRTP datagram comes from the peer, on the selected pair.

        The same address on another candidate (UDP vs ICE-TCP) is not the peer's. But
        Chromium nominates every pair it checks (RFC 8445 §8.1.1 aggressive nomination)
        and uses the best one that works, while aioice keeps the first to succeed here
        and cancels its other checks: when Chromium's ICE-TCP check wins the race,
        Chromium still sends DTLS over UDP. Media on a pair the peer nominated (its
        checks carry our password) is where the peer is: the selected pair follows it —
        only while DTLS is being set up. Once connected the pair holds: a viewer's fan-out
        target is the selected pair's address, and a move to an address we never checked
        (a forged source) would aim the stream at somebody else (RFC 7675 consent).
        """
        connection = self._connection
        selected = connection._nominated.get(1)
        if (
            selected is not None
            and selected.protocol is protocol
            and selected.remote_addr == address
        ):
            return True  # also while an ICE restart checks new pairs
        paired = [
            p
            for p in connection._check_list
            if p.protocol is protocol and p.remote_addr == address
        ]
        if selected is None:
            return bool(paired)
        if self._dtls.state == "connected":
            return False
        for pair in paired:
            if pair.remote_nominated:
                logger.info("%s follows its peer to %s", self.name, pair)
                connection._nominated[1] = pair
                return True
        return False

    def _watch_nominations(self) -> None:
        """Call the `on_path` handlers when aioice selects another pair: it does so
        in `check_complete`, for the peer's nomination (an ICE restart's new path)."""
        connection = self._connection
        complete = connection.check_complete

        def check_complete(pair: aioice.ice.CandidatePair) -> None:
            before = connection._nominated.get(1)
            complete(pair)
            if connection._nominated.get(1) is not before:
                for handler in self._on_path:
                    handler()

        connection.check_complete = check_complete  # type: ignore[method-assign]

    def on_path(self, handler: Callable[[], None]) -> None:
        """Also call `handler()` when the selected ICE pair changes (an ICE restart):
        what `fan_out_target` said before names the old address."""
        self._on_path.append(handler)

    @property
    def local_ice(self) -> RTCIceParameters:
        return self._gatherer.getLocalParameters()

    @property
    def local_candidates(self) -> list[RTCIceCandidate]:
        return self._gatherer.getLocalCandidates()

    @property
    def local_fingerprints(self) -> list[RTCDtlsFingerprint]:
        return self._dtls.getLocalParameters().fingerprints

    @property
    def state(self) -> str:
        """`new`, `connecting`, `connected`, `closed` or `failed` (the DTLS state)."""
        return str(self._dtls.state)

    def on_packets(self, rtp: RtpHandler, rtcp: RtpHandler) -> None:
        """Deliver decrypted RTP and RTCP datagrams to these handlers."""
        self._on_rtp = rtp
        self._on_rtcp = rtcp

    def on_state(self, handler: Callable[[str], None]) -> None:
        """Also call `handler(state)` whenever the DTLS state changes."""

        def changed() -> None:
            # aiortc says "connected" inside its DTLS start: what the handler sends
            # then (a joining viewer's cached GOP) must already fit the wide buffer.
            if self.state == "connected":
                self._widen_srtp()
            handler(self.state)

        self._dtls.on("statechange", changed)

    def _widen_srtp(self) -> None:
        """Once DTLS gave us SRTP keys: a buffer for any packet we forward."""
        if not self._widened and self._dtls._tx_srtp is not None:
            _widen(self._dtls._tx_srtp)
            self._widened = True

    def start(
        self,
        remote_ice: RTCIceParameters,
        remote_candidates: Sequence[RTCIceCandidate],
        remote_fingerprints: Sequence[RTCDtlsFingerprint],
        candidates_complete: bool,
        dtls_role: str,
        offerer: bool = False,
    ) -> None:
        """Start ICE then DTLS in the background, as the answerer (or, for an edge
        pulling from its origin, the `offerer`).

        `dtls_role` is ours, as answered (`server` for `a=setup:passive`).
        """
        if self.closed:
            return
        # The offerer controls ICE, and the answerer is controlled unless the offerer
        # is ICE-lite (RFC 8445 §6.1.1).
        self._connection.ice_controlling = offerer or bool(remote_ice.iceLite)
        self._ice._role_set = True
        self._dtls._set_role(dtls_role)
        connecting = self._connect(
            remote_ice,
            list(remote_candidates),
            list(remote_fingerprints),
            candidates_complete,
        )
        self._start_task = asyncio.create_task(self._within_timeout(connecting))

    async def _within_timeout(self, connecting: Coroutine[Any, Any, None]) -> None:
        try:
            await asyncio.wait_for(connecting, CONNECT_TIMEOUT_S)
        except TimeoutError:
            logger.info(
                "%s did not connect within %.0f s", self.name, CONNECT_TIMEOUT_S
            )
            self._dtls._set_state(DtlsState.FAILED)

    async def _connect(
        self,
        remote_ice: RTCIceParameters,
        remote_candidates: list[RTCIceCandidate],
        remote_fingerprints: list[RTCDtlsFingerprint],
        candidates_complete: bool,
    ) -> None:
        try:
            for candidate in remote_candidates:
                await self._ice.addRemoteCandidate(candidate)
            if candidates_complete:
                await self._ice.addRemoteCandidate(None)
            await self._ice.start(remote_ice)
            if self._ice.state != "completed":
                logger.info("%s ICE failed", self.name)
                self._dtls._set_state(DtlsState.FAILED)
                return
            await self._dtls.start(
                RTCDtlsParameters(fingerprints=remote_fingerprints, role="auto")
            )
            self._widen_srtp()
        except (ConnectionError, OSError) as exc:
            logger.info("%s connection failed: %s", self.name, exc)
            self._dtls._set_state(DtlsState.FAILED)

    async def add_remote_candidate(self, candidate: RTCIceCandidate | None) -> None:
        """Add a trickled remote candidate, or `None` for end-of-candidates."""
        await self._ice.addRemoteCandidate(candidate)

    async def restart_ice(
        self,
        remote_ice: RTCIceParameters,
        remote_candidates: Sequence[RTCIceCandidate],
        candidates_complete: bool,
    ) -> None:
        """ICE restart (RFC 8445 §9, asked by PATCH: RFC 9725 §4.4.1): new credentials
        on both sides (ours then in `local_ice`) and a new check list on the same
        sockets, while DTLS and its SRTP keys carry on over this ICE transport.

        The selected pair keeps the media until the peer, which controls ICE, nominates
        a pair checked with the new credentials; aioice then selects it (its
        USE-CANDIDATE handling), and only that pair's address may send media.
        """
        if self.closed:
            raise ConnectionError(f"{self.name} is closed")
        connection = self._connection
        ufrag, password = secrets.token_hex(8), secrets.token_hex(16)
        for protocol in connection._protocols:
            if isinstance(protocol, SessionPort | TcpSessionPort):
                protocol.rename(ufrag.encode())
        connection._local_username, connection._local_password = ufrag, password
        connection.remote_username = remote_ice.usernameFragment
        connection.remote_password = remote_ice.password
        for pair in connection._check_list:
            if pair.task is not None:
                pair.task.cancel()
        connection._check_list = []
        connection._remote_candidates = []
        connection._remote_candidates_end = False
        connection._nominating.clear()
        self._gatherer._remote_candidates_end = False
        logger.info("%s restarts ICE", self.name)
        for candidate in remote_candidates:
            await self._ice.addRemoteCandidate(candidate)
        if candidates_complete:
            await self._ice.addRemoteCandidate(None)

    async def close(self) -> None:
        """Stop DTLS and ICE; idempotent."""
        if self.closed:
            return
        self.closed = True
        if self._start_task is not None and not self._start_task.done():
            self._start_task.cancel()
            try:
                await self._start_task
            except asyncio.CancelledError:
                pass
        await self._dtls.stop()
        await self._ice.stop()

    # --- media -------------------------------------------------------------------

    async def _handle_rtp_data(self, data: bytes, arrival_time_ms: int) -> None:
        if self._on_rtp is not None:
            self._deliver(self._on_rtp, data)

    async def _handle_rtcp_data(self, data: bytes) -> None:
        if self._on_rtcp is not None:
            self._deliver(self._on_rtcp, data)

    def _deliver(self, handler: RtpHandler, data: bytes) -> None:
        # aiortc ends the session's receive loop on any exception: a bug in handling
        # one packet must cost that packet, not the publisher and all its viewers.
        try:
            handler(data)
        except Exception:
            self.failed_packets += 1
            if self.failed_packets <= MAX_FAILURES_LOGGED:
                logger.exception("%s dropped a packet it failed to handle", self.name)

    @property
    def remote_address(self) -> tuple[str, int] | None:
        pair = self._connection._nominated.get(1)
        return None if pair is None else pair.remote_addr

    @property
    def on_tcp(self) -> bool:
        pair = self._connection._nominated.get(1)
        return pair is not None and pair.local_candidate.transport.lower() == "tcp"

    def fan_out_target(
        self,
    ) -> tuple[MediaSocket, int, tuple[str, int], pylibsrtp.Session] | None:
        """Socket, SRTP session address, peer and session for the fan-out.

        None until connected, and always when this session has a socket of its own
        (port-range mode) or is on ICE-TCP: `send_rtp` then.
        """
        if self.closed:
            return None
        pair = self._connection._nominated.get(1)
        tx = self._dtls._tx_srtp
        if pair is None or tx is None or not isinstance(pair.protocol, SessionPort):
            return None
        return pair.protocol.media, srtp_session_address(tx), pair.remote_addr, tx

    def send_rtp(self, data: bytes) -> None:
        """Protect one serialized RTP packet and send it; dropped if not connected."""
        pair = self._connection._nominated.get(1)
        tx = self._dtls._tx_srtp
        if pair is None or tx is None or self.closed:
            return
        try:
            protected = tx.protect(data)
        except (pylibsrtp.Error, ValueError) as exc:
            self.failed_packets += 1
            if self.failed_packets <= MAX_FAILURES_LOGGED:
                logger.warning("%s cannot protect a packet: %s", self.name, exc)
            return
        pair.protocol.transport.sendto(protected, pair.remote_addr)

    def send_rtcp(self, data: bytes) -> None:
        """Protect one serialized (compound) RTCP packet and send it."""
        pair = self._connection._nominated.get(1)
        tx = self._dtls._tx_srtp
        if pair is None or tx is None or self.closed:
            return
        pair.protocol.transport.sendto(tx.protect_rtcp(data), pair.remote_addr)


def _widen(session: pylibsrtp.Session) -> None:
    """Give pylibsrtp a work buffer large enough for any packet we forward."""
    session._cdata = ffi.new("char[]", SRTP_BUFFER_BYTES)
    session._buffer = ffi.buffer(session._cdata)
