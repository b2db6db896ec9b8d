"""Cluster: what the origin pays per edge and per viewer, joins via an edge, re-routing.

Run inside a network namespace holding only `lo` (all traffic stays on 127.0.0.1):

unshare -rn sh -c 'ip link set lo up && python bench/cluster.py --edges 2 --viewers 20,200'

A real redis-server (tests/cluster_redis.py), an origin (role origin) and N edges (role
edge, --workers each) as `broadcast serve` processes (tests/cluster_nodes.py); one
publisher in this process sends the pre-encoded 1280x720 H.264 clip (~2 Mbit/s) and Opus
to the origin (bench/media.py). Origin CPU is its process and children, from /proc.

1. Per edge: 0, 1 ... N edges relaying, each to one viewer POSTed straight to it
   (`broadcast loadtest`, 1 viewer per edge; the edge pulls from the origin). The origin's
   CPU beyond the publisher-only row, per edge, is what an upstream session costs it.
   Then K WHEP POSTs to the origin, each answered 307: its CPU per redirect.
2. Per viewer: M viewers all POST to the origin's /whep/<id> (`broadcast loadtest`
   follows the 307 to an edge). Origin CPU, edges relaying and viewers per edge (the
   origin's /api/cluster, sampled during the run), POST to the origin -> first keyframe
   packet via the edge (loadtest's join->keyframe: its clock starts before the POST
   that gets the 307), loss, added latency (publisher send -> viewer arrival, both this
   machine's monotonic clock). The origin's CPU between the smallest and largest M, per
   viewer, is what a joined viewer costs it: it should be ~0.
3. A few aiortc viewers (tests/peers.watch), one at a time, via the origin: watch()
   called (offer, POST, 307, ICE, DTLS) -> first decoded video frame.
4. Re-route, --kills times: the edge the origin names in its next 307 is killed
   (SIGKILL); every 100 ms a POST to the origin (the 307 not followed) and a GET
   /api/cluster, until the dead edge is gone from the origin's view: when the 307s name
   live edges only, and when the dead edge is gone. Then a new edge takes its name and,
   after one viewer, relays the stream like the others, for the next kill.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp
import aioice.ice

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.fanout import crowd_step, idle_step
from bench.media import encode_audio, encode_video, publish
from broadcast.loadtest.report import Spread
from broadcast.loadtest.server_usage import process_cpu_s
from tests.cluster_nodes import ADMIN, Node, start_node
from tests.cluster_redis import start_redis
from tests.peers import recvonly_offer, watch

STREAM = "bench"
# All viewers come from 127.0.0.1: lift the per-client session rate on every node.
SETTINGS = (
    "<limits><sessions_per_client_per_minute>0</sessions_per_client_per_minute>"
    "</limits>"
)
POLL_S = 0.1
FIRST_FRAME_TIMEOUT_S = 15.0
GONE_TIMEOUT_S = 30.0


@dataclass
class Cluster:
    origin: Node
    edges: list[Node]
    http: aiohttp.ClientSession
    directory: Path
    redis_url: str
    workers: int
    started: list[Node]  # every node started, killed ones too: all stopped at the end

    def name_of(self, url: str) -> str:
        """Which node a URL (a 307's Location) is on."""
        for node in [self.origin, *self.edges]:
            if url.startswith(node.url + "/"):
                return node.name
        return url

    async def start_edge(self, name: str) -> Node:
        edge = await start_node(
            self.directory,
            self.redis_url,
            name,
            "edge",
            workers=self.workers,
            settings=SETTINGS,
        )
        self.started.append(edge)
        return edge


@contextlib.asynccontextmanager
async def running_cluster(edges: int, workers: int) -> AsyncIterator[Cluster]:
    """Redis, an origin and `edges` edges, each knowing all the others."""
    with tempfile.TemporaryDirectory() as name:
        directory = Path(name)
        redis = await start_redis(directory)
        started: list[Node] = []
        try:
            origin = await start_node(
                directory, redis.url, "origin", "origin", settings=SETTINGS
            )
            started.append(origin)
            async with aiohttp.ClientSession() as http:
                cluster = Cluster(
                    origin, [], http, directory, redis.url, workers, started
                )
                for index in range(1, edges + 1):
                    cluster.edges.append(await cluster.start_edge(f"edge{index}"))
                names = {node.name for node in started}
                for node in started:
                    await until(lambda n=node: view_names(http, n), names)
                yield cluster
        finally:
            await asyncio.gather(*(node.stop() for node in started))
            await redis.stop()


async def cluster_view(http: aiohttp.ClientSession, node: Node) -> dict[str, dict]:
    """The live nodes `node` knows, by id (GET /api/cluster)."""
    async with http.get(f"{node.url}/api/cluster", headers=ADMIN) as response:
        response.raise_for_status()
        return {n["id"]: n for n in (await response.json())["nodes"]}


async def view_names(http: aiohttp.ClientSession, node: Node) -> set[str]:
    return set(await cluster_view(http, node))


async def until(ask: Any, wanted: set[str], timeout: float = 15) -> None:
    """Poll `ask()` until it returns `wanted`."""
    deadline = time.monotonic() + timeout
    while (got := await ask()) != wanted:
        if time.monotonic() > deadline:
            raise RuntimeError(f"wanted {sorted(wanted)}, have {sorted(got)}")
        await asyncio.sleep(POLL_S)


async def redirect(http: aiohttp.ClientSession, url: str, offer: str) -> str:
    """POST a WHEP offer without following the answer; where the 307 sends it."""
    async with http.post(
        url,
        data=offer,
        headers={"Content-Type": "application/sdp"},
        allow_redirects=False,
    ) as response:
        if response.status != 307:
            return f"{response.status} {await response.text()}"
        return response.headers["Location"]


# --- 1. per edge -------------------------------------------------------------------


async def per_edge(cluster: Cluster, duration: float, settle: float) -> list[dict]:
    """Origin CPU with 0..N edges relaying, one viewer POSTed straight to each."""
    pid = cluster.origin.process.pid
    rows = [{"edges": 0, **await idle_step(pid, duration)}]
    for count in range(1, len(cluster.edges) + 1):
        results = await asyncio.gather(
            *(
                crowd_step(f"{edge.url}/whep/{STREAM}", pid, 1, duration, settle)
                for edge in cluster.edges[:count]
            )
        )
        rows.append(
            {
                "edges": count,
                "connected": sum(r["connected"] for r in results),
                "server_cpu_percent": statistics.mean(
                    r["server"]["cpu_percent"] for r in results
                ),
            }
        )
    for row in rows[1:]:
        beyond = row["server_cpu_percent"] - rows[0]["server_cpu_percent"]
        row["beyond_idle_per_edge_percent"] = beyond / row["edges"]
    return rows


async def cpu_per_redirect(cluster: Cluster, count: int, idle_percent: float) -> float:
    """Origin CPU ms per WHEP POST answered 307, beyond its rate while idle."""
    url = f"{cluster.origin.url}/whep/{STREAM}"
    offer = await recvonly_offer()
    pid = cluster.origin.process.pid
    cpu, start = process_cpu_s(pid), time.monotonic()
    for _ in range(count):
        location = await redirect(cluster.http, url, offer)
        if not location.startswith("http"):
            raise RuntimeError(f"the origin answered {location}")
    spent = process_cpu_s(pid) - cpu
    idle = idle_percent / 100 * (time.monotonic() - start)
    return 1000 * (spent - idle) / count


# --- 2. per viewer -----------------------------------------------------------------


async def busiest_view(cluster: Cluster, done: asyncio.Event) -> dict[str, dict]:
    """The origin's view of the cluster with the most viewers, until `done`."""
    best: dict[str, dict] = {}
    while not done.is_set():
        view = await cluster_view(cluster.http, cluster.origin)
        if sum(n["viewers"] for n in view.values()) >= sum(
            n["viewers"] for n in best.values()
        ):
            best = view
        await asyncio.sleep(0.5)
    return best


async def per_viewer(
    cluster: Cluster, steps: list[int], duration: float, settle: float, publisher: Any
) -> list[dict]:
    """M viewers POSTed to the origin, 307 to the edges: what the origin carries."""
    rows = []
    for viewers in steps:
        done = asyncio.Event()
        sampler = asyncio.create_task(busiest_view(cluster, done))
        try:
            result = await crowd_step(
                f"{cluster.origin.url}/whep/{STREAM}",
                cluster.origin.process.pid,
                viewers,
                duration,
                settle,
            )
        finally:
            done.set()
        view = await sampler
        latency = Spread.of(publisher.log.latencies_ms(result["samples"]))
        edges = [view.get(edge.name, {}) for edge in cluster.edges]
        row = {
            "viewers": viewers,
            "connected": result["connected"],
            "failures": result["failures"],
            "server_cpu_percent": result["server"]["cpu_percent"],
            "edges_relaying": sum(STREAM in e.get("relays", ()) for e in edges),
            "viewers_by_edge": {
                edge.name: e.get("viewers", 0)
                for edge, e in zip(cluster.edges, edges, strict=True)
            },
            "join_to_keyframe_ms": result["join_to_keyframe_ms"],
            "loss_percent": result["loss_percent"],
            "latency_ms": {"p50": latency.p50, "p99": latency.p99},
        }
        rows.append(row)
        print(f"per viewer: {row}", file=sys.stderr)
    return rows


# --- 3. first decoded frame --------------------------------------------------------


async def first_frames(cluster: Cluster, url: str, count: int) -> list[float]:
    """ms from watch() on `url` to the first decoded video frame, one at a time."""
    times = []
    for _ in range(count):
        started = time.monotonic()
        viewer = await watch(cluster.http, url, kinds=("video",))
        try:
            deadline = started + FIRST_FRAME_TIMEOUT_S
            while "video" not in viewer.first_frame_at:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"no frame via {viewer.answered_by}")
                await asyncio.sleep(0.01)
            times.append(1000 * (viewer.first_frame_at["video"] - started))
        finally:
            await viewer.close()
    return times


