"""Proves the headless-Chromium harness works on this machine.

Fails (never skips) if /usr/bin/chromium (apt: chromium) or playwright (pip)
is missing.  Intended to run inside ``unshare -rn`` with only ``lo`` up.
"""

import contextlib

import pytest
from aiohttp import web

from tests.e2e.chromium import OUTBOUND_VIDEO_STATS_JS, WHIP_PUBLISH_JS, launch_chromium

GUM_AND_GATHER_JS = r"""
async () => {
  const stream = await navigator.mediaDevices.getUserMedia(
      {video: {width: 1280, height: 720}, audio: true});
  const s = stream.getVideoTracks()[0].getSettings();
  const pc = new RTCPeerConnection({iceServers: []});
  for (const t of stream.getTracks()) {
    pc.addTransceiver(t, {direction: 'sendonly'});
  }
  const candidates = [];
  pc.onicecandidate = (e) => {
    if (e.candidate) candidates.push(e.candidate.candidate);
  };
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise((resolve) => {
    const timer = setTimeout(resolve, 5000);
    const check = () => {
      if (pc.iceGatheringState === 'complete') { clearTimeout(timer); resolve(); }
    };
    pc.onicegatheringstatechange = check;
    check();
  });
  const result = {
    secure: window.isSecureContext,
    width: s.width, height: s.height, frameRate: s.frameRate,
    audioTracks: stream.getAudioTracks().length,
    gathering: pc.iceGatheringState,
    candidates,
  };
  pc.close();
  stream.getTracks().forEach((t) => t.stop());
  return result;
}
"""


@contextlib.asynccontextmanager
async def static_server():
    async def index(_request):
        return web.Response(
            text="<!doctype html><title>e2e</title>", content_type="text/html"
        )

    app = web.Application()
    app.router.add_get("/", index)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/"
    finally:
        await runner.cleanup()


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_chromium_fake_camera_and_loopback_candidate():
    async with static_server() as url, launch_chromium() as browser:
        page = await browser.new_page()
        await page.goto(url)
        r = await page.evaluate(GUM_AND_GATHER_JS)
        assert r["secure"], f"{url} is not a secure context"
        assert (r["width"], r["height"]) == (1280, 720), r
        assert r["frameRate"] >= 25, r
        assert r["audioTracks"] == 1, r
        assert r["gathering"] == "complete", r
        addrs = [c.split()[4] for c in r["candidates"]]
        assert "127.0.0.1" in addrs, f"no 127.0.0.1 host candidate: {r['candidates']}"

        # The harness JS snippets must at least parse as functions.
        assert await page.evaluate(f"typeof ({WHIP_PUBLISH_JS})") == "function"
        assert await page.evaluate(f"typeof ({OUTBOUND_VIDEO_STATS_JS})") == "function"
