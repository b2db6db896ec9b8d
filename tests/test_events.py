"""`/ws` events: stream state and viewer counts pushed to pages."""

from __future__ import annotations

import asyncio

from tests.peers import publish, watch


async def next_event(ws, **match):
    """The next event whose fields include `match` (others are skipped)."""
    while True:
        event = await asyncio.wait_for(ws.receive_json(), 10)
        if all(event.get(k) == v for k, v in match.items()):
            return event


async def test_page_follows_a_stream_from_offline_to_ended(server, http):
    async with http.ws_connect(server.make_url("/ws")) as ws:
        await ws.send_json({"type": "subscribe", "stream": "ev"})
        assert await ws.receive_json() == {
            "type": "state",
            "stream": "ev",
            "state": "offline",
        }
        assert await ws.receive_json() == {
            "type": "viewers",
            "stream": "ev",
            "count": 0,
        }

        publisher = await publish(http, str(server.make_url("/whip/ev")))
        await next_event(ws, type="state", state="waiting")
        await publisher.wait_connected()
        await next_event(ws, type="state", state="live")

        viewer = await watch(http, str(server.make_url("/whep/ev")))
        await next_event(ws, type="viewers", count=1)
        second = await watch(http, str(server.make_url("/whep/ev")))
        await next_event(ws, type="viewers", count=2)
        async with http.delete(server.make_url(second.location)) as response:
            assert response.status == 200
        await next_event(ws, type="viewers", count=1)

        async with http.delete(server.make_url(publisher.location)) as response:
            assert response.status == 200
        await next_event(ws, type="state", state="ended")
        await asyncio.gather(viewer.close(), second.close(), publisher.close())


async def test_bad_messages_get_an_error_event_and_the_socket_stays(server, http):
    async with http.ws_connect(server.make_url("/ws")) as ws:
        for bad in (
            "not json",
            "[]",
            '{"type": "subscribe"}',
            '{"type": "x", "stream": "a"}',
        ):
            await ws.send_str(bad)
            event = await ws.receive_json()
            assert event["type"] == "error" and event["message"]
        await ws.send_json({"type": "subscribe", "stream": "bad id!"})
        assert (await ws.receive_json())["error"] == "bad_stream_id"
        await ws.send_json({"type": "subscribe", "stream": "fine"})
        assert (await ws.receive_json())["state"] == "offline"


async def test_pages_are_served(server, http):
    for path, marker in (("/", 'id="start"'), ("/watch/abc", 'id="player"')):
        async with http.get(server.make_url(path)) as response:
            assert response.status == 200
            assert marker in await response.text()
    async with http.get(server.make_url("/static/js/presenter.js")) as response:
        assert response.status == 200
    async with http.get(server.make_url("/watch/bad%20id")) as response:
        assert response.status == 400
    async with http.get(server.make_url("/static/../setup.cfg")) as response:
        assert response.status in (403, 404)


async def test_pages_hear_ended_when_the_server_shuts_down(server, http):
    publisher = await publish(http, str(server.make_url("/whip/down")))
    await publisher.wait_connected()
    async with http.ws_connect(server.make_url("/ws")) as ws:
        await ws.send_json({"type": "subscribe", "stream": "down"})
        await next_event(ws, type="state", state="live")
        await server.app.shutdown()
        await next_event(ws, type="state", state="ended")
    await publisher.close()
