"""Media-path security and cleanup: a forged fingerprint gets nothing, vanished viewers go."""

from __future__ import annotations

import asyncio
import re

from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from broadcast.web_keys import REGISTRY
from tests.peers import publish, wait_for, watch


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


def _vanish(peer) -> None:  # type: ignore[no-untyped-def]
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
