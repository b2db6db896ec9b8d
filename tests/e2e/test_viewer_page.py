"""The viewer page in real Chromium: a link plays at once, and a busy server is waited for."""

from __future__ import annotations

import asyncio
import socket
import time

import aiohttp

from broadcast.config import RtspCamera, RtspOptions
from broadcast.web_keys import REGISTRY
from tests.camera_sim import start_camera
from tests.e2e.camera import NATIVE
from tests.e2e.test_web_client import VIDEO_SIZE_JS, wait_text
from tests.peers import publish, wait_for, watch

# Generous: the page plays in ~0.3-0.5 s on a shared 2-core machine (bench/page_open.py).
FIRST_FRAME_MAX_MS = 3000
# The server's Retry-After for a stream at its viewer limit (registry._full).
SERVER_FULL_RETRY_AFTER_S = 10


async def open_viewer(chromium, link: str):
    """Open `link` in a fresh context; return the page and the requests it made."""
    page = await (await chromium.new_context()).new_page()
    requests: list[tuple[float, str, str, str]] = []
    page.on(
        "request",
        lambda r: requests.append(
            (time.monotonic(), r.method, r.url, r.post_data or "")
        ),
    )
    page.on(
        "response",
        lambda r: requests.append(
            (time.monotonic(), "answer", r.request.method, str(r.status))
        ),
    )
    await page.goto(link)
    return page, requests


async def plays_at_full_size(page, source: str) -> None:
    await page.wait_for_function(
        f"({VIDEO_SIZE_JS})().join('x') === '{NATIVE[0]}x{NATIVE[1]}'", timeout=10000
    )
    # The size shows once the frame is decoded; the page's frame callback (which sets
    # firstFrameMs) runs when it is presented, a moment later on a busy machine.
    await page.wait_for_function("window.firstFrameMs !== undefined", timeout=5000)
    first_frame_ms = await page.evaluate("window.firstFrameMs")
    print(f"{source}: viewer page open -> first frame {first_frame_ms} ms")
    assert first_frame_ms is not None and first_frame_ms < FIRST_FRAME_MAX_MS


async def trickled(requests: list[tuple[float, str, str, str]]) -> bool:
    """The offer went before gathering ended: a PATCH ends the candidates, taken."""
    await wait_for(
        lambda: (
            ("answer", "PATCH") in {(kind, method) for _, kind, method, _ in requests}
        ),
        message="no PATCH was answered",
    )
    return any(
        method == "PATCH" and "a=end-of-candidates" in body
        for _, method, _, body in requests
    ) and any(
        (kind, method, status) == ("answer", "PATCH", "204")
        for _, kind, method, status in requests
    )


async def test_a_browser_presenters_link_plays_at_once_at_full_size(server, chromium):
    origin = str(server.make_url("/")).rstrip("/")
    presenter = await (await chromium.new_context()).new_page()
    await presenter.goto(origin + "/")
    await presenter.click("#start")
    await wait_text(presenter, "#status", "LIVE", 5000)
    link = await presenter.input_value("#share-link")

    viewer, requests = await open_viewer(chromium, link)
    await plays_at_full_size(viewer, "browser presenter")
    # Waiting for Chromium to finish gathering took 100-150 ms of every opening.
    assert await trickled(requests), requests


async def test_a_cameras_link_plays_at_once_at_full_size(make_server, chromium):
    async with start_camera(width=NATIVE[0], height=NATIVE[1]) as camera:
        options = RtspOptions(always_on=True)
        server = await make_server(cameras=(RtspCamera("cam", camera.url, options),))
        origin = str(server.make_url("/")).rstrip("/")
        stream = server.app[REGISTRY].get("cam")
        await wait_for(lambda: stream.state == "live", 15, "the camera never went live")
        viewer, requests = await open_viewer(chromium, origin + "/watch/cam")
        await plays_at_full_size(viewer, "camera")
        assert await trickled(requests), requests


async def test_viewer_page_waits_while_the_server_is_busy_then_plays(
    make_server, chromium
):
    server = await make_server(max_viewers_per_stream=1)
    async with aiohttp.ClientSession() as http:
        publisher = await publish(http, str(server.make_url("/whip/busy")))
        await publisher.wait_connected()
        holder = await watch(http, str(server.make_url("/whep/busy")))
        await holder.wait_connected()

        page, requests = await open_viewer(
            chromium, str(server.make_url("/watch/busy"))
        )
        await wait_text(page, "#status", "busy, retrying", 5000)
        refused_at = max(t for t, m, _, _ in requests if m == "POST")
        # The slot frees; the page comes back on its own, no sooner than asked.
        async with http.delete(str(server.make_url(holder.location))) as response:
            assert response.status == 200
        await holder.close()
        started = time.monotonic()
        await page.wait_for_function(f"({VIDEO_SIZE_JS})()[0] > 0", timeout=25000)
        print(
            f"busy viewer played {time.monotonic() - started:.1f} s after the slot freed"
        )
        posts = [t for t, m, _, _ in requests if m == "POST"]
        assert len(posts) == 2, f"{len(posts)} offers: the page did not wait"
        assert posts[1] - refused_at >= SERVER_FULL_RETRY_AFTER_S - 0.5
        await wait_text(page, "#status", "LIVE", 5000)
        await publisher.close()


async def test_viewer_page_gathers_with_the_servers_turn_server(make_server, chromium):
    # The page makes its offer while the OPTIONS naming the ICE servers is on its way;
    # they must still be used: Chromium asks the TURN server for an allocation.
    turn = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    turn.bind(("127.0.0.1", 0))
    turn.setblocking(False)
    port = turn.getsockname()[1]
    server = await make_server(
        turn_servers=(f"turn:127.0.0.1:{port}?transport=udp",), turn_secret="s"
    )
    async with aiohttp.ClientSession() as http:
        publisher = await publish(http, str(server.make_url("/whip/relay")))
        await publisher.wait_connected()
        page, _ = await open_viewer(chromium, str(server.make_url("/watch/relay")))
        await page.wait_for_function(f"({VIDEO_SIZE_JS})()[0] > 0", timeout=10000)
        loop = asyncio.get_running_loop()
        try:
            request = await asyncio.wait_for(loop.sock_recv(turn, 2048), 5)
        finally:
            turn.close()
        # A STUN request (RFC 8489 §5: its magic cookie, class bits 0): Chromium asks
        # a TURN server for a Binding (its reflexive address), then an Allocate.
        message_type = int.from_bytes(request[:2], "big")
        assert request[4:8] == b"\x21\x12\xa4\x42" and not message_type & 0x0110
        await publisher.close()
