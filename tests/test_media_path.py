"""Media-path security and cleanup: a forged fingerprint gets nothing, vanished viewers go."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import sys
from pathlib import Path

import aiohttp
import aioice
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from broadcast.media.udp_mux import SessionPort
from broadcast.web_keys import MEDIA, REGISTRY
from tests.peers import Viewer, publish, recvonly_offer, wait_for, watch
from tests.test_server import free_port


async def test_a_tampered_fingerprint_fails_the_session_and_no_media_flows(
    server, http
):
    publisher = await publish(http, str(server.make_url("/whip/fp")))
    await publisher.wait_connected()
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("video", direction="recvonly")
    received: list[bytes] = []
    await pc.setLocalDescription(await pc.createOffer())
    # Someone in the middle swaps the fingerprint: DTLS must not accept this peer.
    offer = re.sub(
        r"(a=fingerprint:sha-256 )(\S+)",
        lambda m: m.group(1) + ":".join(["AB"] * 32),
        pc.localDescription.sdp,
    )
    async with http.post(
        server.make_url("/whep/fp"),
        data=offer,
        headers={"Content-Type": "application/sdp"},
    ) as response:
        assert response.status == 201
        answer = await response.text()
    await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
    transport = pc.getTransceivers()[0].receiver.transport
    handle = transport._handle_rtp_data

    async def record(data: bytes, arrival_time_ms: int) -> None:
        received.append(data)
        await handle(data, arrival_time_ms)

    transport._handle_rtp_data = record
    registry = server.app[REGISTRY]
    stream = registry.get("fp")
    await wait_for(lambda: not stream.viewers, timeout=5, message="forged viewer kept")
    await asyncio.sleep(0.5)
    assert received == []
    await asyncio.gather(pc.close(), publisher.close())


def _vanish(peer) -> None:
    """Make a peer go silent without a goodbye (a laptop lid, a dead phone)."""
    for transceiver in peer.pc.getTransceivers():
        connection = transceiver.receiver.transport.transport._connection
        for protocol in connection._protocols:
            protocol.transport.close()


async def test_a_viewer_that_vanishes_is_reaped_and_everything_it_held_freed(
    server, http, monkeypatch
):
    # RFC 7675 consent checks every 5 s, 6 misses: ~30 s. Faster here, same logic.
    monkeypatch.setattr("aioice.ice.CONSENT_INTERVAL", 0.2)
    publisher = await publish(http, str(server.make_url("/whip/gone")))
    await publisher.wait_connected()
    registry = server.app[REGISTRY]
    stream = registry.get("gone")
    tasks_before = len(asyncio.all_tasks())
    for _ in range(3):
        viewer = await watch(http, str(server.make_url("/whep/gone")), ("video",))
        await viewer.wait_connected()
        await wait_for(lambda v=viewer: v.frames.get("video"), timeout=10)
        _vanish(viewer)
        await wait_for(lambda: not stream.viewers, timeout=15, message="viewer kept")
        await viewer.close()
    assert [s.kind for s in registry.sessions.values()] == ["whip"]
    assert all(not t.viewers for t in stream.tracks.values())
    await wait_for(lambda: len(asyncio.all_tasks()) <= tasks_before + 2, timeout=5)
    await publisher.close()


def _client_connection(peer) -> aioice.Connection:
    return peer.pc.getTransceivers()[0].receiver.transport.transport._connection


def kernel_drops(port: int) -> int:
    """Datagrams the kernel dropped for our UDP socket on `port` (/proc/net/udp)."""
    for line in Path("/proc/net/udp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == port:
            return int(fields[-1])
    raise LookupError(f"no UDP socket on port {port}")


async def test_injected_handshakes_during_50_joins_reach_no_session(
    server, http, monkeypatch, request
):
    """RFC 8445 §12: once a pair is chosen only its remote may send media, and a
    stranger never reaches DTLS: 1,000 ClientHellos and 1,000 junk RTP packets from a
    third socket during 50 WHEP handshakes go nowhere, and all 50 viewers connect."""
    seen_by_sessions: set[tuple[str, int]] = set()
    deliver = SessionPort.datagram_received

    def record(port, data, addr):
        seen_by_sessions.add((addr[0], addr[1]))
        deliver(port, data, addr)

    monkeypatch.setattr(SessionPort, "datagram_received", record)
    publisher = await publish(http, str(server.make_url("/whip/inj")), video=None)
    await publisher.wait_connected()
    (media,) = server.app[MEDIA].media_sockets
    gone_before = media.unrouted + kernel_drops(media.address[1])
    attacker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    attacker.bind(("127.0.0.1", 0))
    attacker.setblocking(False)
    request.addfinalizer(attacker.close)
    client_hello = (
        bytes.fromhex("16fefd0000000000000000")
        + bytes.fromhex("00c8010000bc000000000000bc")
        + os.urandom(188)
    )

    async def inject() -> int:
        sent = 0
        for n in range(1000):
            for data in (client_hello, b"\x80\x6f" + os.urandom(160)):
                with contextlib.suppress(BlockingIOError):
                    attacker.sendto(data, media.address)
                    sent += 1
            if n % 20 == 0:
                await asyncio.sleep(0.01)  # spread over the handshakes
        return sent

    async def join() -> Viewer:
        viewer = await watch(http, str(server.make_url("/whep/inj")), ("audio",))
        await viewer.wait_connected(timeout=30)
        return viewer

    injected, *viewers = await asyncio.gather(inject(), *(join() for _ in range(50)))
    await wait_for(
        lambda: all(v.received.packets for v in viewers),
        timeout=20,
        message="a viewer got no media",
    )
    assert len(seen_by_sessions) >= 51  # every peer's datagrams were seen
    assert attacker.getsockname() not in seen_by_sessions
    # Counted as dropped, or dropped by the kernel from a full buffer. Under load a few
    # percent vanish from both counts (seen in CI: 1,766 of 2,000); none reached a session.
    gone = media.unrouted + kernel_drops(media.address[1]) - gone_before
    assert gone >= 0.5 * injected > 750
    await asyncio.gather(publisher.close(), *(v.close() for v in viewers))


async def test_replayed_and_tampered_srtp_from_the_peer_is_dropped(server, http):
    """The publisher's own address replays its packets and sends them with a broken
    authentication tag: libsrtp refuses both, so nothing reaches the stream twice."""
    publisher = await publish(http, str(server.make_url("/whip/replay")), video=None)
    await publisher.wait_connected()
    track = server.app[REGISTRY].get("replay").tracks["audio"]
    forwarded: list[int] = []
    forward = track.forward

    def record(packet):
        forwarded.append(packet.sequence_number)
        forward(packet)

    track.forward = record
    pair = _client_connection(publisher)._nominated[1]
    captured: list[bytes] = []
    sendto = pair.protocol.transport.sendto

    def capture(data, addr):
        if 127 < data[0] < 192 and not 192 <= data[1] <= 223:  # RTP, not RTCP
            captured.append(bytes(data))
        sendto(data, addr)

    pair.protocol.transport.sendto = capture
    await wait_for(lambda: len(captured) >= 20, message="publisher sent nothing")
    for data in captured[:20]:
        sendto(data, pair.remote_addr)  # replayed as is
        tampered = data[:-1] + bytes([data[-1] ^ 0x01])
        sendto(tampered, pair.remote_addr)  # authentication tag broken
        sendto(data[:12] + bytes(len(data) - 12), pair.remote_addr)  # forged payload
    await asyncio.sleep(0.5)
    assert forwarded, "the stream got nothing at all"
    assert len(forwarded) == len(set(forwarded)), "a packet reached the stream twice"
    assert server.app[REGISTRY].get("replay").state == "live"
    await publisher.close()


@pytest.mark.parametrize(
    "remove",
    [
        r"a=fingerprint:[^\r\n]*\r\n",
        r"a=ice-ufrag:[^\r\n]*\r\n",
        r"a=ice-pwd:[^\r\n]*\r\n",
    ],
)
async def test_an_offer_without_fingerprint_or_ice_credentials_is_a_400(
    server, http, remove
):
    offer = re.sub(remove, "", await recvonly_offer(("video", "audio")))
    async with http.post(
        server.make_url("/whip/nokeys"),
        data=offer,
        headers={"Content-Type": "application/sdp"},
    ) as response:
        assert response.status == 400, await response.text()
        assert (await response.json())["error"]
    assert not server.app[REGISTRY].sessions


# The server in its own process, so that its memory is its own; RFC 7675 consent checks
# every 0.2 s instead of 5 s so that vanished viewers are reaped in ~1.2 s, not ~30 s,
# and the heap trimmed every second instead of every 10 s (broadcast/memory.py).
FAST_CONSENT_SERVER = (
    "import sys, aioice.ice, broadcast.memory; aioice.ice.CONSENT_INTERVAL = 0.2; "
    "broadcast.memory.TRIM_INTERVAL_S = 1; "
    "from broadcast.cli import main; main(sys.argv[1:])"
)
WARM_UP_CYCLES, CYCLES, AT_ONCE = 50, 100, 10


async def _server_state(http, base: str) -> dict[str, float]:
    async with http.get(f"{base}/metrics") as response:
        text = await response.text()
    wanted = (
        "process_resident_memory_bytes",
        "process_open_fds",
        "broadcast_asyncio_tasks",
        "broadcast_viewers",
    )
    return {
        name: float(value)
        for name, value in re.findall(r"^(\w+) (\S+)$", text, re.MULTILINE)
        if name in wanted
    }


async def test_100_viewers_that_vanish_leave_no_memory_tasks_or_sockets_behind(
    http, tmp_path
):
    port = free_port()
    config = tmp_path / "flashphoner.xml"  # every viewer comes from 127.0.0.1
    config.write_text(
        "<flashphoner><limits><sessions_per_client_per_minute>0"
        "</sessions_per_client_per_minute></limits></flashphoner>"
    )
    server = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        FAST_CONSENT_SERVER,
        "serve",
        "--config",
        str(config),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
        "--workers",  # one process: its memory is what is measured
        "1",
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(f"{base}/healthz") as response:
                    if response.status == 200:
                        break
            await asyncio.sleep(0.1)
        # Audio: a video track's GOP cache grows until the next keyframe (aiortc's
        # encoder sends one every 3,000 frames), which is not what is measured here.
        publisher = await publish(http, f"{base}/whip/cycles", video=None)
        await publisher.wait_connected()

        async def join_and_vanish() -> None:
            viewer = await watch(http, f"{base}/whep/cycles", ("audio",))
            await viewer.wait_connected()
            await wait_for(lambda: viewer.received.packets, timeout=10)
            _vanish(viewer)
            await viewer.close()

        async def cycles(count: int) -> dict[str, float]:
            for _ in range(count // AT_ONCE):
                await asyncio.gather(*(join_and_vanish() for _ in range(AT_ONCE)))
            for _ in range(100):  # every vanished viewer reaped
                state = await _server_state(http, base)
                if state["broadcast_viewers"] == 0:
                    return state
                await asyncio.sleep(0.1)
            raise AssertionError(f"viewers left: {state}")

        await cycles(WARM_UP_CYCLES)  # caches and pools fill once
        await asyncio.sleep(2)  # the heap is trimmed after sessions end
        start = await _server_state(http, base)
        end = await cycles(CYCLES)
        for _ in range(50):  # give the trim its second
            if (
                end["process_resident_memory_bytes"]
                <= 1.05 * (start["process_resident_memory_bytes"])
            ):
                break
            await asyncio.sleep(0.1)
            end = await _server_state(http, base)
        else:
            raise AssertionError(f"RSS grew over 5 %: {start} -> {end}")
        assert end["broadcast_asyncio_tasks"] <= start["broadcast_asyncio_tasks"]
        assert end["process_open_fds"] <= start["process_open_fds"]
        await publisher.close()
    finally:
        server.terminate()
        await server.wait()
