"""The presenter page explains itself: HTTPS first on an insecure page, camera off and
microphone muted during a broadcast (viewers told why), devices remembered, every
control named and reachable by keyboard."""

from __future__ import annotations

import subprocess

import numpy
import pytest
from aiohttp.test_utils import TestServer

from broadcast.app import create_app
from broadcast.config import Config, RtspCamera
from broadcast.web_keys import REGISTRY
from tests.camera_sim import start_camera
from tests.e2e.test_simulcast import start_presenter
from tests.e2e.test_web_client import wait_text
from tests.peers import publish, wait_for, watch

# An address of the test's network namespace that is not localhost: http:// there is
# an insecure origin to the browser, as a server's public IP is.
NOT_LOCALHOST = "10.213.0.1"

NAMELESS_CONTROLS_JS = """() => [...document.querySelectorAll('button, select, input, textarea')]
  .filter((el) => el.offsetParent !== null)
  .filter((el) => !((el.labels && [...el.labels].some((l) => l.textContent.trim()))
    || el.getAttribute('aria-label') || el.textContent.trim()))
  .map((el) => el.id || el.outerHTML)"""


def mean_luma(frame) -> float:
    return float(numpy.asarray(frame.to_ndarray(format="gray")).mean())


async def test_camera_off_and_microphone_muted_reach_the_viewers(
    make_server, http, chromium
):
    server = await make_server()
    origin = str(server.make_url("/")).rstrip("/")
    stream_id = await start_presenter(server, chromium)
    presenter = chromium.contexts[-1].pages[-1]
    viewer_page = await (await chromium.new_context()).new_page()
    await viewer_page.goto(f"{origin}/watch/{stream_id}")
    await wait_text(viewer_page, "#status", "LIVE", 10000)
    viewer = await watch(http, f"{origin}/whep/{stream_id}", ("video",))
    await wait_for(lambda: len(viewer.frames.get("video", [])) > 10, timeout=15)
    assert mean_luma(viewer.frames["video"][-1]) > 40  # the fake camera's gradient

    await presenter.click("#camera-off")
    assert await presenter.get_attribute("#camera-off", "aria-pressed") == "true"
    await wait_text(viewer_page, "#presenter-media", "turned the camera off", 5000)
    # The broadcast goes on, in black.
    seen = len(viewer.frames["video"])
    await wait_for(
        lambda: (
            len(viewer.frames["video"]) > seen + 5
            and mean_luma(viewer.frames["video"][-1]) < 25
        ),
        timeout=10,
        message="no black frames after the camera was turned off",
    )
    assert server.app[REGISTRY].get(stream_id).state == "live"

    await presenter.click("#mute-mic")
    await wait_text(viewer_page, "#presenter-media", "muted the microphone", 5000)
    # A page that opens now hears it at once.
    late = await (await chromium.new_context()).new_page()
    await late.goto(f"{origin}/watch/{stream_id}")
    await wait_text(late, "#presenter-media", "turned the camera off and muted", 5000)

    await presenter.click("#camera-off")
    await presenter.click("#mute-mic")
    await viewer_page.wait_for_selector("#presenter-media", state="hidden")
    await wait_for(
        lambda: mean_luma(viewer.frames["video"][-1]) > 40,
        timeout=10,
        message="the picture did not come back",
    )
    await viewer.close()


async def test_presenter_messages_need_the_streams_own_session(make_server, http):
    """Only the stream's publisher may say its camera is off: anyone else (another
    session's id, a camera stream's id) gets an error event and viewers hear nothing."""
    async with start_camera() as camera:
        server = await make_server(cameras=(RtspCamera("cam", camera.url),))
        publisher = await publish(http, str(server.make_url("/whip/s")))
        url = str(server.make_url("/ws"))
        async with http.ws_connect(url) as ws:
            for stream_id, session in (("nobody", "x"), ("s", "x"), ("cam", "cam")):
                await ws.send_json(
                    {
                        "type": "presenter",
                        "stream": stream_id,
                        "session": session,
                        "camera": False,
                        "microphone": True,
                    }
                )
                event = await ws.receive_json(timeout=5)
                assert (event["type"], event["error"]) == (
                    "error",
                    "bad_presenter_state",
                ), stream_id
        for stream_id in ("s", "cam"):
            media = server.app[REGISTRY].get(stream_id).presenter_media
            assert media == {"camera": True, "microphone": True}
        await publisher.close()


def _add_address() -> bool:
    """Give `lo` a second address (possible inside the test's network namespace)."""
    done = subprocess.run(
        ["ip", "addr", "add", f"{NOT_LOCALHOST}/32", "dev", "lo"],
        capture_output=True,
        check=False,
    )
    return done.returncode == 0 or b"File exists" in done.stderr


async def test_an_insecure_page_says_https_first(chromium):
    if not _add_address():
        pytest.skip("cannot add an address to lo outside a network namespace")
    server = TestServer(
        create_app(Config(host=NOT_LOCALHOST, media_port=0, workers=1)),
        host=NOT_LOCALHOST,
    )
    await server.start_server()
    try:
        page = await (await chromium.new_context()).new_page()
        await page.goto(str(server.make_url("/")))
        notice = page.locator("#needs-https")
        await notice.wait_for(state="visible", timeout=5000)
        text = await notice.text_content() or ""
        assert "https://" in text and "--letsencrypt" in text
        assert f"http://{NOT_LOCALHOST}" in text
        assert await page.is_disabled("#start")
        # It comes before anything else on the page.
        first = await page.evaluate(
            "() => document.querySelector('body > :not(script):not(header)').id"
        )
        assert first == "needs-https"
    finally:
        await server.close()


async def test_devices_are_remembered_and_every_control_is_named(make_server, chromium):
    server = await make_server()
    origin = str(server.make_url("/")).rstrip("/")
    context = await chromium.new_context()
    await context.grant_permissions(["camera", "microphone"], origin=origin)
    page = await context.new_page()
    await page.goto(origin + "/")
    assert await page.evaluate(NAMELESS_CONTROLS_JS) == []
    # Keyboard: Tab reaches Start, and Enter starts.
    for _ in range(20):
        await page.keyboard.press("Tab")
        if await page.evaluate("document.activeElement.id") == "start":
            break
    else:
        raise AssertionError("Tab never reached #start")
    await page.keyboard.press("Enter")
    await wait_text(page, "#status", "LIVE", 10000)
    assert await page.evaluate(NAMELESS_CONTROLS_JS) == []
    microphones = await page.eval_on_selector_all(
        "#mic-select option", "(options) => options.map((o) => o.value)"
    )
    assert len(microphones) >= 2, microphones  # the default and a device
    await page.select_option("#mic-select", microphones[-1])
    await page.click("#stop")
    await page.reload()  # the page lists devices as it loads (permission granted)
    await page.wait_for_function(
        "(v) => document.getElementById('mic-select').value === v",
        arg=microphones[-1],
        timeout=5000,
    )
