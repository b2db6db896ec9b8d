"""Every use the load generator makes of aiortc's and aioice's private attributes.

The load test's viewers use aiortc's ICE and DTLS objects bare, without the
RTCPeerConnection that would normally drive them (and start decoders): what that class
does through private attributes is done here, in one place to check on an aiortc
upgrade (written against aiortc 1.16, aioice 0.13). `media/transport.py` is the same for
the server.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pylibsrtp
from aioice import Candidate
from aiortc import RTCDtlsTransport, RTCIceGatherer, RTCIceTransport

MediaHandler = Callable[[bytes, float], None]


def local_candidates(gatherer: RTCIceGatherer) -> list[Candidate]:
    """The candidates gathered so far: for an offer written by hand, not by aiortc."""
    candidates: list[Candidate] = gatherer._connection.local_candidates
    return candidates


async def gather_on(gatherer: RTCIceGatherer, address: str) -> None:
    """Gather host candidates on `address` alone: aioice skips loopback addresses when
    it chooses them itself, and a load test runs on loopback."""
    connection = gatherer._connection
    connection._local_candidates += await connection.get_component_candidates(
        component=1, addresses=[address]
    )
    connection._local_candidates_start = connection._local_candidates_end = True


def take_media(gatherer: RTCIceGatherer, on_media: MediaHandler) -> None:
    """Hand RTP and RTCP to `on_media` (data, arrival time) straight from the sockets;
    STUN and DTLS still go to aioice and aiortc. Without this aiortc would decrypt every
    packet, and the viewer means to count most of them from their plaintext header."""
    for protocol in gatherer._connection._protocols:
        _divert_media(protocol, on_media)


def _divert_media(protocol: Any, on_media: MediaHandler) -> None:
    stun_or_dtls = protocol.datagram_received

    def datagram_received(data: bytes, addr: tuple[Any, ...]) -> None:
        if data and 127 < data[0] < 192:  # RTP or RTCP (RFC 7983)
            on_media(data, time.monotonic())
        else:
            stun_or_dtls(data, addr)

    protocol.datagram_received = datagram_received


def control_from_start(gatherer: RTCIceGatherer, ice: RTCIceTransport) -> None:
    """Make ICE controlling before the answer comes (RTCPeerConnection sets the role at
    start only): the server's checks may arrive first, and a controlled agent answers
    them with a role conflict that leaves both sides controlling (RFC 8445 §6.1.1)."""
    gatherer._connection.ice_controlling = True
    ice._role_set = True


def set_dtls_role(dtls: RTCDtlsTransport, role: str) -> None:
    """ "client" or "server": the answer's a=setup decides, as RTCPeerConnection does."""
    dtls._set_role(role)


def srtp_receiver(dtls: RTCDtlsTransport) -> pylibsrtp.Session | None:
    """The SRTP session that decrypts what the server sends; None before DTLS ends."""
    session: pylibsrtp.Session | None = dtls._rx_srtp
    return session


async def send_rtcp(dtls: RTCDtlsTransport, data: bytes) -> None:
    """Protect `data` as SRTCP and send it: there is no RTCRtpReceiver to do it."""
    await dtls._send_rtp(data)