# --- 4. re-route -------------------------------------------------------------------


async def reroute(cluster: Cluster, offer: str) -> dict[str, Any]:
    """SIGKILL the edge the origin sends viewers to; how long until it sends none
    there and until it no longer lists it."""
    url = f"{cluster.origin.url}/whep/{STREAM}"
    victim_name = cluster.name_of(await redirect(cluster.http, url, offer))
    victim = next(edge for edge in cluster.edges if edge.name == victim_name)
    victim.kill()
    killed = time.monotonic()
    answers: list[tuple[float, str]] = []  # (seconds after the kill, node named)
    gone_s = None
    while gone_s is None:
        answers.append(
            (
                time.monotonic() - killed,
                cluster.name_of(await redirect(cluster.http, url, offer)),
            )
        )
        if victim_name not in await view_names(cluster.http, cluster.origin):
            gone_s = time.monotonic() - killed
        elif time.monotonic() - killed > GONE_TIMEOUT_S:
            raise RuntimeError(f"{victim_name} still listed {GONE_TIMEOUT_S} s on")
        await asyncio.sleep(POLL_S)
    to_dead = [t for t, name in answers if name == victim_name]
    after = [(t, n) for t, n in answers if not to_dead or t > to_dead[-1]]
    live = {edge.name for edge in cluster.edges} - {victim_name}
    return {
        "killed": victim_name,
        "posts": len(answers),
        "posts_to_dead_edge": len(to_dead),
        "rerouted_s": next((t for t, n in after if n in live), None),
        "answers_after": sorted({n for _, n in after}),
        "gone_from_origin_view_s": gone_s,
    }


