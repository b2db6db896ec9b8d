"""The edge's pull (ingest/origin_pull.py) between two servers in this process, on a
real Redis: what the process-level cluster tests do not look at closely. The relay is
admitted only with the cluster's secret, is not one of the origin's viewers, carries
audio as well as video and H.264 of every profile, merges its viewers' keyframe requests
into one upstream PLI, lets go of the origin `linger_seconds` after its last viewer
leaves, ends the stream once it is published nowhere for the grace period, and gives
way to the stream's publisher come back on the edge's own node."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from aiortc.rtp import RTCP_PSFB_PLI, RtcpPsfbPacket
from aiortc.sdp import H264Profile, parse_h264_profile_level_id

from broadcast.app import create_app
from broadcast.config import Config
from broadcast.ingest.origin_pull import RELAY_HEADER, SECRET_HEADER
from broadcast.signaling.sdp import PULL_CODECS
from broadcast.stream import Stream
from broadcast.web_keys import CLUSTER, REGISTRY
from tests.cluster_redis import start_redis
from tests.peers import Peer, publish, recvonly_offer, wait_for, watch
from tests.test_server import free_port

SECRET = "test-cluster-secret-7"
RtcpHandler = Callable[[Any], Coroutine[Any, Any, None]]  # aiortc: a union of packets
STREAM = "live"


@dataclass
class Pair:
    origin: TestServer
    edge: TestServer

    def stream(self, server: TestServer) -> Stream | None:
        stream: Stream | None = server.app[REGISTRY].get(STREAM)
        return stream


async def start_node(
    redis_url: str, name: str, role: str, **config: object
) -> TestServer:
    """A node of the cluster: its URL must be known before its app is built."""
    port = free_port()
    app = create_app(
        Config(
            host="127.0.0.1",
            media_port=0,
            workers=1,
            cluster_redis=redis_url,
            node_url=f"http://127.0.0.1:{port}",
            node_id=name,
            cluster_role=role,
            cluster_secret=SECRET,
            **config,  # type: ignore[arg-type]
        )
    )
    server = TestServer(app, host="127.0.0.1", port=port)
    await server.start_server()
    return server


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[Pair]:
    """An origin and an edge (its pull lingers 1 s), on a Redis of their own."""
    redis = await start_redis(tmp_path)
    servers: list[TestServer] = []
    try:
        servers.append(await start_node(redis.url, "origin", "origin"))
        servers.append(await start_node(redis.url, "edge", "edge", relay_linger_s=1.0))
        yield Pair(*servers)
    finally:
        for server in servers:
            await server.close()
        await redis.stop()


async def published(
    pair: Pair, http: aiohttp.ClientSession, h264_profile: str | None = None
) -> Peer:
    """A publisher on the origin (H.264 of `h264_profile` if set, else VP8), its
    stream's owner known to the edge."""
    url = str(pair.origin.make_url(f"/whip/{STREAM}"))
    if h264_profile is None:
        publisher = await publish(http, url)
    else:
        publisher = await publish(http, url, "video/H264", h264_profile=h264_profile)
    await publisher.wait_connected()
    edge = pair.edge.app[CLUSTER]
    for _ in range(100):
        if await edge.owner(STREAM) is not None:
            return publisher
        await asyncio.sleep(0.1)
    raise AssertionError("the edge never learnt who owns the stream")


def count_plis(peer: Peer) -> list[RtcpPsfbPacket]:
    """The PLIs the publisher's video sender receives, as they come."""
    plis: list[RtcpPsfbPacket] = []
    for transceiver in peer.pc.getTransceivers():
        if transceiver.kind == "video":
            sender = transceiver.sender
            sender._handle_rtcp_packet = _tap(sender._handle_rtcp_packet, plis)  # type: ignore[assignment]
    return plis


def _tap(handle: RtcpHandler, plis: list[RtcpPsfbPacket]) -> RtcpHandler:
    async def record(packet: Any) -> None:
        if isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_PLI:
            plis.append(packet)
        await handle(packet)

    return record


