"""One UDP port for every session: demultiplexing, and batched sends that lose nothing."""

from __future__ import annotations

import asyncio
import importlib.util
import itertools
import os
import re
import socket
import struct

import pytest
from pylibsrtp import Policy, Session

from broadcast.media import udp_mux
from broadcast.media.udp_mux import (
    MediaSocket,
    send_batched,
    send_each,
    srtp_session_address,
)
from broadcast.web_keys import MEDIA, REGISTRY
from tests.peers import RtpLog, publish, wait_for, watch

VIEWERS = 50


def payloads(log: RtpLog) -> set[bytes]:
    return {p.payload for packets in log.packets.values() for p in packets}


def candidate_ports(sdp: str) -> set[int]:
    return {int(m) for m in re.findall(r"a=candidate:\S+ 1 udp \d+ \S+ (\d+)", sdp)}


async def test_fifty_viewers_on_one_port_each_get_their_own_stream(server, http):
    """Every viewer decrypts its packets: none went to another viewer's session."""
    publisher = await publish(
        http, str(server.make_url("/whip/mux")), video=None, audio="audio/opus"
    )
    await publisher.wait_connected()
    viewers = [
        await watch(http, str(server.make_url("/whep/mux")), kinds=("audio",))
        for _ in range(VIEWERS)
    ]
    (media,) = server.app[MEDIA].media_sockets
    assert media.sessions == VIEWERS + 1
    answers = [v.pc.remoteDescription.sdp for v in viewers]
    assert {port for sdp in answers for port in candidate_ports(sdp)} == {
        media.address[1]
    }
    await wait_for(
        lambda: all(len(payloads(v.received)) >= 20 for v in viewers),
        timeout=20,
        message="a viewer on the shared port got no audio",
    )
    sent = payloads(publisher.sent)
    for viewer in viewers:
        assert payloads(viewer.received) <= sent
    await asyncio.gather(publisher.close(), *(v.close() for v in viewers))
    await wait_for(lambda: media.sessions == 0, message="sessions left on the port")


async def test_a_stranger_on_the_shared_port_reaches_no_session(server, http):
    publisher = await publish(http, str(server.make_url("/whip/s")), video=None)
    await publisher.wait_connected()
    (media,) = server.app[MEDIA].media_sockets
    before = media.unrouted
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stranger:
        # A DTLS ClientHello-like record, SRTP-like junk, and STUN naming nobody.
        stun = bytes.fromhex("0001000c2112a442") + bytes(12)
        stun += bytes.fromhex("00060008") + b"nobody:x"
        for data in (b"\x16\xfe\xfd" + bytes(60), b"\x80\x60" + bytes(100), stun):
            stranger.sendto(data, media.address)
    await wait_for(lambda: media.unrouted - before == 3, message="not counted")
    assert publisher.pc.connectionState == "connected"
    assert server.app[REGISTRY].get("s").state == "live"
    await publisher.close()


def test_the_native_extension_is_built() -> None:
    """README's test set-up installs a C compiler: the fast path must be there."""
    assert importlib.util.find_spec("broadcast.media._fanout") is not None
    if udp_mux.NATIVE:  # not switched off with BROADCAST_NATIVE=0
        assert udp_mux.default_sender() is send_batched


def receivers(count: int) -> list[socket.socket]:
    sockets = []
    for _ in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(2)
        sockets.append(sock)
    return sockets


@pytest.mark.parametrize("sender", [send_each, send_batched])
async def test_batched_and_one_by_one_sends_deliver_the_same_datagrams(sender):
    peers = receivers(5)
    media = await MediaSocket.open("127.0.0.1", 0, sender=sender)
    try:
        expected: dict[int, list[bytes]] = {i: [] for i in range(len(peers))}
        # More datagrams than one sendmmsg batch, with addresses that cannot be sent
        # to in between: those are skipped, everything else arrives in order.
        for n in range(600):
            data = n.to_bytes(2, "big") * (1 + n % 700)
            peer = n % len(peers)
            media.send(data, peers[peer].getsockname())
            expected[peer].append(data)
            if n % 97 == 0:
                media.send(b"lost", ("127.0.0.1", 0))  # EINVAL: no port 0
        media.flush()
        assert media.send_dropped == 7
        for index, peer in enumerate(peers):
            got = [peer.recv(2048) for _ in expected[index]]
            assert got == expected[index]
    finally:
        media.close()
        for peer in peers:
            peer.close()


