"""The web client in real Chromium: a presenter goes live, viewers watch the native picture."""

from __future__ import annotations

import os
import time
from pathlib import Path

from playwright.async_api import TimeoutError as PlaywrightTimeout

from broadcast.web_keys import REGISTRY, WORKERS
from tests.e2e.camera import NATIVE
from tests.peers import wait_for

ARTIFACTS = Path(os.environ.get("BROADCAST_TEST_ARTIFACTS", "test-artifacts"))

VIDEO_SIZE_JS = (
    "() => [document.getElementById('player').videoWidth, "
    "document.getElementById('player').videoHeight]"
)


async def text_of(page, selector: str) -> str:
    return (await page.text_content(selector)) or ""


async def wait_text(page, selector: str, text: str, timeout_ms: float) -> None:
    """Wait until `selector`'s text contains `text`; fail saying what the page shows."""
    try:
        await page.wait_for_function(
            "([s, t]) => (document.querySelector(s)?.textContent || '').includes(t)",
            arg=[selector, text],
            timeout=timeout_ms,
        )
    except PlaywrightTimeout:
        shown = await page.evaluate(
            "() => ['#status', '#message'].map(s => document.querySelector(s)?.textContent)"
        )
        raise AssertionError(
            f"{selector} never showed {text!r}; page shows {shown}"
        ) from None


async def test_presenter_goes_live_and_viewers_watch_native_resolution(
    make_server, chromium
):
    # Two processes: the first viewer is carried by the main one, the second by the
    # worker; the page, the counts and the quality reports are the same for both.
    server = await make_server(workers=2)
    ARTIFACTS.mkdir(exist_ok=True)
    origin = str(server.make_url("/")).rstrip("/")
    presenter_context = await chromium.new_context()
    # Once any permission is granted explicitly, the others must be too: Chromium then
    # treats the camera as not granted and the page gets no usable ICE candidates.
    await presenter_context.grant_permissions(
        ["camera", "microphone", "clipboard-read", "clipboard-write"], origin=origin
    )
    presenter = await presenter_context.new_page()
    await presenter.goto(origin + "/")

    await presenter.click("#start")
    started = time.monotonic()
    await wait_text(presenter, "#status", "LIVE", 3000)
    link = await presenter.input_value("#share-link")
    assert link.startswith(origin + "/watch/")
    await presenter.click("#copy-link")
    assert await presenter.evaluate("navigator.clipboard.readText()") == link
    assert (await presenter.get_attribute("#qr", "src") or "").startswith("data:image/")
    assert link in await presenter.input_value("#embed")

    viewer_context = await chromium.new_context()
    viewer = await viewer_context.new_page()
    await viewer.goto(link)
    remaining_ms = max(0.0, 10.0 - (time.monotonic() - started)) * 1000
    await viewer.wait_for_function(
        f"({VIDEO_SIZE_JS})().join('x') === '{NATIVE[0]}x{NATIVE[1]}'",
        timeout=remaining_ms,
    )
    first_frame_ms = await viewer.evaluate("window.firstFrameMs")
    print(f"viewer page open -> first frame: {first_frame_ms} ms")
    assert first_frame_ms is not None
    assert "LIVE" in await text_of(viewer, "#status")
    await wait_text(presenter, "#viewer-count", "1", 5000)

    second_context = await chromium.new_context()
    second = await second_context.new_page()
    await second.goto(link)
    await wait_text(presenter, "#viewer-count", "2", 5000)
    # Each viewer page reports what it sees; the operator gets it (admin API, metrics).
    registry = server.app[REGISTRY]
    await wait_for(
        lambda: any(
            (v.quality or {}).get("height") == NATIVE[1]
            for s in registry.streams.values()
            for v in s.viewers
        ),
        timeout=10,
        message="no viewer page reported its quality",
    )
    await second.wait_for_function(f"({VIDEO_SIZE_JS})()[0] > 0", timeout=10000)
    (worker,) = server.app[WORKERS].workers
    assert len(worker.viewers) == 1, "the second viewer is the worker's"

    await presenter.screenshot(path=str(ARTIFACTS / "presenter.png"))
    await viewer.screenshot(path=str(ARTIFACTS / "viewer.png"))

    await presenter.click("#stop")
    for page in (viewer, second):
        await wait_text(page, "#status", "ended", 5000)
    assert "LIVE" not in await text_of(presenter, "#status")
    await viewer.screenshot(path=str(ARTIFACTS / "viewer-ended.png"))


async def test_viewer_waits_for_a_broadcast_that_has_not_started(server, chromium):
    page = await (await chromium.new_context()).new_page()
    await page.goto(str(server.make_url("/watch/later")))
    await wait_text(page, "#status", "Waiting", 5000)


async def test_wrong_publish_key_is_explained(make_server, chromium):
    server = await make_server(publish_keys=("right",))
    page = await (await chromium.new_context()).new_page()
    await page.goto(str(server.make_url("/?key=wrong")))
    await page.click("#start")
    await wait_text(page, "#message", "publish key", 5000)
    assert await page.is_visible("#publish-key")
    await page.fill("#publish-key", "right")
    await page.click("#start")
    await wait_text(page, "#status", "LIVE", 5000)


async def test_presenter_reconnects_by_itself_and_viewers_keep_watching(
    server, chromium
):
    origin = str(server.make_url("/")).rstrip("/")
    presenter = await (await chromium.new_context()).new_page()
    await presenter.goto(origin + "/")
    await presenter.click("#start")
    await wait_text(presenter, "#status", "LIVE", 3000)
    link = await presenter.input_value("#share-link")
    viewer = await (await chromium.new_context()).new_page()
    await viewer.goto(link)
    await viewer.wait_for_function(f"({VIDEO_SIZE_JS})()[0] > 0", timeout=10000)

    # The presenter's connection drops (as when a network fails): the server keeps the
    # stream for the grace period, and the page publishes again under the same id.
    stream = server.app[REGISTRY].get(link.rsplit("/", 1)[1])
    first = stream.source
    await first.close("network dropped (test)", "transport")
    assert stream.state == "reconnecting"
    await wait_for(
        lambda: stream.source not in (None, first) and stream.state == "live",
        timeout=20,
        message=f"presenter did not come back: {stream.state}",
    )
    await wait_text(presenter, "#status", "LIVE", 5000)
    played = await viewer.evaluate("document.getElementById('player').currentTime")
    await viewer.wait_for_function(
        f"document.getElementById('player').currentTime > {played} + 1", timeout=10000
    )
    assert "ended" not in await text_of(viewer, "#status")


async def test_check_page_says_which_paths_work(server, chromium):
    page = await (await chromium.new_context()).new_page()
    await page.goto(str(server.make_url("/check")))
    await page.wait_for_function(
        "document.getElementById('status').dataset.done === 'true'", timeout=30000
    )
    results = await page.evaluate(
        "Object.fromEntries([...document.querySelectorAll('#results li')]"
        ".map(li => [li.id, [li.dataset.ok, li.textContent]]))"
    )
    assert results["udp"][0] == "true", results
    assert "directly over UDP" in results["udp"][1]
    assert results["events"][0] == "true" and results["camera"][0] == "true"
    assert "No TURN server" in results["turn"][1]
    assert await text_of(page, "#status") == "All good"
    await page.screenshot(path=str(ARTIFACTS / "check.png"))
