"""Rough fan-out cost: server CPU per forwarded packet per viewer (µs/pkt-viewer).

Starts `broadcast serve` as its own process on 127.0.0.1, publishes a synthetic camera
(aiortc, VP8 + Opus) and attaches N light WHEP viewers that count packets without
decoding. The server's CPU time (user + sys, from /proc) over the measuring window is
divided by the packets the viewers received in it.

Run inside a network namespace holding only `lo`:

    unshare -rn sh -c 'ip link set lo up && python bench/fanout.py --viewers 50'
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
import time
from pathlib import Path

import aiohttp
import aioice.ice
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.peers import publish

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (/proc/<pid>/stat fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class CountingViewer:
    """A WHEP viewer that counts its RTP packets and decodes nothing."""

    def __init__(self) -> None:
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.packets = 0

    async def start(self, http: aiohttp.ClientSession, url: str) -> None:
        for kind in ("video", "audio"):
            self.pc.addTransceiver(kind, direction="recvonly")
        await self.pc.setLocalDescription(await self.pc.createOffer())
        headers = {"Content-Type": "application/sdp"}
        async with http.post(
            url, data=self.pc.localDescription.sdp, headers=headers
        ) as r:
            if r.status != 201:
                raise RuntimeError(f"WHEP {r.status}: {await r.text()}")
            answer = await r.text()
        await self.pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
        transport = self.pc.getTransceivers()[0].receiver.transport

        async def count(data: bytes, arrival_time_ms: int) -> None:
            self.packets += 1

        transport._handle_rtp_data = count


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def main(viewers: int, duration: float) -> None:
    aioice.ice.get_host_addresses = lambda **_: ["127.0.0.1"]
    port = free_port()
    server = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "broadcast",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
    )
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(100):
                try:
                    async with http.get(f"{base}/healthz") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientError:
                    await asyncio.sleep(0.1)
            publisher = await publish(http, f"{base}/whip/bench")
            await publisher.wait_connected()
            crowd = [CountingViewer() for _ in range(viewers)]
            for viewer in crowd:
                await viewer.start(http, f"{base}/whep/bench")
            await asyncio.sleep(3)  # connections settle, keyframes arrive
            cpu0, packets0, t0 = (
                cpu_seconds(server.pid),
                sum(v.packets for v in crowd),
                time.monotonic(),
            )
            await asyncio.sleep(duration)
            cpu1, packets1, t1 = (
                cpu_seconds(server.pid),
                sum(v.packets for v in crowd),
                time.monotonic(),
            )
            delivered = packets1 - packets0
            cpu = cpu1 - cpu0
            print(f"viewers              {viewers}")
            print(f"window               {t1 - t0:.1f} s")
            print(f"packets delivered    {delivered} ({delivered / (t1 - t0):.0f}/s)")
            print(
                f"server CPU           {cpu:.2f} s ({100 * cpu / (t1 - t0):.0f} % of a core)"
            )
            print(f"server RSS           {rss_mib(server.pid):.0f} MiB")
            if delivered:
                print(f"µs/pkt-viewer        {1e6 * cpu / delivered:.1f}")
            for viewer in crowd:
                await viewer.pc.close()
            await publisher.close()
    finally:
        server.terminate()
        await server.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--viewers", type=int, default=50)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds measured")
    args = parser.parse_args()
    asyncio.run(main(args.viewers, min(args.duration, 300)))