async def replace(cluster: Cluster, name: str) -> None:
    """A new edge under the dead one's name, relaying the stream as the others do."""
    index = next(i for i, edge in enumerate(cluster.edges) if edge.name == name)
    cluster.edges[index] = await cluster.start_edge(name)
    names = {cluster.origin.name, *(edge.name for edge in cluster.edges)}
    await until(lambda: view_names(cluster.http, cluster.origin), names)
    await first_frames(cluster, f"{cluster.edges[index].url}/whep/{STREAM}", 1)

    edges = {edge.name for edge in cluster.edges}

    async def carrying() -> set[str]:
        view = await cluster_view(cluster.http, cluster.origin)
        return {n for n, node in view.items() if STREAM in node["streams"]} & edges

    await until(carrying, edges)


async def reroutes(cluster: Cluster, kills: int) -> list[dict[str, Any]]:
    """`kills` times: kill the edge new viewers go to, then replace it."""
    offer = await recvonly_offer()
    rows = []
    for kill in range(kills):
        rows.append(await reroute(cluster, offer))
        print(f"re-route: {rows[-1]}", file=sys.stderr)
        if kill < kills - 1:
            await replace(cluster, rows[-1]["killed"])
    return rows


# --- report ------------------------------------------------------------------------


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def report(result: dict[str, Any]) -> str:
    edge_rows, viewer_rows = result["per_edge"], result["per_viewer"]
    lines = [
        "origin CPU by edges relaying (one viewer POSTed straight to each edge)",
        "edges  origin CPU  beyond publisher-only, per edge",
    ]
    for row in edge_rows:
        lines.append(
            f"{row['edges']:>5}  {row['server_cpu_percent']:>8.1f} %"
            f"  {_num(row.get('beyond_idle_per_edge_percent'), 2):>8} %"
        )
    lines += [
        f"origin CPU per edge: {result['origin_cpu_per_edge_percent']:.2f} % of a core"
        f" ({len(edge_rows) - 1} edges vs none)",
        f"origin CPU per WHEP POST answered 307: {result['origin_cpu_per_307_ms']:.2f}"
        f" ms ({result['redirects']} POSTs)",
        "",
        "viewers POSTed to the origin (307 to an edge)",
        "viewers  edges relaying  viewers by edge  origin CPU"
        "  POST->keyframe p50/p95 ms  loss %  latency p50/p99 ms",
    ]
    for row in viewer_rows:
        connected = f"{row['connected']}" + (
            "" if row["connected"] == row["viewers"] else f"/{row['viewers']}"
        )
        spread = ", ".join(f"{k} {v}" for k, v in row["viewers_by_edge"].items())
        key, latency = row["join_to_keyframe_ms"], row["latency_ms"]
        lines.append(
            f"{connected:>7}  {row['edges_relaying']:>14}  {spread:<15}"
            f"  {row['server_cpu_percent']:>8.1f} %"
            f"  {_num(key['p50'], 0):>11} / {_num(key['p95'], 0):<11}"
            f"  {row['loss_percent']:>6.2f}"
            f"  {_num(latency['p50']):>7} / {_num(latency['p99'])}"
        )
        if row["failures"]:
            lines.append(f"         failures: {row['failures']}")
    if len(viewer_rows) > 1:
        first, last = viewer_rows[0], viewer_rows[-1]
        lines.append(
            f"origin CPU per joined viewer: {result['origin_cpu_per_viewer_percent']:.4f}"
            f" % of a core ({last['viewers']} vs {first['viewers']} viewers)"
        )
    frames = Spread(**result["first_frame_ms"])
    lines += [
        "",
        f"aiortc viewers via the origin: watch() -> first decoded frame p50"
        f" {_num(frames.p50, 0)} ms, p95 {_num(frames.p95, 0)} ms ({frames.count})",
    ]
    kills = result["reroute"]
    for number, kill in enumerate(kills, 1):
        lines.append(
            f"kill {number}: {kill['killed']}; 307s name live edges only from"
            f" {_num(kill['rerouted_s'], 2)} s ({kill['posts_to_dead_edge']} of"
            f" {kill['posts']} POSTs named the dead edge); gone from the origin's"
            f" /api/cluster at {kill['gone_from_origin_view_s']:.2f} s"
        )
    rerouted = Spread.of(
        [k["rerouted_s"] for k in kills if k["rerouted_s"] is not None]
    )
    gone = Spread.of([k["gone_from_origin_view_s"] for k in kills])
    lines.append(
        f"re-route after SIGKILL: p50 {_num(rerouted.p50, 2)} s, max"
        f" {_num(rerouted.max, 2)} s; gone from the origin's view: p50"
        f" {_num(gone.p50, 2)} s, max {_num(gone.max, 2)} s ({len(kills)} kills)"
    )
    return "\n".join(lines)


