"""Stream lifecycle: one publisher per id, reconnect within grace, end after it."""

from __future__ import annotations

import asyncio
import socket

import pytest
from aiohttp.test_utils import TestServer
from aiortc import RTCConfiguration, RTCPeerConnection

from broadcast.app import create_app
from broadcast.config import Config
from broadcast.web_keys import MEDIA, REGISTRY, WORKERS
from tests.peers import publish, wait_for, watch


def video_packets(viewer, stream):
    return viewer.received.packets.get(stream.tracks["video"].ssrc, [])


async def live(server, http, stream_id: str):
    """A connected publisher of `stream_id` and one connected viewer of it."""
    publisher = await publish(http, str(server.make_url(f"/whip/{stream_id}")))
    await publisher.wait_connected()
    viewer = await watch(http, str(server.make_url(f"/whep/{stream_id}")))
    await viewer.wait_connected()
    return publisher, viewer


async def dropped(server, http, stream_id: str):
    """A publisher of `stream_id` that connected, then dropped: the stream waits."""
    url = str(server.make_url(f"/whip/{stream_id}"))
    first = await publish(http, url)
    await first.wait_connected()
    stream = server.app[REGISTRY].get(stream_id)
    await first.close()
    await wait_for(lambda: stream.state == "reconnecting", message=stream.state)
    return url, first, stream


async def test_second_publisher_gets_409(server, http):
    first = await publish(http, str(server.make_url("/whip/busy")))
    try:
        await publish(http, str(server.make_url("/whip/busy")))
    except AssertionError as error:
        assert "409" in str(error) and "stream_busy" in str(error)
    else:
        raise AssertionError("a second publisher was accepted")
    await first.close()


@pytest.mark.parametrize("workers", [1, 2])
async def test_republish_within_grace_keeps_viewers_with_continuous_numbering(
    make_server, http, workers
):
    """With workers = 2 the viewer watched is the worker's (the first is the main
    process's): its copy of the track is fed the new publisher's packets."""
    server = await make_server(reconnect_grace_s=10, workers=workers)
    url = str(server.make_url("/whip/re"))
    first = await publish(http, url)
    await first.wait_connected()
    viewers = [
        await watch(http, str(server.make_url("/whep/re"))) for _ in range(workers)
    ]
    viewer = viewers[-1]
    await asyncio.gather(*(v.wait_connected() for v in viewers))
    registry = server.app[REGISTRY]
    if workers == 2:
        assert viewer.location.split("/")[-1] in server.app[WORKERS].workers[0].viewers
    stream = registry.get("re")
    await wait_for(lambda: len(viewer.frames.get("video", [])) >= 10)
    await first.close()
    await wait_for(lambda: stream.state == "reconnecting", message=stream.state)
    before = len(video_packets(viewer, stream))
    last = video_packets(viewer, stream)[-1]

    second = await publish(http, url)
    await second.wait_connected()
    frames_before = len(viewer.frames["video"])
    await wait_for(
        lambda: len(viewer.frames["video"]) >= frames_before + 10,
        message="viewer saw no frames from the new publisher",
    )
    assert stream.state == "live"
    after = video_packets(viewer, stream)[before:]
    assert after[0].sequence_number == (last.sequence_number + 1) & 0xFFFF
    assert 0 < (after[0].timestamp - last.timestamp) & 0xFFFFFFFF < 90000 * 5
    assert viewer.pc.connectionState == "connected"
    await asyncio.gather(*(v.close() for v in viewers), second.close())


async def test_stream_ends_after_grace_and_its_viewers_are_closed(make_server, http):
    server = await make_server(reconnect_grace_s=0.5)
    publisher, viewer = await live(server, http, "g")
    registry = server.app[REGISTRY]
    await publisher.close()
    await wait_for(lambda: registry.get("g") is None, message="stream did not end")
    assert not registry.sessions
    async with http.post(
        server.make_url("/whep/g"),
        data="v=0\r\n",
        headers={"Content-Type": "application/sdp"},
    ) as response:
        assert response.status in (400, 404)
    await viewer.close()


async def test_delete_ends_the_broadcast_at_once(server, http):
    publisher, viewer = await live(server, http, "del")
    async with http.delete(server.make_url(publisher.location)) as response:
        assert response.status == 200
    registry = server.app[REGISTRY]
    assert registry.get("del") is None
    assert not registry.sessions
    async with http.delete(server.make_url(publisher.location)) as response:
        assert response.status == 404
    await asyncio.gather(viewer.close(), publisher.close())


async def test_delete_after_the_connection_closed_ends_the_broadcast_at_once(
    make_server, http
):
    """The npm library `whip-whep` closes its PeerConnection, then sends DELETE."""
    server = await make_server(reconnect_grace_s=30)
    publisher, viewer = await live(server, http, "stop")
    registry = server.app[REGISTRY]
    stream = registry.get("stop")
    await publisher.close()
    await wait_for(lambda: stream.state == "reconnecting", message=stream.state)
    async with http.delete(server.make_url(publisher.location)) as response:
        assert response.status == 200, await response.text()
    assert stream.state == "ended" and registry.get("stop") is None
    # The viewer's session ended with the stream; its client's DELETE is still fine.
    async with http.delete(server.make_url(viewer.location)) as response:
        assert response.status == 200, await response.text()
    async with http.delete(server.make_url(viewer.location)) as response:
        assert response.status == 404
    await viewer.close()


