"""A cluster on a real Redis: an origin and two edges, each a `broadcast serve` process.

Viewers POST to the origin and are sent (307) to the edges, which pull the stream from
the origin once each; counts are summed over the cluster; a publish to a stream owned
elsewhere is refused with the owner named.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio

from tests.cluster_nodes import ADMIN, Node, start_node
from tests.cluster_redis import RedisServer, start_redis
from tests.peers import Peer, Viewer, publish, wait_for, watch

pytestmark = pytest.mark.asyncio(loop_scope="module")

# Each edge takes 5 viewers: 10 viewers spread over both.
EDGE_SETTINGS = "<limits><max_viewers_total>5</max_viewers_total></limits>"
LINGER = "<cluster><linger_seconds>3</linger_seconds></cluster>"


@dataclass
class Cluster:
    redis: RedisServer
    origin: Node
    edges: list[Node]
    http: aiohttp.ClientSession

    def node_of(self, url: str) -> Node:
        for node in (self.origin, *self.edges):
            if url.startswith(node.url + "/"):
                return node
        raise AssertionError(f"{url} is on no node")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cluster(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Cluster]:
    directory: Path = tmp_path_factory.mktemp("cluster")
    redis = await start_redis(directory)
    nodes: list[Node] = []
    try:
        nodes.append(
            await start_node(directory, redis.url, "origin", "origin", settings=LINGER)
        )
        for name in ("edge1", "edge2"):
            nodes.append(
                await start_node(
                    directory, redis.url, name, "edge", settings=EDGE_SETTINGS + LINGER
                )
            )
        async with aiohttp.ClientSession() as http:
            cluster = Cluster(redis, nodes[0], nodes[1:], http)
            for node in nodes:  # every node has seen every other's heartbeat
                await wait_until_nodes(http, node, 2)
            yield cluster
    finally:
        await asyncio.gather(*(node.stop() for node in nodes))
        await redis.stop()


async def others_known(http: aiohttp.ClientSession, node: Node) -> list[str]:
    """The other nodes `node` knows alive, from /api/cluster."""
    async with http.get(f"{node.url}/api/cluster", headers=ADMIN) as response:
        assert response.status == 200, await response.text()
        return sorted(
            n["id"] for n in (await response.json())["nodes"] if n["id"] != node.name
        )


async def wait_until_nodes(http: aiohttp.ClientSession, node: Node, count: int) -> None:
    for _ in range(100):
        if len(await others_known(http, node)) == count:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{node.name} knows {await others_known(http, node)}")


async def test_viewers_of_the_origin_are_spread_over_the_edges(cluster: Cluster):
    http = cluster.http
    publisher: Peer = await publish(http, f"{cluster.origin.url}/whip/live")
    await publisher.wait_connected()
    viewers: list[Viewer] = []
    try:
        for _ in range(10):
            viewers.append(await watch(http, f"{cluster.origin.url}/whep/live"))
        by_node = [cluster.node_of(v.answered_by).name for v in viewers]
        assert sorted(by_node) == ["edge1"] * 5 + ["edge2"] * 5, by_node
        for viewer in viewers:
            await viewer.wait_connected()
        for viewer in viewers:
            await wait_for(
                lambda v=viewer: len(v.frames.get("video", [])) >= 5,
                timeout=15,
                message=f"no picture via {viewer.answered_by}",
            )
        stream: dict = {}
        for _ in range(60):  # the edges' heartbeats, 2 s apart
            async with http.get(
                f"{cluster.origin.url}/api/streams/live", headers=ADMIN
            ) as response:
                stream = await response.json()
            if stream["viewers"] == 10:
                break
            await asyncio.sleep(0.1)
        assert stream["viewers"] == 10, stream
        assert stream["viewers_by_node"] == {"origin": 0, "edge1": 5, "edge2": 5}
    finally:
        await asyncio.gather(*(v.close() for v in viewers))
        await publisher.close()
