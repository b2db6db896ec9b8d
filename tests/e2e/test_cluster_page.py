"""A cluster in real Chromium: the link shared from the origin plays from an edge."""

from __future__ import annotations

from tests.e2e.test_viewer_page import open_viewer, plays_at_full_size, trickled
from tests.e2e.test_web_client import wait_text
from tests.test_cluster import running_cluster


async def test_a_link_opened_on_the_origin_plays_from_an_edge(tmp_path, chromium):
    async with running_cluster(tmp_path, 1) as cluster:
        (edge,) = cluster.edges
        presenter = await (await chromium.new_context()).new_page()
        await presenter.goto(cluster.origin.url + "/")
        await presenter.click("#start")
        await wait_text(presenter, "#status", "LIVE", 10000)
        link = await presenter.input_value("#share-link")
        assert link.startswith(cluster.origin.url + "/watch/"), link

        viewer, requests = await open_viewer(chromium, link)
        await plays_at_full_size(viewer, "via an edge")
        posts = [url for _, method, url, _ in requests if method == "POST"]
        assert posts[0].startswith(cluster.origin.url + "/whep/"), posts
        assert any(url.startswith(edge.url + "/whep/") for url in posts), posts
        # The session lives on the edge: its trickle PATCH goes there and is taken.
        assert await trickled(requests), requests
        patches = [url for _, method, url, _ in requests if method == "PATCH"]
        assert patches and all(url.startswith(edge.url) for url in patches), patches
        await wait_text(presenter, "#viewer-count", "1", 10000)
