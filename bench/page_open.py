"""Viewer link to first frame: where the time goes when someone opens /watch/<id>.

One headless Chromium keeps running; each opening is a fresh browser context (a new
visitor: no cache, no connection), timed from the page itself. Phases are
milliseconds since navigation start, read through an init script that watches the
page's RTCPeerConnection, its fetches and its <video>, so the page needs no hooks:

    html       the page's HTML received
    scripts    its last script received
    dcl        DOMContentLoaded
    options    the WHEP OPTIONS answer (ICE servers) received, when the page asks
    pc         RTCPeerConnection created
    offer      createOffer resolved
    candidate  its first ICE candidate
    gathered   ICE gathering complete
    post       WHEP POST sent
    response   WHEP answer received
    ice        ICE connected
    dtls       DTLS connected (connectionState "connected")
    frame      first frame painted (requestVideoFrameCallback)
    full       the video at the publisher's full size

Sources: a browser presenter (the presenter page in the same Chromium, fake camera
1280x720 at 30 fps) and a camera (tests/camera_sim.py, pulled always-on).

    unshare -rn sh -c 'ip link set lo up && python bench/page_open.py --openings 10'
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from playwright.async_api import TimeoutError as PlaywrightTimeout

from bench.camera import wait_live
from bench.serve import serving, wait_http
from tests.camera_sim import start_camera
from tests.e2e.camera import write_y4m
from tests.e2e.chromium import launch_chromium

WIDTH, HEIGHT = 1280, 720
OPENING_TIMEOUT_MS = 15_000
PHASES = [
    "html", "scripts", "dcl", "options", "pc", "offer", "candidate", "gathered",
    "post", "response", "ice", "dtls", "frame", "full",
]  # fmt: skip

# Runs before the page's scripts in every frame of a context.
PHASES_JS = r"""
(() => {
  const phases = {};
  window.__phases = phases;
  const mark = (name) => { if (!(name in phases)) phases[name] = performance.now(); };
  const Native = window.RTCPeerConnection;
  window.RTCPeerConnection = class extends Native {
    constructor(...args) {
      super(...args);
      mark('pc');
      this.addEventListener('iceconnectionstatechange', () => {
        if (['connected', 'completed'].includes(this.iceConnectionState)) mark('ice');
      });
      this.addEventListener('icecandidate', () => mark('candidate'));
      this.addEventListener('icegatheringstatechange', () => {
        if (this.iceGatheringState === 'complete') mark('gathered');
      });
      this.addEventListener('connectionstatechange', () => {
        if (this.connectionState === 'connected') mark('dtls');
      });
    }
    async createOffer(...args) {
      const offer = await super.createOffer(...args);
      mark('offer');
      return offer;
    }
  };
  const nativeFetch = window.fetch;
  window.fetch = async (input, init) => {
    const method = (init || {}).method;
    const whep = String(input).includes('/whep/');
    if (whep && method === 'POST') mark('post');
    const response = await nativeFetch(input, init);
    if (whep && method === 'POST') mark('response');
    if (whep && method === 'OPTIONS') mark('options');
    return response;
  };
  document.addEventListener('DOMContentLoaded', () => {
    mark('dcl');
    phases.html = performance.getEntriesByType('navigation')[0].responseEnd;
    const scripts = performance.getEntriesByType('resource')
      .filter((r) => r.initiatorType === 'script' || r.name.endsWith('.js'));
    if (scripts.length) phases.scripts = Math.max(...scripts.map((r) => r.responseEnd));
    const video = document.getElementById('player');
    const watch = (now, frame) => {
      mark('frame');
      if (frame.width >= FULL_WIDTH && frame.height >= FULL_HEIGHT) mark('full');
      else video.requestVideoFrameCallback(watch);
    };
    video.requestVideoFrameCallback(watch);
  });
})();
""".replace("FULL_WIDTH", str(WIDTH)).replace("FULL_HEIGHT", str(HEIGHT))


async def open_once(browser: Any, link: str) -> dict[str, float]:
    """Open `link` in a new context; return its phases once at full size."""
    context = await browser.new_context()
    try:
        await context.add_init_script(PHASES_JS)
        page = await context.new_page()
        await page.goto(link)
        try:
            await page.wait_for_function(
                "() => window.__phases && 'full' in window.__phases",
                timeout=OPENING_TIMEOUT_MS,
            )
        except PlaywrightTimeout:
            seen = await page.evaluate(
                "() => [window.__phases, document.getElementById('status').textContent,"
                " document.getElementById('player').videoWidth]"
            )
            raise RuntimeError(f"{link} never played at full size: {seen}") from None
        return await page.evaluate("() => window.__phases")
    finally:
        await context.close()


async def measure(browser: Any, link: str, openings: int) -> list[dict[str, float]]:
    await open_once(browser, link)  # warm-up: the server's first viewer, not counted
    runs = []
    for _ in range(openings):
        runs.append(await open_once(browser, link))
        await asyncio.sleep(0.3)  # let the closed viewer leave
    return runs


async def browser_presenter(
    browser: Any, openings: int, workers: int | None
) -> list[dict[str, float]]:
    async with serving("", workers) as origin:
        await wait_http(origin)
        context = await browser.new_context()
        await context.grant_permissions(["camera", "microphone"], origin=origin)
        presenter = await context.new_page()
        await presenter.goto(origin + "/")
        await presenter.click("#start")
        await presenter.wait_for_function(
            "document.getElementById('status').textContent.includes('LIVE')",
            timeout=OPENING_TIMEOUT_MS,
        )
        link = await presenter.input_value("#share-link")
        try:
            return await measure(browser, link, openings)
        finally:
            await context.close()


async def camera(
    browser: Any, openings: int, workers: int | None
) -> list[dict[str, float]]:
    async with start_camera(width=WIDTH, height=HEIGHT) as sim:
        rtsp = f'<rtsp id="cam" url="{sim.url}" always_on="true"/>'
        async with serving(rtsp, workers) as origin:
            await wait_live(int(origin.rsplit(":", 1)[1]))
            return await measure(browser, origin + "/watch/cam", openings)


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile: p95 of 10 openings is the worst but none."""
    ordered = sorted(values)
    rank = max(1, -(-int(fraction * 100) * len(ordered) // 100))
    return ordered[rank - 1]


def report(name: str, runs: list[dict[str, float]]) -> None:
    print(f"\n{name}: {len(runs)} openings, ms since navigation start")
    print(f"  {'phase':<9} {'p50':>7} {'p95':>7} {'max':>7}")
    for phase in PHASES:
        values = [run[phase] for run in runs if phase in run]
        if values:
            print(
                f"  {phase:<9} {statistics.median(values):7.0f} "
                f"{percentile(values, 0.95):7.0f} {max(values):7.0f}"
            )
    frames = [run["frame"] for run in runs]
    print(
        f"{name}: page open -> first frame p50 {statistics.median(frames):.0f} ms, "
        f"p95 {percentile(frames, 0.95):.0f} ms"
    )


async def main(sources: list[str], openings: int, workers: int | None) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        clip = write_y4m(Path(scratch) / "camera.y4m", WIDTH, HEIGHT)
        async with launch_chromium(
            extra_args=[f"--use-file-for-fake-video-capture={clip}"]
        ) as browser:
            if "browser" in sources:
                report(
                    "browser presenter",
                    await browser_presenter(browser, openings, workers),
                )
            if "camera" in sources:
                report("camera", await camera(browser, openings, workers))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--openings", type=int, default=10)
    parser.add_argument(
        "--source", choices=["browser", "camera", "both"], default="both"
    )
    parser.add_argument(
        "--workers", type=int, default=None, help="the server's (default: its own)"
    )
    args = parser.parse_args()
    chosen = ["browser", "camera"] if args.source == "both" else [args.source]
    asyncio.run(main(chosen, max(1, min(args.openings, 200)), args.workers))
