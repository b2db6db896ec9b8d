"""Fan-out cost per viewer, against our server and against stock aiortc MediaRelay.

Run inside a network namespace holding only `lo` (all traffic stays on 127.0.0.1):

unshare -rn sh -c 'ip link set lo up && python bench/fanout.py --steps 0,10,50,100 --duration 15'

For each server (`broadcast serve`, then bench/mediarelay_server.py) in its own process:
one publisher in this process sends a pre-encoded 1280x720 H.264 clip (~2 Mbit/s, 1 s
GOP) and Opus, looped (bench/media.py); then for each step `broadcast loadtest` joins N
viewers in a third process, so that the three share the machine's cores as a server, a
camera and a crowd would not. Per step, over the measured window:

* server CPU (user + sys of its processes, workers included, /proc) and RSS; RSS per
  viewer is the growth over the 0-viewer step;
* µs/pkt-viewer = server CPU / packets the viewers received;
* loss, join → first keyframe (POST sent → first packet of a keyframe);
* added latency: the publisher logs when it sends each video payload, the viewers
  decrypt 1 packet in 64 and log its payload's digest and arrival; both clocks are
  this machine's CLOCK_MONOTONIC. It includes the publisher's SRTP and the viewers'
  event loop delay. MediaRelay re-encodes, so its payloads never match: n/a;
* the load generator's own CPU, to show it was not the bottleneck.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import aioice.ice

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.media import Encoded, encode_audio, encode_video, publish
from broadcast.loadtest.report import Spread
from broadcast.loadtest.server_usage import process_cpu_s as cpu_seconds
from broadcast.loadtest.server_usage import process_rss_bytes

STREAM = "bench"
# All viewers come from 127.0.0.1: lift the per-client session rate.
CONFIG = """<flashphoner><limits>
<sessions_per_client_per_minute>0</sessions_per_client_per_minute>
</limits><media><workers>{workers}</workers></media></flashphoner>"""
SERVERS = ("broadcast", "mediarelay")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@asynccontextmanager
async def running(which: str, config: str) -> AsyncIterator[tuple[int, str]]:
    """Start a server process; yield its pid and base URL; stop it."""
    port = free_port()
    if which == "broadcast":
        command = ["-m", "broadcast", "serve", "--config", config]
        command += [
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ]
    else:
        command = [
            str(Path(__file__).with_name("mediarelay_server.py")),
            "--port",
            str(port),
        ]
    # Whatever the server prints goes to stderr, away from the report.
    server = await asyncio.create_subprocess_exec(sys.executable, *command, stdout=2)
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(100):
                try:
                    async with http.get(f"{base}/healthz") as response:
                        if response.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
            else:
                raise RuntimeError(f"{which} did not start")
        yield server.pid, base
    finally:
        server.terminate()
        await server.wait()


async def idle_step(pid: int, duration: float) -> dict[str, Any]:
    cpu, start = cpu_seconds(pid), time.monotonic()
    await asyncio.sleep(duration)
    seconds = time.monotonic() - start
    return {
        "viewers": 0,
        "connected": 0,
        "server_cpu_percent": 100 * (cpu_seconds(pid) - cpu) / seconds,
        "server_rss_mib": process_rss_bytes(pid) / 2**20,
    }


async def crowd_step(
    url: str, pid: int, viewers: int, duration: float, settle: float
) -> dict[str, Any]:
    """Run `broadcast loadtest` as its own process and read its JSON."""
    command = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "broadcast",
        "loadtest",
        "--url",
        url,
        "--viewers",
        str(viewers),
        "--duration",
        str(duration),
        "--ramp-s",
        str(viewers / 25),
        "--settle-s",
        str(settle),
        "--server-pid",
        str(pid),
        "--latency-samples",
        "20000",
        "--json",
        stdout=asyncio.subprocess.PIPE,
    )
    output, _ = await command.communicate()
    if command.returncode != 0:
        raise RuntimeError(f"loadtest of {viewers} viewers failed")
    return json.loads(output)


def _row(result: dict[str, Any], latencies: list[float]) -> dict[str, Any]:
    server = result["server"]
    latency = Spread.of(latencies)
    return {
        "viewers": result["viewers"],
        "connected": result["connected"],
        "failures": result["failures"],
        "server_cpu_percent": server["cpu_percent"],
        "server_rss_mib": server["rss_bytes"] / 2**20,
        "packets_per_s": result["packets_per_s"],
        "video_fps_per_viewer": result["video_fps_per_viewer"],
        "us_per_pkt_viewer": server["us_per_packet_viewer"],
        "loss_percent": result["loss_percent"],
        "join_to_keyframe_ms": result["join_to_keyframe_ms"],
        "latency_ms": {"p50": latency.p50, "p99": latency.p99, "count": latency.count},
        "integrity_failures": result["integrity_failures"],
        "sessions_deleted": result["deleted"],
        "loadgen_cpu_percent": result["cpu_percent"],
        "loadgen_us_per_packet": result["us_per_packet"],
    }


async def ramp(
    which: str,
    steps: list[int],
    duration: float,
    settle: float,
    video: Encoded,
    audio: Encoded,
    config: str,
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    async with running(which, config) as (pid, base), aiohttp.ClientSession() as http:
        publisher = await publish(http, f"{base}/whip/{STREAM}", video, audio)
        await publisher.wait_connected()
        await asyncio.sleep(settle)
        for viewers in steps:
            if viewers == 0:
                row = await idle_step(pid, duration)
            else:
                result = await crowd_step(
                    f"{base}/whep/{STREAM}", pid, viewers, duration, settle
                )
                row = _row(result, publisher.log.latencies_ms(result["samples"]))
            rows.append(row)
            print(f"{which}: {_line(row)}", file=sys.stderr)
        await publisher.pc.close()
    idle = next((r for r in rows if r["viewers"] == 0), None)
    for row in rows:
        if row["viewers"] and idle is not None:
            growth = row["server_rss_mib"] - idle["server_rss_mib"]
            row["rss_per_viewer_kib"] = 1024 * growth / row["viewers"]
            if row["us_per_pkt_viewer"]:
                # The server's CPU beyond taking the stream in, per packet out.
                share = 1 - idle["server_cpu_percent"] / row["server_cpu_percent"]
                row["marginal_us_per_pkt_viewer"] = share * row["us_per_pkt_viewer"]
    return rows


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


HEADER = (
    "viewers  server CPU  RSS MiB  KiB/viewer  pkts/s  fps  µs/pkt-viewer (beyond idle)"
    "  loss %"
    "  join→key p50/p95 ms  latency p50/p99 ms  loadgen CPU  loadgen µs/pkt"
)


def _line(row: dict[str, Any]) -> str:
    if not row["viewers"]:
        return f"{0:>7}  {row['server_cpu_percent']:>8.0f} %  {row['server_rss_mib']:>7.0f}"
    key, latency = row["join_to_keyframe_ms"], row["latency_ms"]
    connected = f"{row['connected']}" + (
        "" if row["connected"] == row["viewers"] else f"/{row['viewers']}"
    )
    return (
        f"{connected:>7}  {row['server_cpu_percent']:>8.0f} %  {row['server_rss_mib']:>7.0f}"
        f"  {_num(row.get('rss_per_viewer_kib'), 0):>10}  {row['packets_per_s']:>6.0f}"
        f"  {row['video_fps_per_viewer']:>3.0f}  {_num(row['us_per_pkt_viewer']):>13}"
        f" ({_num(row.get('marginal_us_per_pkt_viewer')):>6})"
        f"  {row['loss_percent']:>6.2f}"
        f"  {_num(key['p50'], 0):>9} / {_num(key['p95'], 0):<8}"
        f"  {_num(latency['p50']):>8} / {_num(latency['p99']):<8}"
        f"  {row['loadgen_cpu_percent']:>9.0f} %  {_num(row['loadgen_us_per_packet']):>14}"
    )


def report(results: dict[str, list[dict[str, Any]]]) -> str:
    lines = []
    for which, rows in results.items():
        lines += [f"\n{which}", HEADER, *(_line(row) for row in rows)]
    if len(results) == 2:
        lines += ["\nµs/pkt-viewer, MediaRelay ÷ broadcast"]
        for ours, theirs in zip(*results.values(), strict=True):
            if ours.get("us_per_pkt_viewer") and theirs.get("us_per_pkt_viewer"):
                ratio = theirs["us_per_pkt_viewer"] / ours["us_per_pkt_viewer"]
                lines.append(f"{ours['viewers']:>7}  {ratio:.1f}x")
    return "\n".join(lines)


async def main(args: argparse.Namespace) -> None:
    aioice.ice.get_host_addresses = lambda **_: ["127.0.0.1"]
    video, audio = encode_video(args.clip_s), encode_audio(args.clip_s)
    results = {}
    with tempfile.TemporaryDirectory() as directory:
        config = os.path.join(directory, "flashphoner.xml")
        Path(config).write_text(CONFIG.format(workers=args.workers))
        for which in args.servers.split(","):
            results[which] = await ramp(
                which, args.steps, args.duration, args.settle, video, audio, config
            )
    if args.json:
        print(json.dumps({"steps": args.steps, "duration_s": args.duration, **results}))
    else:
        print(report(results))


def _steps(text: str) -> list[int]:
    steps = [int(step) for step in text.split(",")]
    if not steps or any(not 0 <= step <= 1000 for step in steps):
        raise argparse.ArgumentTypeError("steps are 0-1000 viewers")
    return steps


def _servers(text: str) -> str:
    if not set(text.split(",")) <= set(SERVERS):
        raise argparse.ArgumentTypeError(f"servers are among {', '.join(SERVERS)}")
    return text


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=_steps, default=[0, 10, 50, 100, 200])
    parser.add_argument("--duration", type=float, default=15.0, help="seconds measured")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds before each")
    parser.add_argument("--servers", type=_servers, default=",".join(SERVERS))
    parser.add_argument(
        "--clip-s", type=int, default=10, help="seconds of video looped"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="broadcast's worker processes (0: one per core); CPU and RSS are all of them",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    args.duration = min(max(args.duration, 1.0), 120.0)
    args.settle = min(max(args.settle, 0.0), 30.0)
    args.clip_s = min(max(args.clip_s, 2), 30)
    asyncio.run(main(args))
