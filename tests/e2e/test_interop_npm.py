"""Third-party WHIP/WHEP browser clients, vendored from npm, against our server.

whip-whep (Medooze) publishes and plays, @eyevinn/whip-web-client publishes and
@eyevinn/webrtc-player plays (tests/e2e/vendor/README.md), in headless Chromium, from a
page of another origin (CORS). Each does something of its own, and we follow it: an
offer without candidates and every candidate trickled after the POST, one PATCH per
candidate with an `ETag` request header and component 0, a PATCH without `If-Match`, a
connection closed before its DELETE. Third-party players see the end by their DTLS
transport closing (ICE calls the connection failed only 15-20 s later).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urljoin, urlsplit

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestServer

from broadcast.app import create_app
from broadcast.config import Config
from broadcast.web_keys import REGISTRY
from tests.e2e.test_web_client import wait_text
from tests.peers import wait_for

if TYPE_CHECKING:
    from playwright.async_api import Browser, ConsoleMessage, Page, Request, Response

pytestmark = pytest.mark.asyncio(loop_scope="module")

HERE = Path(__file__).parent
ADMIN = {"Authorization": "Bearer admin-key"}
# Far below the 15-20 s Chromium's ICE takes to call a silent connection failed.
END_SEEN_MS = 3000


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server() -> AsyncIterator[TestServer]:
    """One server for the module; each test publishes a stream of its own."""
    server = TestServer(
        create_app(
            Config(host="127.0.0.1", media_port=0, workers=1, admin_key="admin-key")
        ),
        host="127.0.0.1",
    )
    await server.start_server()
    yield server
    await server.close()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def harness() -> AsyncIterator[str]:
    """The harness page and the vendored libraries, from another port: another origin."""

    async def page(_: web.Request) -> web.FileResponse:
        return web.FileResponse(HERE / "interop.html")

    app = web.Application()
    app.router.add_get("/", page)
    app.router.add_static("/vendor", HERE / "vendor")
    site = TestServer(app, host="127.0.0.1")
    await site.start_server()
    yield str(site.make_url("/"))
    await site.close()


@dataclass
class Exchange:
    """A request from the harness page to the server, and its answer."""

    method: str
    url: str
    headers: dict[str, str]
    body: str
    status: int | str | None = None  # str: why it failed (CORS, network)
    answer_headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Harness:
    """The harness page, what it sent the server, and what the browser complained of."""

    page: Page
    api: str
    exchanges: list[Exchange] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)

    def to(self, method: str, path_prefix: str) -> list[Exchange]:
        return [
            e
            for e in self.exchanges
            if e.method == method and urlsplit(e.url).path.startswith(path_prefix)
        ]

    def created(self, endpoint: str) -> Exchange:
        """The POST to `endpoint` and our answer: the session's Location and ETag."""
        (post,) = self.to("POST", endpoint)
        assert post.status == 201, post
        return post

    def resource(self, endpoint: str) -> str:
        """The session URL, as a client must resolve our `Location` (RFC 3986)."""
        post = self.created(endpoint)
        return urljoin(post.url, post.answer_headers["location"])

    async def settled(self) -> None:
        """Every request seen so far has its answer (Playwright reports them late)."""
        await wait_for(lambda: all(e.status for e in self.exchanges))

    async def call(self, function: str, name: str, path: str = "") -> None:
        await self.page.evaluate(
            "([f, n, u]) => window.interop[f](n, u)", [function, name, self.api + path]
        )

    async def plays(self, name: str) -> None:
        """The <video> of `name` paints frame after frame of the camera's picture."""
        await self.page.wait_for_function(
            f"window.interop.log[{name!r}].frames >= 10", timeout=10000
        )
        width = await self.page.evaluate(
            f"document.getElementById({name!r}).videoWidth"
        )
        assert width > 0

    async def sees_the_end(self, name: str) -> None:
        """The server closed the player's DTLS transport, not ICE timing out later."""
        await self.page.wait_for_function(
            f"window.interop.log[{name!r}].events.includes('dtls closed')",
            timeout=END_SEEN_MS,
        )


async def open_harness(chromium: Browser, harness: str, api: str) -> Harness:
    """The harness page in a fresh context, every request to `api` recorded."""
    page = await (await chromium.new_context()).new_page()
    opened = Harness(page, api)
    pending: dict[Request, Exchange] = {}

    def request(r: Request) -> None:
        if r.url.startswith(api):
            pending[r] = Exchange(r.method, r.url, r.headers, r.post_data or "")
            opened.exchanges.append(pending[r])

    async def response(r: Response) -> None:
        exchange = pending.pop(r.request, None)
        if exchange is not None:
            exchange.answer_headers = await r.all_headers()
            exchange.status = r.status  # last: the exchange is complete

    def failed(r: Request) -> None:
        exchange = pending.pop(r, None)
        if exchange is not None:
            exchange.status = f"failed: {r.failure}"

    page.on("request", request)
    page.on("response", response)
    page.on("requestfailed", failed)

    def console(m: ConsoleMessage) -> None:
        if m.type == "error":
            opened.console_errors.append(m.text)

    page.on("console", console)
    page.on("pageerror", lambda e: opened.console_errors.append(str(e)))
    await page.goto(harness)
    await page.wait_for_function("window.interopReady === true")
    return opened