async def main(args: argparse.Namespace) -> None:
    aioice.ice.get_host_addresses = lambda **_: ["127.0.0.1"]
    video, audio = encode_video(args.clip_s), encode_audio(args.clip_s)
    async with running_cluster(args.edges, args.workers) as cluster:
        publisher = await publish(
            cluster.http, f"{cluster.origin.url}/whip/{STREAM}", video, audio
        )
        await publisher.wait_connected()
        await asyncio.sleep(args.settle)
        edge_rows = await per_edge(cluster, args.duration, args.settle)
        print(f"per edge: {edge_rows}", file=sys.stderr)
        per_307 = await cpu_per_redirect(
            cluster, args.redirects, edge_rows[-1]["server_cpu_percent"]
        )
        viewer_rows = await per_viewer(
            cluster, args.viewers, args.duration, args.settle, publisher
        )
        frames = await first_frames(
            cluster, f"{cluster.origin.url}/whep/{STREAM}", args.decoders
        )
        rerouted = await reroutes(cluster, args.kills)
        await publisher.pc.close()
    first, last = viewer_rows[0], viewer_rows[-1]
    result = {
        "edges": args.edges,
        "workers": args.workers,
        "duration_s": args.duration,
        "per_edge": edge_rows,
        "origin_cpu_per_edge_percent": edge_rows[-1]["beyond_idle_per_edge_percent"],
        "redirects": args.redirects,
        "origin_cpu_per_307_ms": per_307,
        "per_viewer": viewer_rows,
        "origin_cpu_per_viewer_percent": (
            (last["server_cpu_percent"] - first["server_cpu_percent"])
            / (last["viewers"] - first["viewers"])
            if last["viewers"] != first["viewers"]
            else None
        ),
        "first_frame_ms": asdict(Spread.of(frames)),
        "reroute": rerouted,
    }
    print(json.dumps(result) if args.json else report(result))


def _counts(text: str) -> list[int]:
    counts = [int(count) for count in text.split(",")]
    if not counts or any(not 1 <= count <= 1000 for count in counts):
        raise argparse.ArgumentTypeError("viewers are 1-1000 each")
    return sorted(counts)


def _within(low: float, high: float, kind: type = int) -> Any:
    """An argparse type: the number given, brought into [low, high]."""
    return lambda text: min(max(kind(text), low), high)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    option = parser.add_argument
    option("--edges", type=_within(2, 8), default=2, help="edges (one is killed)")
    option("--workers", type=_within(1, 8), default=1, help="processes per edge")
    option("--viewers", type=_counts, default=[20, 200], help="crowds via the origin")
    option("--duration", type=_within(1, 120, float), default=10.0, help="s measured")
    option("--settle", type=_within(0, 30, float), default=3.0, help="s before each")
    option("--redirects", type=_within(1, 5000), default=200, help="307s timed")
    option("--decoders", type=_within(1, 100), default=10, help="viewers to a frame")
    option("--kills", type=_within(1, 20), default=3, help="edges killed, one by one")
    option("--clip-s", type=_within(2, 30), default=10, help="seconds of video looped")
    option("--json", action="store_true")
    asyncio.run(main(parser.parse_args()))
