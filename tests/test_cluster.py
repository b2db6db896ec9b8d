"""A cluster on a real Redis: an origin and edges, each a `broadcast serve` process.

Viewers POST to the origin and are sent (307) to the edges, which pull the stream from
the origin once each; counts are summed over the cluster; a publish to a stream owned
elsewhere is refused with the owner named. The faults: an edge killed, a publisher
that drops and returns, Redis stopped or hung, the origin killed. On a cluster with
keys, private viewing and one viewer per stream per edge: credentials that survive a
307 to another origin, and edges full for a stream that never bounce a viewer between
them.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
import redis.asyncio as redis

from broadcast import tokens
from tests.cluster_nodes import ADMIN, Node, start_node
from tests.cluster_redis import RedisServer, start_redis
from tests.peers import Peer, Viewer, publish, recvonly_offer, wait_for, watch

pytestmark = pytest.mark.asyncio(loop_scope="module")

# Each edge of the shared cluster takes 5 viewers: 10 viewers spread over both.
FIVE_VIEWERS = "<limits><max_viewers_total>5</max_viewers_total></limits>"
# Short linger, quick publisher timeouts: the faults show within seconds.
QUICK = (
    "<cluster><linger_seconds>3</linger_seconds></cluster>"
    "<media><publisher_timeout_s>2</publisher_timeout_s></media>"
)
PUBLISH_KEY = "cluster-publish-key-0123456789"
TOKEN_SECRET = "cluster-token-secret-0123456789"
# Publishing needs the key, viewing a token; each edge takes one viewer per stream.
GUARDED = (
    f"<auth><publish_key>{PUBLISH_KEY}</publish_key>"
    f"<token_secret>{TOKEN_SECRET}</token_secret>"
    "<private_viewing>true</private_viewing></auth>"
    "<limits><max_viewers_per_stream>1</max_viewers_per_stream></limits>"
)
KEY = {"Authorization": f"Bearer {PUBLISH_KEY}"}


@dataclass
class Cluster:
    redis: RedisServer
    origin: Node
    edges: list[Node]
    http: aiohttp.ClientSession

    @property
    def nodes(self) -> list[Node]:
        return [self.origin, *self.edges]

    def node_of(self, url: str) -> Node:
        for node in self.nodes:
            if url.startswith(node.url + "/"):
                return node
        raise AssertionError(f"{url} is on no node")


@contextlib.asynccontextmanager
async def running_cluster(
    directory: Path, edges: int, edge_settings: str = "", settings: str = ""
) -> AsyncIterator[Cluster]:
    """Redis, an origin (role origin) and `edges` edges, all knowing each other;
    `settings` for every node, `edge_settings` for the edges only."""
    redis = await start_redis(directory)
    nodes: list[Node] = []
    try:
        nodes.append(
            await start_node(
                directory, redis.url, "origin", "origin", settings=QUICK + settings
            )
        )
        for index in range(1, edges + 1):
            nodes.append(
                await start_node(
                    directory,
                    redis.url,
                    f"edge{index}",
                    "edge",
                    settings=QUICK + settings + edge_settings,
                )
            )
        async with aiohttp.ClientSession() as http:
            for node in nodes:  # every node has seen every other's heartbeat
                await wait_until_known(http, node, [n.name for n in nodes])
            yield Cluster(redis, nodes[0], nodes[1:], http)
    finally:
        await asyncio.gather(*(node.stop() for node in nodes))
        await redis.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cluster(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Cluster]:
    async with running_cluster(
        tmp_path_factory.mktemp("cluster"), 2, FIVE_VIEWERS
    ) as running:
        yield running


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def guarded(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Cluster]:
    async with running_cluster(
        tmp_path_factory.mktemp("guarded"), 2, settings=GUARDED
    ) as running:
        yield running


async def known_nodes(http: aiohttp.ClientSession, node: Node) -> list[str]:
    """The nodes `node` knows alive (itself included), from /api/cluster."""
    async with http.get(f"{node.url}/api/cluster", headers=ADMIN) as response:
        assert response.status == 200, await response.text()
        return sorted(n["id"] for n in (await response.json())["nodes"])


async def wait_until_known(
    http: aiohttp.ClientSession, node: Node, names: list[str], timeout: float = 10
) -> float:
    """Wait until `node` knows exactly `names` alive; return how long it took."""
    started = time.monotonic()
    while sorted(names) != await known_nodes(http, node):
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{node.name} knows {await known_nodes(http, node)}")
        await asyncio.sleep(0.1)
    return time.monotonic() - started


async def stream_info(http: aiohttp.ClientSession, node: Node, stream: str) -> dict:
    async with http.get(f"{node.url}/api/streams/{stream}", headers=ADMIN) as response:
        return await response.json()


async def redirected_to(
    http: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None
) -> str:
    """Where a WHEP POST to `url` is sent (its 307 Location), without following it."""
    async with http.post(
        url,
        data=await recvonly_offer(),
        headers={"Content-Type": "application/sdp", **(headers or {})},
        allow_redirects=False,
    ) as response:
        assert response.status == 307, await response.text()
        return response.headers["Location"]


async def live_via_an_edge(cluster: Cluster, stream: str) -> tuple[Peer, Viewer]:
    """A publisher on the origin, and a viewer who came through it, playing."""
    publisher = await publish(cluster.http, f"{cluster.origin.url}/whip/{stream}")
    await publisher.wait_connected()
    viewer = await watch(
        cluster.http, f"{cluster.origin.url}/whep/{stream}", kinds=("video",)
    )
    await viewer.wait_connected()
    await pictures(viewer)
    return publisher, viewer


async def no_viewers_left(cluster: Cluster) -> None:
    """Until the origin hears (by heartbeats, 2 s apart) that the edges are empty."""
    for _ in range(60):
        async with cluster.http.get(
            f"{cluster.origin.url}/api/cluster", headers=ADMIN
        ) as response:
            nodes = (await response.json())["nodes"]
        if all(node["viewers"] == 0 for node in nodes):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"viewers left: {nodes}")


async def pictures(viewer: Viewer, more_than: int = 5, timeout: float = 15) -> None:
    seen = len(viewer.frames.get("video", []))
    await wait_for(
        lambda: len(viewer.frames.get("video", [])) >= seen + more_than,
        timeout=timeout,
        message=f"no picture via {viewer.answered_by}",
    )


async def test_viewers_of_the_origin_are_spread_over_the_edges(cluster: Cluster):
    http = cluster.http
    publisher = await publish(http, f"{cluster.origin.url}/whip/live")
    await publisher.wait_connected()
    viewers: list[Viewer] = []
    try:
        async with http.ws_connect(f"{cluster.origin.url}/ws") as ws:
            await ws.send_json({"type": "subscribe", "stream": "live"})
            for _ in range(10):
                viewers.append(await watch(http, f"{cluster.origin.url}/whep/live"))
            by_node = [cluster.node_of(v.answered_by).name for v in viewers]
            assert sorted(by_node) == ["edge1"] * 5 + ["edge2"] * 5, by_node
            for viewer in viewers:
                await viewer.wait_connected()
            for viewer in viewers:
                await pictures(viewer)
            # The presenter's page on the origin counts the whole cluster's audience.
            deadline = time.monotonic() + 10
            while True:
                event = await asyncio.wait_for(ws.receive_json(), 10)
                if event.get("type") == "viewers" and event["count"] == 10:
                    break
                assert time.monotonic() < deadline, event
        stream = await stream_info(http, cluster.origin, "live")
        assert stream["viewers"] == 10, stream
        # Past the whole cluster's capacity (5 per edge): try again later.
        async with http.post(
            f"{cluster.origin.url}/whep/live",
            data=await recvonly_offer(),
            headers={"Content-Type": "application/sdp"},
        ) as response:
            body = await response.json()
        assert response.status == 503 and body["error"] == "cluster_full", body
        assert response.headers["Retry-After"] == "10"
        assert stream["viewers_by_node"] == {"origin": 0, "edge1": 5, "edge2": 5}
        # One upstream session per edge, not per viewer.
        async with http.get(f"{cluster.origin.url}/api/cluster", headers=ADMIN) as r:
            nodes = {n["id"]: n for n in (await r.json())["nodes"]}
        assert nodes["edge1"]["relays"] == ["live"] == nodes["edge2"]["relays"]
        async with http.get(f"{cluster.origin.url}/metrics", headers=ADMIN) as response:
            metrics = await response.text()
        assert "broadcast_cluster_nodes 3.0" in metrics
        assert "broadcast_cluster_redis_up 1.0" in metrics
        assert 'broadcast_cluster_node_viewers{node="edge1",role="edge"} 5.0' in metrics
    finally:
        await asyncio.gather(*(v.close() for v in viewers))
        await publisher.close()


async def test_publishers_go_to_the_origin_and_a_taken_stream_names_its_owner(
    cluster: Cluster,
):
    http = cluster.http
    edge = cluster.edges[0]
    location = await redirected_to(http, f"{edge.url}/whip/owned?key=k")
    # Publishing is open on this edge: it vouches for nothing, so no ticket (else an
    # open edge would open an origin with keys); the origin checks for itself.
    assert location == f"{cluster.origin.url}/whip/owned?key=k", location
    publisher = await publish(http, f"{edge.url}/whip/owned")  # follows the 307
    await publisher.wait_connected()
    assert cluster.node_of(publisher.answered_by) is cluster.origin
    try:
        # A second origin of the same cluster must not publish the same stream.
        second = await start_node(
            edge.log.parent, cluster.redis.url, "origin2", "both", settings=QUICK
        )
        try:
            async with http.post(
                f"{second.url}/whip/owned",
                data=await recvonly_offer(),
                headers={"Content-Type": "application/sdp"},
            ) as response:
                body = await response.json()
            assert response.status == 409, body
            assert body["error"] == "stream_busy"
            assert (
                "'origin'" in body["message"] and cluster.origin.url in body["message"]
            )
        finally:
            await second.stop()
    finally:
        await publisher.close()


async def test_a_viewers_token_and_a_publishers_key_survive_the_307(guarded: Cluster):
    """Clients drop Authorization on a redirect to another origin (aiohttp, as
    browsers do): what admitted the request travels in the Location."""
    http, origin, edge = guarded.http, guarded.origin, guarded.edges[0]
    # Publishers with the key, sent by an edge to the origin (a server-chosen id too).
    publisher = await publish(http, f"{edge.url}/whip/guarded", headers=KEY)
    await publisher.wait_connected()
    unnamed = await publish(http, f"{edge.url}/whip", headers=KEY)
    assert guarded.node_of(publisher.answered_by) is origin
    assert guarded.node_of(unnamed.answered_by) is origin
    await unnamed.close()
    # The key itself is not in the Location, and its ticket is good for its stream only.
    location = await redirected_to(http, f"{edge.url}/whip/guarded", headers=KEY)
    assert PUBLISH_KEY not in location
    ticket = location.partition("token=")[2]
    async with http.post(
        f"{origin.url}/whip/other?token={ticket}",
        data=await recvonly_offer(),
        headers={"Content-Type": "application/sdp"},
    ) as response:
        assert response.status == 401, await response.text()
    # A ticket brought back to an edge goes on as it is: not renewed for ever (a new
    # one, minted a second later, would carry a later expiry).
    await asyncio.sleep(1.1)
    again = await redirected_to(http, f"{edge.url}/whip/guarded?token={ticket}")
    assert again.partition("token=")[2] == ticket
    # A viewer with its view token as a Bearer, sent by the origin to an edge.
    token = tokens.mint(TOKEN_SECRET, tokens.VIEW, "guarded", 600)
    viewer = await watch(
        http,
        f"{origin.url}/whep/guarded",
        kinds=("video",),
        headers={"Authorization": f"Bearer {token}"},
    )
    try:
        assert guarded.node_of(viewer.answered_by) in guarded.edges
        await viewer.wait_connected()
        await pictures(viewer)
    finally:
        await asyncio.gather(viewer.close(), publisher.close())


async def test_edges_full_for_a_stream_send_a_viewer_on_once_never_back_and_forth(
    guarded: Cluster,
):
    """One viewer per stream per edge, a limit the other nodes cannot see: a full edge
    sends a viewer on once, and the edge it lands on, full too, answers 503 rather
    than sending it back (aiohttp would follow the ping-pong to TooManyRedirects)."""
    http, origin = guarded.http, guarded.origin
    publisher = await publish(http, f"{origin.url}/whip/full", headers=KEY)
    await publisher.wait_connected()
    token = {
        "Authorization": f"Bearer {tokens.mint(TOKEN_SECRET, 'view', 'full', 600)}"
    }
    viewers: list[Viewer] = []
    try:
        for _ in range(2):  # the second is sent on by the edge the first filled
            viewers.append(
                await watch(http, f"{origin.url}/whep/full", ("video",), headers=token)
            )
        where = {guarded.node_of(v.answered_by).name for v in viewers}
        assert where == {"edge1", "edge2"}, where
        for viewer in viewers:
            await viewer.wait_connected()
            await pictures(viewer)
        for node in guarded.nodes:
            async with http.post(
                f"{node.url}/whep/full",
                data=await recvonly_offer(),
                headers={"Content-Type": "application/sdp", **token},
            ) as response:
                body = await response.json()
            assert response.status == 503, (node.name, response.status, body)
            assert body["error"] == "cluster_full", body
            assert "not sent on again" in body["message"], body
            assert len(response.history) <= 2, response.history
    finally:
        await asyncio.gather(*(v.close() for v in viewers), publisher.close())


async def test_a_heartbeat_with_fields_from_a_newer_version_is_read(cluster: Cluster):
    """A rolling upgrade: a newer node's heartbeat names fields this version does not
    know. They are left out; before, every read of the nodes failed on them."""
    newer = {
        "id": "newer",
        "url": "http://127.0.0.1:9",
        "role": "origin",
        "written_at": time.time(),
        "gpu_share": 0.25,  # unknown here
        "codecs": ["AV1"],
    }
    client = redis.Redis.from_url(cluster.redis.url)
    names = [node.name for node in cluster.nodes]
    try:
        await client.set("broadcast:node:newer", json.dumps(newer), ex=6)
        for node in cluster.nodes:  # within STALE_S of its one heartbeat
            await wait_until_known(cluster.http, node, [*names, "newer"], timeout=3)
    finally:
        await client.delete("broadcast:node:newer")
        await client.aclose()
    for node in cluster.nodes:
        await wait_until_known(cluster.http, node, names)


async def test_a_publisher_that_returns_keeps_edge_viewers_continuous(cluster: Cluster):
    http = cluster.http
    await no_viewers_left(cluster)
    url = f"{cluster.origin.url}/whip/back"
    publisher = await publish(http, url)
    await publisher.wait_connected()
    viewer = await watch(http, f"{cluster.origin.url}/whep/back", kinds=("video",))
    await viewer.wait_connected()
    await pictures(viewer)
    await publisher.close()  # dropped, not ended: the origin waits for it
    await asyncio.sleep(1.0)
    returned = await publish(http, url)
    await returned.wait_connected()
    try:
        await pictures(viewer, more_than=20)
        (packets,) = viewer.received.packets.values()
        arrival = viewer.received.arrival[packets[0].ssrc]
        seqs = [p.sequence_number for p in packets]
        jumps = [(b - a) & 0xFFFF for a, b in itertools.pairwise(seqs)]
        forward = [j for j in jumps if j < 0x8000]
        assert max(forward) <= 2, f"sequence jumps by {max(forward)}"
        # Across the outage the timestamps advance by about the time that passed.
        gap = max(range(1, len(arrival)), key=lambda i: arrival[i] - arrival[i - 1])
        elapsed = arrival[gap] - arrival[gap - 1]
        advanced = (
            (packets[gap].timestamp - packets[gap - 1].timestamp) & 0xFFFFFFFF
        ) / 90000
        assert elapsed > 0.8, f"no outage seen ({elapsed:.2f} s)"
        assert 0.5 * elapsed < advanced < 2 * elapsed + 0.5, (elapsed, advanced)
    finally:
        await asyncio.gather(viewer.close(), returned.close())


async def test_an_edge_killed_is_gone_within_its_expiry_and_viewers_go_elsewhere(
    tmp_path: Path,
):
    async with running_cluster(tmp_path, 2) as cluster:
        http = cluster.http
        publisher, viewer = await live_via_an_edge(cluster, "k")
        dead = cluster.node_of(viewer.answered_by)
        live = next(edge for edge in cluster.edges if edge is not dead)
        dead.kill()
        gone_after = await wait_until_known(
            http, cluster.origin, ["origin", live.name], timeout=10
        )
        print(f"{dead.name} gone from the cluster {gone_after:.1f} s after SIGKILL")
        assert gone_after < 5  # silent for STALE_S (3.5 s), read every 1 s
        for _ in range(5):  # no new viewer is sent to the dead edge
            location = await redirected_to(http, f"{cluster.origin.url}/whep/k")
            assert location.startswith(live.url), location
        # The viewer's page reconnects through the origin and plays from a live edge.
        await viewer.close()
        again = await watch(http, f"{cluster.origin.url}/whep/k", kinds=("video",))
        assert cluster.node_of(again.answered_by) is live
        await again.wait_connected()
        await pictures(again)
        await asyncio.gather(again.close(), publisher.close())


async def test_without_redis_every_node_keeps_serving_and_rejoins_after(
    tmp_path: Path,
):
    async with running_cluster(tmp_path, 1) as cluster:
        http = cluster.http
        (edge,) = cluster.edges
        publisher, viewer = await live_via_an_edge(cluster, "r")
        for outage in ("hung", "stopped"):
            if outage == "hung":
                cluster.redis.pause()
            else:
                await cluster.redis.stop()
            for node in cluster.nodes:
                await wait_for_text(http, f"{node.url}/healthz", "redis down")
            async with http.get(f"{edge.url}/metrics", headers=ADMIN) as response:
                assert "broadcast_cluster_redis_up 0.0" in await response.text()
            await pictures(viewer)  # what is carried goes on
            local = await watch(http, f"{edge.url}/whep/r", kinds=("video",))
            await local.wait_connected()  # and local joins still work
            await pictures(local)
            await local.close()
            if outage == "hung":
                cluster.redis.resume()
            else:
                await cluster.redis.start()  # empty: the nodes rebuild it
            for node in cluster.nodes:
                await wait_for_text(http, f"{node.url}/healthz", "ok", exact=True)
                await wait_until_known(http, node, ["origin", edge.name])
            # The origin claimed its live stream again in the Redis that came back.
            client = redis.Redis.from_url(cluster.redis.url)
            try:
                assert await client.get("broadcast:owner:r") == b"origin"
            finally:
                await client.aclose()
            # The origin's stream is its own again: a new viewer is placed as before.
            fresh = await watch(http, f"{cluster.origin.url}/whep/r", kinds=("video",))
            assert cluster.node_of(fresh.answered_by) is edge
            await fresh.wait_connected()
            await pictures(fresh)
            await fresh.close()
        for node in cluster.nodes:
            log = node.log_text()
            assert cluster.redis.password not in log
            assert "Redis redis://127.0.0.1" in log  # named, without its password
        await asyncio.gather(viewer.close(), publisher.close())


async def wait_for_text(
    http: aiohttp.ClientSession, url: str, text: str, exact: bool = False
) -> None:
    body = ""
    for _ in range(100):
        async with http.get(url) as response:
            body = await response.text()
        if (body == text) if exact else (text in body):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{url}: {body!r}")


async def test_when_the_origin_dies_edge_viewers_wait_and_resume_on_a_new_one(
    tmp_path: Path,
):
    async with running_cluster(tmp_path, 1) as cluster:
        http = cluster.http
        (edge,) = cluster.edges
        publisher, viewer = await live_via_an_edge(cluster, "o")
        async with http.ws_connect(f"{edge.url}/ws") as ws:
            await ws.send_json({"type": "subscribe", "stream": "o"})
            cluster.origin.kill()
            await publisher.close()
            deadline = time.monotonic() + 15
            while True:  # the viewer's page shows it
                event = await asyncio.wait_for(ws.receive_json(), 15)
                if event.get("state") == "reconnecting":
                    break
                assert time.monotonic() < deadline, event
            # A publisher comes back on a new origin: the edge finds it there.
            new_origin = await start_node(
                tmp_path, cluster.redis.url, "origin-b", "origin", settings=QUICK
            )
            try:
                # The dead origin's claim on the stream expires with its heartbeat.
                for _ in range(100):
                    with contextlib.suppress(AssertionError):  # 409 until then
                        returned = await publish(http, f"{new_origin.url}/whip/o")
                        break
                    await asyncio.sleep(0.1)
                await returned.wait_connected()
                while True:
                    event = await asyncio.wait_for(ws.receive_json(), 20)
                    if event.get("state") == "live":
                        break
                await pictures(viewer, timeout=20)
                await returned.close()
            finally:
                await new_origin.stop()
        await viewer.close()
