"""Server CPU per pulled camera: H.264 passthrough, audio as is or AAC made Opus.

PCMA, PCMU and Opus are forwarded as they come; AAC is transcoded to Opus.

Runs a simulated camera (gst-rtsp-server, tests/camera_sim.py) and `broadcast serve`
pulling it always-on with no viewer, then measures the server process's CPU.

    unshare -rn sh -c 'ip link set lo up && python bench/camera.py --audio aac'
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.fanout import free_port
from broadcast.loadtest.server_usage import process_cpu_s as cpu_seconds
from tests.camera_sim import start_camera


async def main(audio: str | None, width: int, height: int, duration: float) -> None:
    async with start_camera(audio=audio, width=width, height=height) as camera:  # type: ignore[arg-type]
        port = free_port()
        with tempfile.NamedTemporaryFile("w", suffix=".xml") as config:
            config.write(
                f"""<flashphoner><server><bind>127.0.0.1</bind>
                <http_port>{port}</http_port></server><auth><admin_key>k</admin_key></auth>
                <rtsp id="cam" url="{camera.url}" always_on="true"/></flashphoner>"""
            )
            config.flush()
            server = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "broadcast",
                "serve",
                "--config",
                config.name,
                "--log-level",
                "warning",
            )
            try:
                await wait_live(port)
                await asyncio.sleep(2)
                cpu0, t0 = cpu_seconds(server.pid), time.monotonic()
                await asyncio.sleep(duration)
                cpu1, t1 = cpu_seconds(server.pid), time.monotonic()
                share = 100 * (cpu1 - cpu0) / (t1 - t0)
                print(
                    f"camera {width}x{height} H.264 + {audio or 'no audio'}: "
                    f"server CPU {share:.1f} % of a core over {t1 - t0:.0f} s"
                )
            finally:
                server.terminate()
                await server.wait()


async def wait_live(port: int) -> None:
    url = f"http://127.0.0.1:{port}/api/streams/cam"
    async with aiohttp.ClientSession(headers={"Authorization": "Bearer k"}) as http:
        for _ in range(200):
            try:
                async with http.get(url) as response:
                    if (
                        response.status == 200
                        and (await response.json())["state"] == "live"
                    ):
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError("the camera never went live")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--audio", choices=["pcma", "pcmu", "opus", "aac"], default=None
    )
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--duration", type=float, default=20.0)
    args = parser.parse_args()
    asyncio.run(main(args.audio, args.width, args.height, min(args.duration, 300)))
