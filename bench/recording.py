"""What recording costs: server CPU for one 720p stream, and fan-out µs/pkt-viewer, with
and without recording it.

Run inside a network namespace holding only `lo`:

unshare -rn sh -c 'ip link set lo up && python bench/recording.py --steps 0,50,200 --duration 15'

For each mode (off, then on) a fresh `broadcast serve` (bench/fanout.py's `running`) takes
the pre-encoded 1280x720 H.264 clip and Opus of bench/media.py (~2 Mbit/s, looped); in
mode `on` the stream is recorded (`POST /api/streams/<id>/recording`) before anything is
measured. Per step, as bench/fanout.py measures it: server CPU with no viewer (what
taking the stream in, and recording it, costs) and with N `broadcast loadtest` viewers
(µs per packet per viewer). At the end the recording is stopped and read back with PyAV:
its duration against the time it covered.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import aioice.ice
import av

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.fanout import (
    HEADER,
    STREAM,
    _line,
    _row,
    _steps,
    crowd_step,
    idle_step,
    running,
)
from bench.media import encode_audio, encode_video, publish

KEY = "bench-admin-key"
ADMIN = {"Authorization": f"Bearer {KEY}"}
CONFIG = """<flashphoner><limits>
<sessions_per_client_per_minute>0</sessions_per_client_per_minute>
</limits><media><workers>{workers}</workers></media>
<auth><admin_key>{key}</admin_key></auth>
<recording><dir>{directory}</dir></recording></flashphoner>"""


async def measure(
    args: argparse.Namespace, record: bool, directory: str
) -> dict[str, Any]:
    video, audio = encode_video(args.clip_s), encode_audio(args.clip_s)
    config = os.path.join(directory, "flashphoner.xml")
    recordings = os.path.join(directory, "recordings")
    Path(config).write_text(
        CONFIG.format(workers=args.workers, key=KEY, directory=recordings)
    )
    rows = []
    checked: dict[str, Any] = {}
    async with (
        running("broadcast", config) as (pid, base),
        aiohttp.ClientSession() as http,
    ):
        publisher = await publish(http, f"{base}/whip/{STREAM}", video, audio)
        await publisher.wait_connected()
        await asyncio.sleep(args.settle)
        started = time.monotonic()
        if record:
            url = f"{base}/api/streams/{STREAM}/recording"
            async with http.post(url, headers=ADMIN) as response:
                assert response.status == 201, await response.text()
            await asyncio.sleep(args.settle)
        for viewers in args.steps:
            if viewers == 0:
                row = await idle_step(pid, args.duration)
            else:
                result = await crowd_step(
                    f"{base}/whep/{STREAM}", pid, viewers, args.duration, args.settle
                )
                row = _row(result, publisher.log.latencies_ms(result["samples"]))
            rows.append(row)
            print(
                f"recording {'on' if record else 'off'}: {_line(row)}", file=sys.stderr
            )
        if record:
            async with http.delete(url, headers=ADMIN) as response:
                stopped = await response.json()
            covered = time.monotonic() - started
            with av.open(os.path.join(recordings, stopped["file"])) as container:
                checked = {
                    "file": stopped["file"],
                    "duration_s": (container.duration or 0) / 1_000_000,
                    "covered_s": covered,
                    "size_mib": os.path.getsize(container.name) / 2**20,
                }
        await publisher.pc.close()
    return {"rows": rows, "file": checked}


def report(off: dict[str, Any], on: dict[str, Any]) -> str:
    lines = []
    for name, result in (("recording off", off), ("recording on", on)):
        lines += [f"\n{name}", HEADER, *(_line(row) for row in result["rows"])]
    idle = [
        next((r for r in result["rows"] if r["viewers"] == 0), None)
        for result in (off, on)
    ]
    if idle[0] and idle[1]:
        cost = idle[1]["server_cpu_percent"] - idle[0]["server_cpu_percent"]
        lines.append(f"\nrecording one 720p H.264 stream: {cost:.1f} % of a core")
    for before, after in zip(off["rows"], on["rows"], strict=True):
        if before["viewers"] and before.get("us_per_pkt_viewer"):
            lines.append(
                f"{before['viewers']:>5} viewers: µs/pkt-viewer {before['us_per_pkt_viewer']:.2f}"
                f" without, {after['us_per_pkt_viewer']:.2f} with recording"
            )
    file = on["file"]
    if file:
        lines.append(
            f"file {file['file']}: {file['duration_s']:.1f} s of {file['covered_s']:.1f} s"
            f" recorded, {file['size_mib']:.1f} MiB"
        )
    return "\n".join(lines)


async def main(args: argparse.Namespace) -> None:
    aioice.ice.get_host_addresses = lambda **_: ["127.0.0.1"]
    with tempfile.TemporaryDirectory() as directory:
        off = await measure(args, False, directory)
        on = await measure(args, True, directory)
    print(report(off, on))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=_steps, default=[0, 50, 200])
    parser.add_argument("--duration", type=float, default=15.0, help="seconds measured")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds before each")
    parser.add_argument(
        "--clip-s", type=int, default=10, help="seconds of video looped"
    )
    parser.add_argument("--workers", type=int, default=1, help="(0: one per core)")
    args = parser.parse_args()
    args.duration = min(max(args.duration, 1.0), 120.0)
    args.settle = min(max(args.settle, 0.0), 30.0)
    args.clip_s = min(max(args.clip_s, 2), 30)
    asyncio.run(main(args))
