"""A real Chromium publisher reaches its camera's native resolution, and viewers see it."""

from __future__ import annotations

import asyncio
import time

import pytest

from broadcast.web_keys import REGISTRY
from tests.e2e.chromium import OUTBOUND_VIDEO_STATS_JS, WHIP_PUBLISH_JS, launch_chromium
from tests.peers import wait_for, watch

NATIVE = (1280, 720)
# The bar: a 1280x720 camera is sent at 1280x720 within 5 s of connecting. Our presenter
# page asks Chrome to keep resolution and gets it in well under a second. A WHIP client
# left in Chrome's default "balanced" mode gets there in ~2 s on an idle machine, but
# Chrome's own CPU adaptation can delay it on a loaded one: it gets 10 s here.
WITHIN_S = {"maintain-resolution": 5.0, None: 10.0}


@pytest.mark.parametrize("degradation", ["maintain-resolution", None])
async def test_chromium_sends_native_resolution_quickly(server, http, degradation):
    async with launch_chromium() as browser:
        page = await browser.new_page()
        await page.goto(str(server.make_url("/healthz")))  # an http://127.0.0.1 origin
        status = await page.evaluate(
            WHIP_PUBLISH_JS,
            {
                "whipUrl": str(server.make_url("/whip/chrome")),
                "width": NATIVE[0],
                "height": NATIVE[1],
                "degradation": degradation,
            },
        )
        assert status == 201, await page.evaluate("window.whipError")
        for _ in range(200):
            if await page.evaluate("window.pc.connectionState") == "connected":
                break
            await asyncio.sleep(0.05)
        connected = time.monotonic()
        history = []
        while time.monotonic() - connected < WITHIN_S[degradation]:
            stats = await page.evaluate(OUTBOUND_VIDEO_STATS_JS)
            history.append(stats)
            if stats and (stats["frameWidth"], stats["frameHeight"]) == NATIVE:
                break
            await asyncio.sleep(0.25)
        else:
            raise AssertionError(
                f"not {NATIVE} within {WITHIN_S[degradation]} s: {history}"
            )

        # A viewer receives (and decodes) the native resolution too.
        viewer = await watch(http, str(server.make_url("/whep/chrome")), ("video",))
        await viewer.wait_connected()
        await wait_for(
            lambda: any(
                (f.width, f.height) == NATIVE for f in viewer.frames.get("video", [])
            ),
            timeout=10,
            message="the viewer never decoded a 1280x720 frame",
        )
        track = server.app[REGISTRY].get("chrome").tracks["video"]
        assert track.codec.mimeType.lower() in ("video/vp8", "video/h264")
        await viewer.close()
        await page.evaluate("window.pc.close()")