def srtp_pair(profile: int, key: bytes) -> tuple[Session, Session]:
    """A sending and a receiving SRTP session sharing `key`."""
    return (
        Session(
            Policy(key=key, ssrc_type=Policy.SSRC_ANY_OUTBOUND, srtp_profile=profile)
        ),
        Session(
            Policy(key=key, ssrc_type=Policy.SSRC_ANY_INBOUND, srtp_profile=profile)
        ),
    )


@pytest.mark.parametrize("native", [True, False], ids=["native", "python"])
async def test_fan_out_protects_like_libsrtp_and_decrypts_independently(
    native, monkeypatch
):
    """Each viewer's datagram equals pylibsrtp's own protect of the same packet (with
    the viewer's payload type) and an independent receiving session decrypts it, from
    the native fan-out and from its Python twin alike."""
    monkeypatch.setattr(udp_mux, "NATIVE", native)
    profiles = [
        (Policy.SRTP_PROFILE_AES128_CM_SHA1_80, 30, -1),
        (Policy.SRTP_PROFILE_AEAD_AES_128_GCM, 28, 111),
        (Policy.SRTP_PROFILE_AEAD_AES_256_GCM, 44, -1),
    ]
    peers = receivers(len(profiles))
    media = await MediaSocket.open("127.0.0.1", 0)
    try:
        targets, references, checks = [], [], []
        for (profile, key_length, payload_type), peer in zip(
            profiles, peers, strict=True
        ):
            key = os.urandom(key_length)
            native, receive = srtp_pair(profile, key)
            reference, _ = srtp_pair(profile, key)
            targets.append(
                (srtp_session_address(native), peer.getsockname(), payload_type, native)
            )
            references.append((reference, payload_type))
            checks.append(receive)
        for seq in range(65500, 65500 + 100):  # across a sequence number wrap
            header = struct.pack("!BBHII", 0x80, 0x80 | 96, seq & 0xFFFF, seq * 3000, 7)
            packet = header + os.urandom(1 + seq % 1200)
            media.fan_out(packet, targets)
            for peer, (reference, payload_type), receive in zip(
                peers, references, checks, strict=True
            ):
                expected = packet
                if payload_type >= 0:
                    expected = packet[:1] + bytes([0x80 | payload_type]) + packet[2:]
                datagram = peer.recv(4096)
                assert datagram == reference.protect(expected)
                assert receive.unprotect(datagram) == expected
        assert media.send_dropped == media.srtp_refused == 0
        media.fan_out(bytes(3000), targets)  # larger than any datagram we forward
        assert media.srtp_refused == len(targets)
    finally:
        media.close()
        for peer in peers:
            peer.close()


def _client_socket_transport(viewer):
    connection = viewer.pc.getTransceivers()[0].receiver.transport.transport._connection
    return connection._protocols[0].transport


def _sequence_gaps(log: RtpLog) -> int:
    (packets,) = log.packets.values()
    seqs = [p.sequence_number for p in packets]
    return sum((b - a) & 0xFFFF != 1 for a, b in itertools.pairwise(seqs))


async def test_a_viewer_that_stops_reading_does_not_stall_the_others(server, http):
    """UDP to a viewer whose socket is full is dropped for that viewer alone: the
    shared socket never blocks, and the other viewer gets every packet."""
    publisher = await publish(http, str(server.make_url("/whip/slow")))
    await publisher.wait_connected()
    fast, slow = [
        await watch(http, str(server.make_url("/whep/slow")), kinds=("video",))
        for _ in range(2)
    ]
    await wait_for(lambda: fast.received.packets and slow.received.packets)
    stalled = _client_socket_transport(slow)
    stalled.get_extra_info("socket").setsockopt(
        socket.SOL_SOCKET, socket.SO_RCVBUF, 4096
    )
    stalled.pause_reading()
    count = sum(len(p) for p in fast.received.packets.values())
    await wait_for(
        lambda: sum(len(p) for p in fast.received.packets.values()) > count + 200,
        timeout=20,
        message="the other viewer stalled",
    )
    stalled.resume_reading()
    await asyncio.sleep(0.5)
    assert _sequence_gaps(fast.received) == 0
    assert _sequence_gaps(slow.received) > 0  # its kernel buffer overflowed: its loss
    assert server.app[REGISTRY].get("slow").state == "live"
    await asyncio.gather(publisher.close(), fast.close(), slow.close())
