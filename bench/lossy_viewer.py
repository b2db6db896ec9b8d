"""A lossy viewer against a clean one: how much of the picture NACK repair gives back.

One aiortc publisher (320x240 at 30 fps, aiortc's encoder) sends to `broadcast serve`;
each trial opens two aiortc viewers of it at once, one of which loses `--loss` % of the
RTP it receives at random (retransmissions too, RTCP untouched), and counts the frames
each decodes over `--seconds`. A freeze is a trial where the lossy viewer decoded
fewer than 95 % of the clean one's frames.

    unshare -rn sh -c 'ip link set lo up && python bench/lossy_viewer.py'
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
from pathlib import Path

import aiohttp
import aioice.ice

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.serve import serving, wait_http
from tests.peers import publish, watch

FREEZE_SHARE = 0.95


async def trial(
    http: aiohttp.ClientSession, url: str, loss: float, seed: int, seconds: float
) -> float:
    """Decoded frames of a lossy viewer over those of a clean one, watching together."""
    rng = random.Random(seed)
    lossy = await watch(http, url, ("video",), lambda _: rng.random() < loss)
    try:
        clean = await watch(http, url, ("video",))
    except BaseException:
        await lossy.close()
        raise
    try:
        await asyncio.gather(lossy.wait_connected(), clean.wait_connected())
        await asyncio.sleep(seconds)
        decoded = len(lossy.frames.get("video", [])), len(clean.frames.get("video", []))
    finally:
        await asyncio.gather(lossy.close(), clean.close())
    if not decoded[1]:
        raise RuntimeError("the clean viewer decoded nothing: no share to measure")
    return decoded[0] / decoded[1]


async def run(codec: str, args: argparse.Namespace) -> None:
    async with serving("", args.workers) as origin:
        await wait_http(origin)
        async with aiohttp.ClientSession() as http:
            publisher = await publish(
                http, f"{origin}/whip/lossy", video=f"video/{codec}", audio=None
            )
            await publisher.wait_connected()
            await asyncio.sleep(1)  # past the publisher's start
            try:
                shares = [
                    await trial(
                        http,
                        f"{origin}/whep/lossy",
                        args.loss / 100,
                        seed,
                        args.seconds,
                    )
                    for seed in range(args.trials)
                ]
            finally:
                await publisher.close()
    freezes = sum(share < FREEZE_SHARE for share in shares)
    print(
        f"{codec} at {args.loss:g} % loss: lossy viewer decoded "
        f"{100 * statistics.mean(shares):.1f} % of a clean viewer's frames "
        f"(mean of {len(shares)} trials of {args.seconds:g} s, worst "
        f"{100 * min(shares):.1f} %, {freezes} below {100 * FREEZE_SHARE:g} %)",
        flush=True,
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--codecs", default="H264,VP8")
    parser.add_argument("--loss", type=float, default=5.0, help="percent")
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--seconds", type=float, default=5.0, help="per trial")
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    # Our peers gather on loopback only, as the server does.
    aioice.ice.get_host_addresses = lambda **_: ["127.0.0.1"]
    for codec in args.codecs.split(","):
        await run(codec, args)


if __name__ == "__main__":
    asyncio.run(main())