async def test_late_delete_of_a_replaced_publisher_leaves_the_broadcast_alone(
    make_server, http
):
    server = await make_server(reconnect_grace_s=30)
    url, first, stream = await dropped(server, http, "again")
    second = await publish(http, url)
    await second.wait_connected()
    # A session URL names its own kind and stream only.
    wrong = first.location.replace("/whip/", "/whep/")
    async with http.delete(server.make_url(wrong)) as response:
        assert response.status == 404
    async with http.delete(server.make_url(first.location)) as response:
        assert response.status == 200
    assert stream.state == "live" and stream.source is not None
    await second.close()


async def test_delete_after_a_viewer_closed_its_connection_is_200(server, http):
    publisher, viewer = await live(server, http, "vc")
    registry = server.app[REGISTRY]
    session_id = viewer.location.split("/")[-1]
    await viewer.close()
    await wait_for(lambda: session_id not in registry.sessions, message="not closed")
    async with http.delete(server.make_url(viewer.location)) as response:
        assert response.status == 200, await response.text()
    assert registry.get("vc").state == "live"
    await publisher.close()


async def test_viewer_may_join_while_the_publisher_reconnects(make_server, http):
    server = await make_server(reconnect_grace_s=10)
    url, _, _ = await dropped(server, http, "late")
    viewer = await watch(http, str(server.make_url("/whep/late")))
    await viewer.wait_connected()
    second = await publish(http, url)
    await second.wait_connected()
    await wait_for(lambda: viewer.frames.get("video"), message="no frame after return")
    await asyncio.gather(viewer.close(), second.close())


async def test_silent_publisher_is_dropped_and_the_stream_waits(make_server, http):
    server = await make_server(publisher_timeout_s=1.5, reconnect_grace_s=10)
    publisher = await publish(http, str(server.make_url("/whip/mute")))
    await publisher.wait_connected()
    stream = server.app[REGISTRY].get("mute")
    await wait_for(lambda: stream.state == "live")
    for transceiver in publisher.pc.getTransceivers():

        async def swallow(data: bytes) -> None:
            return None

        transceiver.sender.transport._send_rtp = swallow
    await wait_for(
        lambda: stream.state == "reconnecting", timeout=5, message=stream.state
    )
    assert stream.source is None
    await publisher.close()


async def test_a_session_that_never_connects_is_freed(server, http, monkeypatch):
    monkeypatch.setattr("broadcast.media.transport.CONNECT_TIMEOUT_S", 1.0)
    client = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    client.addTransceiver("video", direction="sendonly")
    await client.setLocalDescription(await client.createOffer())
    # No end-of-candidates, and a peer that is gone: ICE would wait forever.
    offer = client.localDescription.sdp.replace("a=end-of-candidates\r\n", "")
    await client.close()
    url = server.make_url("/whip/ghost")
    headers = {"Content-Type": "application/sdp"}
    async with http.post(url, data=offer, headers=headers) as response:
        assert response.status == 201
    registry = server.app[REGISTRY]
    await wait_for(lambda: not registry.sessions, timeout=5, message="session kept")
    assert registry.get("ghost") is None
    publisher = await publish(http, str(url))  # the id is free again
    await publisher.close()


async def test_shutdown_ends_streams_without_a_reconnecting_detour(server, http):
    registry = server.app[REGISTRY]
    publisher = await publish(http, str(server.make_url("/whip/bye")))
    await publisher.wait_connected()
    states: list[str] = []
    registry.events.listen("bye", lambda e: states.append(e.get("state", "")))
    await registry.close()
    assert "ended" in states and "reconnecting" not in states
    await publisher.close()


async def test_stopping_the_app_ends_sessions_and_frees_media_ports_and_workers(http):
    """One owner stops what carries media, in order: streams and sessions, then the
    media host (its UDP port and ICE-TCP listener free again), then the workers."""
    config = Config(host="127.0.0.1", media_port=0, workers=2)
    server = TestServer(create_app(config), host="127.0.0.1")
    await server.start_server()
    registry = server.app[REGISTRY]
    (worker,) = server.app[WORKERS].workers
    port = server.app[MEDIA].media_sockets[0].address[1]
    publisher = await publish(http, str(server.make_url("/whip/gone")))
    await publisher.wait_connected()
    sessions = list(registry.sessions.values())
    await server.close()
    assert sessions and all(s.closed for s in sessions)
    assert worker.process is not None and worker.process.returncode is not None
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_INET, kind) as freed:
            freed.bind(("127.0.0.1", port))  # OSError while still held
    await publisher.close()