async def test_a_relay_needs_the_cluster_secret(
    pair: Pair, http: aiohttp.ClientSession
):
    publisher = await published(pair, http)
    url = str(pair.origin.make_url(f"/whep/{STREAM}"))
    answers = []
    for secret in ("wrong-secret", None, SECRET):
        headers = {"Content-Type": "application/sdp", RELAY_HEADER: "edge"}
        if secret is not None:
            headers[SECRET_HEADER] = secret
        async with http.post(url, data=await recvonly_offer(), headers=headers) as r:
            body = await r.json() if r.status == 403 else {}
            answers.append((r.status, body.get("error")))
            if r.status == 201:
                async with http.delete(
                    str(pair.origin.make_url(r.headers["Location"]))
                ) as gone:
                    assert gone.status in (200, 204)
    assert answers == [
        (403, "bad_cluster_secret"),
        (403, "bad_cluster_secret"),
        (201, None),
    ]
    await publisher.close()


async def test_the_edge_carries_video_and_audio_and_is_no_viewer_of_the_origin(
    pair: Pair, http: aiohttp.ClientSession
):
    publisher = await published(pair, http)
    viewer = await watch(http, str(pair.edge.make_url(f"/whep/{STREAM}")))
    await viewer.wait_connected()
    await wait_for(
        lambda: (
            len(viewer.frames.get("video", [])) > 10
            and len(viewer.frames.get("audio", [])) > 10
        ),
        message=f"frames via the edge: { {k: len(v) for k, v in viewer.frames.items()} }",
    )
    origin_stream, edge_stream = pair.stream(pair.origin), pair.stream(pair.edge)
    assert origin_stream is not None and edge_stream is not None
    assert edge_stream.source is not None and edge_stream.source.kind == "relay"
    assert (len(origin_stream.viewers), len(origin_stream.relays)) == (0, 1)
    assert len(edge_stream.viewers) == 1
    # The origin's heartbeat carries no viewer of its own: the edge's one is the edge's.
    await wait_for(
        lambda: pair.origin.app[CLUSTER].viewers_elsewhere(STREAM) == {"edge": 1}
    )
    async with http.get(str(pair.origin.make_url("/metrics"))) as response:
        metrics = await response.text()
    assert "broadcast_viewers 0.0" in metrics.splitlines()
    await asyncio.gather(viewer.close(), publisher.close())


async def test_joins_on_the_edge_reach_the_publisher_as_one_pli(
    pair: Pair, http: aiohttp.ClientSession
):
    publisher = await published(pair, http)
    plis = count_plis(publisher)
    url = str(pair.edge.make_url(f"/whep/{STREAM}"))
    first = await watch(http, url, ("video",))
    await first.wait_connected()
    await wait_for(lambda: len(first.frames.get("video", [])) > 10)
    await asyncio.sleep(1.5)  # past the merge window of the first join's PLI
    edge_stream = pair.stream(pair.edge)
    assert edge_stream is not None
    keyframes = edge_stream.tracks["video"].keyframes
    before, asked_before = len(plis), keyframes.sent
    viewers = await asyncio.gather(*(watch(http, url, ("video",)) for _ in range(6)))
    await asyncio.gather(*(v.wait_connected() for v in viewers))
    await wait_for(lambda: all(v.frames.get("video") for v in viewers))
    # Six joins within a fraction of a second: one PLI upstream, one more a second on,
    # merged by the edge itself (the origin's throttle would hide it not doing so).
    assert 1 <= keyframes.sent - asked_before <= 2, "PLIs from the edge"
    assert 1 <= len(plis) - before <= 2, f"PLIs at the publisher: {len(plis) - before}"
    await asyncio.gather(*(v.close() for v in [first, *viewers]), publisher.close())


async def test_the_pull_lingers_then_lets_go_of_the_origin(
    pair: Pair, http: aiohttp.ClientSession
):
    publisher = await published(pair, http)
    viewer = await watch(http, str(pair.edge.make_url(f"/whep/{STREAM}")), ("video",))
    await viewer.wait_connected()
    await wait_for(lambda: bool(viewer.frames.get("video")))
    origin_stream = pair.stream(pair.origin)
    assert origin_stream is not None and len(origin_stream.relays) == 1
    async with http.delete(str(pair.edge.make_url(viewer.location))) as response:
        assert response.status in (200, 204)
    await asyncio.sleep(0.5)  # within the linger: the pull stays
    assert pair.stream(pair.edge) is not None and len(origin_stream.relays) == 1
    # After it: the edge's stream ends and its upstream session is gone from the origin.
    await wait_for(lambda: pair.stream(pair.edge) is None, timeout=5)
    await wait_for(lambda: not origin_stream.relays, timeout=5)
    await asyncio.gather(viewer.close(), publisher.close())


