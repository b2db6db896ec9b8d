"""The operator console `/admin` in Chromium: sign in with the admin key, see live
streams with thumbnails and viewers, record and play back, disconnect a viewer, add and
remove a camera, end a stream; it fits a phone."""

from __future__ import annotations

import asyncio

from broadcast.web_keys import REGISTRY
from tests.camera_sim import start_camera
from tests.e2e.test_web_client import wait_text
from tests.peers import publish, wait_for, watch

KEY = "adm1n"


def card(stream_id: str) -> str:
    return f'#streams [data-stream="{stream_id}"]'


async def sign_in(page, key: str) -> None:
    await page.fill("#admin-key", key)
    await page.click("#sign-in")


async def test_the_console_runs_a_live_stream(make_server, http, chromium, tmp_path):
    server = await make_server(admin_key=KEY, recording_dir=str(tmp_path))
    publisher = await publish(http, str(server.make_url("/whip/s")))
    page = await (await chromium.new_context()).new_page()
    await page.goto(str(server.make_url("/admin")))

    await sign_in(page, "wrong")
    await wait_text(page, "#admin-status", "admin key is not right", 5000)
    assert await page.is_hidden("#console")
    await sign_in(page, KEY)
    await page.wait_for_selector(card("s"), timeout=10000)

    # A real picture: the stream's keyframe decoded by the browser at 320 wide.
    await page.wait_for_function(
        "(s) => document.querySelector(s + ' .thumb').naturalWidth === 320",
        arg=card("s"),
        timeout=15000,
    )
    assert await page.text_content(f"{card('s')} .state") == "live"
    assert await page.text_content(f"{card('s')} .codecs") == "video/VP8, audio/opus"

    # A viewer joins: its count comes over /ws, and it can be disconnected.
    viewer = await watch(http, str(server.make_url("/whep/s")))
    await wait_text(page, f"{card('s')} .viewers", "1", 10000)
    await page.click(f"{card('s')} summary")
    await page.click(f"{card('s')} .kick", timeout=10000)
    stream = server.app[REGISTRY].get("s")
    await wait_for(lambda: not stream.viewers, timeout=10, message="not kicked")
    await wait_text(page, f"{card('s')} .viewers", "0", 10000)

    # Record, stop, find it done in the list, play it back.
    await page.click(f"{card('s')} .record")
    await wait_text(page, f"{card('s')} .recording-state", "recording", 10000)
    await asyncio.sleep(3)
    await page.click(f"{card('s')} .stop-recording")
    done = '#recordings [data-file^="s-"]'
    await page.wait_for_selector(done, timeout=10000)
    await wait_text(page, done, "done", 10000)
    await page.click(f"{done} .play")
    await page.wait_for_function(
        "() => { const v = document.getElementById('recording-player');"
        " return v.currentTime > 0.5 && v.videoWidth > 0; }",
        timeout=15000,
    )

    # End the stream: it leaves the console, the publisher is told.
    await page.click(f"{card('s')} .end-stream")
    await page.wait_for_selector(card("s"), state="detached", timeout=10000)
    assert server.app[REGISTRY].get("s") is None
    await viewer.close()
    await publisher.close()


async def test_the_console_adds_and_removes_a_camera_and_fits_a_phone(
    make_server, chromium
):
    server = await make_server(admin_key=KEY)
    phone = await chromium.new_context(
        viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True
    )
    page = await phone.new_page()
    await page.goto(str(server.make_url("/admin")))
    await sign_in(page, KEY)
    await page.wait_for_selector("#console", state="visible")
    async with start_camera() as camera:
        await page.fill("#camera-id", "gate")
        await page.fill("#camera-url", camera.url)
        await page.check("#camera-always-on")
        await page.click("#add-camera")
        await page.wait_for_selector(card("gate"), timeout=10000)
        await page.wait_for_function(
            "(s) => document.querySelector(s + ' .thumb').naturalWidth === 320",
            arg=card("gate"),
            timeout=20000,
        )
        assert "camera rtsp://127.0.0.1" in (
            await page.text_content(f"{card('gate')} .source") or ""
        )
        assert await page.evaluate("document.documentElement.scrollWidth") <= 390
        await page.click(f"{card('gate')} .remove-camera")
        await page.wait_for_selector(card("gate"), state="detached", timeout=10000)
    assert server.app[REGISTRY].get("gate") is None
    # The key is kept for this tab: a reload stays signed in.
    await page.reload()
    await page.wait_for_selector("#console", state="visible", timeout=5000)