async def trickled_after_the_post(h: Harness, endpoint: str) -> list[Exchange]:
    """The PATCHes of the session created at `endpoint`; the offer had no candidate."""
    await wait_for(
        lambda: any("a=candidate" in e.body for e in h.to("PATCH", endpoint)),
        message=f"no candidate trickled to {endpoint}",
    )
    await h.settled()
    assert "a=candidate" not in h.created(endpoint).body
    patches = [e for e in h.to("PATCH", endpoint) if e.url == h.resource(endpoint)]
    assert patches and patches == h.to("PATCH", endpoint), "PATCH not to our Location"
    assert {e.status for e in patches} == {204}
    assert any("a=candidate" in e.body for e in patches)
    return patches


async def ended_by_delete(
    h: Harness, http: aiohttp.ClientSession, endpoint: str
) -> None:
    """The client's DELETE went to our Location and ended the broadcast then."""
    await h.settled()
    (delete,) = h.to("DELETE", endpoint)
    assert (delete.url, delete.status) == (h.resource(endpoint), 200)
    stream_id = endpoint.rsplit("/", 1)[1]
    async with http.get(f"{h.api}/api/streams", headers=ADMIN) as r:
        assert stream_id not in {s["id"] for s in (await r.json())["streams"]}


async def test_whip_whep_publishes_and_every_client_plays_until_its_delete(
    server, harness, module_chromium
):
    api = str(server.make_url("/")).rstrip("/")
    h = await open_harness(module_chromium, harness, api)
    await h.call("publishMedooze", "publisher", "/whip/medooze")
    patches = await trickled_after_the_post(h, "/whip/medooze")
    assert any("a=end-of-candidates" in e.body for e in patches)
    assert {e.headers.get("if-match") for e in patches} == {
        h.created("/whip/medooze").answer_headers["etag"]
    }

    await h.call("watchMedooze", "whep", "/whep/medooze")
    # whip-whep's WHEP client trickles too, without If-Match (it keeps no ETag).
    whep_patches = await trickled_after_the_post(h, "/whep/medooze")
    assert all("if-match" not in e.headers for e in whep_patches)
    await h.call("watchEyevinn", "player", "/whep/medooze")
    viewer_page = await (await module_chromium.new_context()).new_page()
    await viewer_page.goto(f"{api}/watch/medooze")
    await h.plays("whep")
    await h.plays("player")
    await wait_text(viewer_page, "#status", "LIVE", 5000)
    # @eyevinn/webrtc-player gathers first: its offer carries the candidates, no PATCH.
    await h.settled()
    assert "a=candidate" in h.to("POST", "/whep/medooze")[1].body
    assert h.to("PATCH", "/whep/medooze") == whep_patches

    # stop() closes the connection, then sends DELETE: still a hang-up, not a drop.
    await h.call("end", "publisher")
    async with aiohttp.ClientSession() as http:
        await ended_by_delete(h, http, "/whip/medooze")
    await wait_text(viewer_page, "#status", "ended", END_SEEN_MS)
    await h.sees_the_end("whep")
    await h.sees_the_end("player")
    assert h.console_errors == []
    await h.page.context.close()
    await viewer_page.context.close()


async def test_eyevinn_publishes_trickling_each_candidate_and_viewers_leave(
    server, harness, module_chromium
):
    api = str(server.make_url("/")).rstrip("/")
    registry = server.app[REGISTRY]
    h = await open_harness(module_chromium, harness, api)
    await h.call("publishEyevinn", "publisher", "/whip/eyevinn")
    # It trickles only having read PATCH among our Access-Control-Allow-Methods
    # (exposed to scripts of other origins), and names our ETag in an ETag header.
    patches = await trickled_after_the_post(h, "/whip/eyevinn")
    (options,) = h.to("OPTIONS", "/whip/eyevinn")
    assert options.status == 204
    etag = h.created("/whip/eyevinn").answer_headers["etag"]
    assert {e.headers.get("etag") for e in patches} == {etag}

    await h.call("watchMedooze", "whep", "/whep/eyevinn")
    await h.call("watchEyevinn", "player", "/whep/eyevinn")
    await h.plays("whep")
    await h.plays("player")
    stream = registry.streams["eyevinn"]
    assert len(stream.viewers) == 2

    await h.call("end", "whep")  # closes, then DELETE
    await wait_for(lambda: len(stream.viewers) == 1, message="whep stayed")
    await h.call("end", "player")  # DELETE, then closes
    await wait_for(lambda: not stream.viewers, message="player stayed")
    await h.settled()
    deletes = h.to("DELETE", "/whep/eyevinn")
    assert [e.status for e in deletes] == [200, 200]
    assert sorted(e.url for e in deletes) == sorted(
        urljoin(e.url, e.answer_headers["location"]) for e in h.to("POST", "/whep/")
    )

    await h.call("end", "publisher")
    async with aiohttp.ClientSession() as http:
        await ended_by_delete(h, http, "/whip/eyevinn")
    assert h.console_errors == []
    await h.page.context.close()