def test_the_pull_offers_every_h264_profile():
    """An edge takes what the origin's publisher sends: the origin answers the pull
    only with its stream's own profile (browsers and OBS send High, 64001f/640028)."""
    offered = {
        parse_h264_profile_level_id(parameters["profile-level-id"])[0]
        for name, _, _, _, parameters in PULL_CODECS["video"]
        if name == "H264"
    }
    assert offered == set(H264Profile)


@pytest.mark.parametrize("profile", ["640028", "64001f"])
async def test_the_edge_relays_a_high_profile_publisher(
    pair: Pair, http: aiohttp.ClientSession, profile: str
):
    publisher = await published(pair, http, h264_profile=profile)
    viewer = await watch(
        http,
        str(pair.edge.make_url(f"/whep/{STREAM}")),
        ("video",),
        h264_profile="64001f",  # a viewer that takes High
    )
    await viewer.wait_connected()
    await wait_for(
        lambda: len(viewer.frames.get("video", [])) > 10, message="no High via the edge"
    )
    edge_stream = pair.stream(pair.edge)
    assert edge_stream is not None
    codec = edge_stream.tracks["video"].codec
    assert codec.parameters["profile-level-id"] == profile, codec
    await asyncio.gather(viewer.close(), publisher.close())


async def test_a_stream_ended_on_its_origin_ends_on_the_edge_after_the_grace(
    tmp_path: Path, http: aiohttp.ClientSession
):
    """Its viewers keep the edge's pull from lingering out: without this the stream
    stayed `reconnecting` there for good after the publisher hung up."""
    redis = await start_redis(tmp_path)
    origin = await start_node(redis.url, "origin", "origin")
    edge = await start_node(redis.url, "edge", "edge", reconnect_grace_s=2.0)
    try:
        pair = Pair(origin, edge)
        publisher = await published(pair, http)
        viewer = await watch(http, str(edge.make_url(f"/whep/{STREAM}")), ("video",))
        await viewer.wait_connected()
        await wait_for(lambda: bool(viewer.frames.get("video")))
        async with http.delete(str(origin.make_url(publisher.location))) as response:
            assert response.status in (200, 204)  # the presenter hangs up
        await wait_for(lambda: pair.stream(origin) is None, timeout=5)
        await asyncio.sleep(1.5)  # within the grace: a publisher may yet come back
        stream = pair.stream(edge)
        assert stream is not None and stream.state == "reconnecting", stream
        await wait_for(lambda: pair.stream(edge) is None, timeout=10)
        assert edge.app[REGISTRY].viewer_count() == 0
        await asyncio.gather(viewer.close(), publisher.close())
    finally:
        await asyncio.gather(origin.close(), edge.close())
        await redis.stop()


async def test_a_both_node_relaying_a_stream_takes_its_returning_publisher(
    tmp_path: Path, http: aiohttp.ClientSession
):
    """Two `both` nodes: the stream published on the first, watched on the second
    (which pulls it); the first goes away and the publisher comes back on the
    second. It takes over as the stream's origin, its viewer stays; before, 409."""
    redis = await start_redis(tmp_path)
    first = await start_node(redis.url, "first", "both")
    second = await start_node(redis.url, "second", "both")
    try:
        pair = Pair(first, second)
        publisher = await published(pair, http)
        viewer = await watch(http, str(second.make_url(f"/whep/{STREAM}")), ("video",))
        await viewer.wait_connected()
        await wait_for(lambda: len(viewer.frames.get("video", [])) > 5)
        relayed = pair.stream(second)
        assert relayed is not None and relayed.source is not None
        assert relayed.source.kind == "relay"
        # While the first node has it, the stream is the first node's.
        async with http.post(
            second.make_url(f"/whip/{STREAM}"),
            data=await recvonly_offer(),
            headers={"Content-Type": "application/sdp"},
        ) as response:
            assert response.status == 409 and "'first'" in await response.text()
        assert relayed.source.kind == "relay"
        await first.close()  # its claim on the stream is released with it
        await publisher.close()
        returned = await publish(http, str(second.make_url(f"/whip/{STREAM}")))
        await returned.wait_connected()
        assert pair.stream(second) is relayed and relayed.source is not None
        assert relayed.source.kind == "whip"
        seen = len(viewer.frames["video"])
        await wait_for(
            lambda: len(viewer.frames["video"]) > seen + 10,
            message="the viewer got nothing from the returned publisher",
        )
        owner = await second.app[CLUSTER].owner(STREAM)
        assert owner is not None and owner.id == "second"
        await asyncio.gather(viewer.close(), returned.close())
    finally:
        await asyncio.gather(first.close(), second.close())
        await redis.stop()
