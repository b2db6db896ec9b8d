"""Simulcast on the hot path: server CPU per packet per viewer, viewers on one layer
against viewers on `quality=auto`, and against a stream sent in one size.

    unshare -rn sh -c 'ip link set lo up && python bench/simulcast.py --viewers 20,50'
    unshare -rn sh -c 'ip link set lo up && python bench/simulcast.py --layers 1'

The presenter page in headless Chromium publishes its 1280x720 fake camera as three
layers (full, half, quarter size) to `broadcast serve` (one process, so that every
viewer is in the one measured). For each step `broadcast loadtest` joins N viewers
asking `quality=high` (the largest layer, fanned out as any single-layer stream's
viewers are: the same bytes to all, batched) and then N asking `quality=auto` (each a
LayerSwitch: it takes every layer's packets, forwards one, rewrites its sequence
numbers, timestamps, SSRC and picture ids, and is sent one packet at a time). The
viewers lose nothing, so auto viewers stay on the largest layer (the layers they are on
are read from the API halfway through): this is the steady cost, not the cost of
switching. µs/pkt-viewer = server CPU / packets the viewers got; "beyond ingest" takes
off the CPU of the 0-viewer step (taking the three layers in). With `--layers 1` the
server has `<simulcast>false</simulcast>`: the page sends one size, and viewers (plain
ViewerTracks, no LayerSwitch) are measured as a baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import aiohttp

from bench.fanout import crowd_step, idle_step, running
from tests.e2e.camera import NATIVE, write_y4m
from tests.e2e.chromium import launch_chromium

# Chromium's encoder reaches its three layers' rates over a few seconds.
RAMP_UP_S = 8.0
CONFIG = """<flashphoner><auth><admin_key>bench</admin_key></auth><limits>
<sessions_per_client_per_minute>0</sessions_per_client_per_minute>
</limits><media><workers>1</workers><simulcast>{simulcast}</simulcast></media>
</flashphoner>"""


async def presenter(browser: Any, origin: str) -> str:
    """The presenter page live with three layers; its stream id."""
    context = await browser.new_context()
    await context.grant_permissions(["camera", "microphone"], origin=origin)
    page = await context.new_page()
    await page.goto(origin + "/")
    await page.click("#start")
    await page.wait_for_function(
        "document.getElementById('status').textContent.includes('LIVE')",
        timeout=15000,
    )
    await asyncio.sleep(RAMP_UP_S)
    return str(await page.evaluate("window.presenter.streamId"))


async def _layers(origin: str, stream: str) -> dict[str, int]:
    """How many viewers are on each layer now."""
    headers = {"Authorization": "Bearer bench"}
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{origin}/api/streams/{stream}", headers=headers) as r:
            shown = await r.json()
    counts: dict[str, int] = {}
    for viewer in shown["viewer_sessions"]:
        counts[viewer["layer"]] = counts.get(viewer["layer"], 0) + 1
    return counts


async def main(
    steps: list[int], duration: float, settle: float, layers: int
) -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        clip = write_y4m(Path(scratch) / "camera.y4m", *NATIVE)
        config = Path(scratch) / "flashphoner.xml"
        config.write_text(CONFIG.format(simulcast=str(layers > 1).lower()))
        async with (
            running("broadcast", str(config)) as (pid, origin),
            launch_chromium(
                extra_args=[f"--use-file-for-fake-video-capture={clip}"]
            ) as browser,
        ):
            stream = await presenter(browser, origin)
            idle = (await idle_step(pid, duration))["server_cpu_percent"]
            print(f"0 viewers: cpu {idle:5.1f} %", flush=True)
            for viewers in steps:
                for quality in ("high", "auto") if layers > 1 else ("high",):
                    url = f"{origin}/whep/{stream}?quality={quality}"
                    step = asyncio.ensure_future(
                        crowd_step(url, pid, viewers, duration, settle)
                    )
                    await asyncio.sleep(viewers / 25 + settle + duration / 2)
                    on_layers = await _layers(origin, stream)
                    result = await step
                    cpu = result["server"]["cpu_percent"]
                    packets = result["packets_per_s"]
                    row = {
                        "quality": quality,
                        "viewers": result["viewers"],
                        "connected": result["connected"],
                        "layers": on_layers,
                        "server_cpu_percent": cpu,
                        "packets_per_s": packets,
                        "us_per_pkt_viewer": result["server"]["us_per_packet_viewer"],
                        "us_beyond_ingest": 1e4 * (cpu - idle) / max(packets, 1),
                        "loss_percent": result["loss_percent"],
                    }
                    rows.append(row)
                    print(
                        f"{quality:>4} x {viewers:3}: cpu {cpu:5.1f} %, "
                        f"{packets:7.0f} pkt/s, {row['us_per_pkt_viewer']:5.2f} "
                        f"µs/pkt-viewer ({row['us_beyond_ingest']:5.2f} beyond "
                        f"ingest), loss {row['loss_percent']:.2f} %, layers {on_layers}",
                        flush=True,
                    )
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--viewers", default="20,50", help="steps, comma-separated")
    parser.add_argument("--duration", type=float, default=15)
    parser.add_argument("--settle", type=float, default=2)
    parser.add_argument("--layers", type=int, choices=(1, 3), default=3)
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    arguments = parser.parse_args()
    steps = [int(n) for n in arguments.viewers.split(",")]
    result = asyncio.run(
        main(steps, arguments.duration, arguments.settle, arguments.layers)
    )
    if arguments.json:
        print(json.dumps(result, indent=1))
