"""The viewer page restarts ICE when its connection fails, and keeps its session.

The failure is made on the server: from a moment on, everything the viewer sends under
its current ICE credentials is dropped (its consent checks go unanswered, as when a
network goes away). Credentials from an ICE restart get through, as a new network's
would: the page must restart ICE over PATCH rather than start a new session.
"""

from __future__ import annotations

import time
from typing import Any

from broadcast.media.transport import SecureTransport
from broadcast.web_keys import REGISTRY
from tests.peers import publish, wait_for

PLAYING_JS = "() => document.getElementById('player').currentTime"


def cut_off(transport: SecureTransport) -> None:
    """Drop what reaches `transport` until its ICE credentials change."""
    connection = transport._connection
    cut_ufrag = connection.local_username
    for protocol in connection._protocols:
        deliver = protocol.datagram_received

        def datagram_received(data: Any, addr: Any, deliver: Any = deliver) -> None:
            if connection.local_username != cut_ufrag:
                deliver(data, addr)

        protocol.datagram_received = datagram_received  # type: ignore[method-assign]


async def playing(page, seconds: float = 1.0, timeout: float = 15) -> None:
    """The picture advances by `seconds` within `timeout`."""
    start = await page.evaluate(PLAYING_JS)
    deadline = time.monotonic() + timeout
    while await page.evaluate(PLAYING_JS) < start + seconds:
        assert time.monotonic() < deadline, "the picture stopped"
        await page.wait_for_timeout(100)


async def test_viewer_page_restarts_ice_on_the_same_session(server, http, chromium):
    registry = server.app[REGISTRY]
    publisher = await publish(http, str(server.make_url("/whip/ice")))
    await publisher.wait_connected()
    page = await (await chromium.new_context()).new_page()
    requests: list[tuple[str, str, int]] = []
    page.on(
        "response",
        lambda r: requests.append((r.request.method, r.url, r.status)),
    )
    await page.goto(str(server.make_url("/watch/ice")))
    stream = registry.get("ice")
    await wait_for(lambda: len(stream.viewers) == 1, message="no viewer")
    (viewer,) = stream.viewers
    await playing(page)
    before = viewer.remote_ufrag

    assert isinstance(viewer.transport, SecureTransport)
    cut_off(viewer.transport)
    cut_at = time.monotonic()
    await wait_for(
        lambda: ("PATCH", 200) in {(m, s) for m, _, s in requests},
        timeout=40,
        message="the page did not restart ICE",
    )
    print(f"ICE restart asked {time.monotonic() - cut_at:.1f} s after the cut")
    # Past the page's RESTART_MS (5 s): a restart that did not connect is a new POST.
    await page.wait_for_timeout(6000)
    await playing(page)
    connection = viewer.transport._connection
    assert connection._nominated[1] in connection._check_list, "not the new checks"
    assert list(stream.viewers) == [viewer] and not viewer.closed
    assert viewer.remote_ufrag != before
    posts = [url for method, url, _ in requests if method == "POST"]
    assert len(posts) == 1, posts  # no new session
    await page.close()
    await publisher.close()
