"""Admin REST and Prometheus metrics: what an operator sees and can do."""

from __future__ import annotations

import asyncio

from tests.peers import publish, wait_for, watch

ADMIN = {"Authorization": "Bearer adm1n"}


async def test_admin_api_is_closed_without_a_key_and_guarded_with_one(
    make_server, http
):
    closed = await make_server()
    async with http.get(closed.make_url("/api/streams")) as response:
        assert response.status == 403
        assert (await response.json())["error"] == "admin_disabled"
    guarded = await make_server(admin_key="adm1n")
    for headers in ({}, {"Authorization": "Bearer nope"}):
        async with http.get(guarded.make_url("/api/streams"), headers=headers) as r:
            assert r.status == 401
    async with http.get(guarded.make_url("/api/streams"), headers=ADMIN) as r:
        assert r.status == 200 and await r.json() == {"streams": []}


async def test_operator_sees_streams_and_viewers_and_can_stop_and_kick(
    make_server, http
):
    server = await make_server(admin_key="adm1n")
    publisher = await publish(http, str(server.make_url("/whip/ops")))
    await publisher.wait_connected()
    viewers = [await watch(http, str(server.make_url("/whep/ops"))) for _ in range(2)]
    await asyncio.gather(*(v.wait_connected() for v in viewers))

    async def show() -> dict:
        async with http.get(server.make_url("/api/streams/ops"), headers=ADMIN) as r:
            assert r.status == 200
            return await r.json()

    await asyncio.sleep(1.5)  # one RTCP interval: bitrates are measured
    stream = await show()
    assert stream["state"] == "live" and stream["source"] == "whip"
    assert stream["resolution"] == "320x240"
    assert stream["viewers"] == 2 and stream["bitrate_in_kbps"] > 0
    assert {c.lower() for c in stream["codecs"]} == {"video/vp8", "audio/opus"}
    sessions = stream["viewer_sessions"]
    assert all(s["address"].startswith("127.0.0.1:") for s in sessions)
    assert all(s["bitrate_out_kbps"] > 0 for s in sessions)

    kicked = sessions[0]["id"]
    url = server.make_url(f"/api/streams/ops/viewers/{kicked}")
    async with http.delete(url, headers=ADMIN) as r:
        assert r.status == 200
    assert [s["id"] for s in (await show())["viewer_sessions"]] == [sessions[1]["id"]]
    async with http.delete(url, headers=ADMIN) as r:
        assert r.status == 404

    async with http.get(server.make_url("/api/streams"), headers=ADMIN) as r:
        assert [s["id"] for s in (await r.json())["streams"]] == ["ops"]
    async with http.delete(server.make_url("/api/streams/ops"), headers=ADMIN) as r:
        assert r.status == 200
    async with http.get(server.make_url("/api/streams/ops"), headers=ADMIN) as r:
        assert r.status == 404
    await asyncio.gather(*(v.close() for v in viewers), publisher.close())


def metric(text: str, name: str) -> float:
    """The value of one sample line `name value` in Prometheus text."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in metrics:\n{text}")


async def test_metrics_count_media_and_sessions(server, http):
    publisher = await publish(http, str(server.make_url("/whip/m")))
    await publisher.wait_connected()
    viewer = await watch(http, str(server.make_url("/whep/m")))
    await viewer.wait_connected()
    await wait_for(lambda: len(viewer.frames.get("video", [])) > 10)
    await asyncio.sleep(1.2)  # the join is reported with the next RTCP interval
    async with http.get(server.make_url("/metrics")) as r:
        assert r.status == 200 and r.content_type == "text/plain"
        text = await r.text()
    assert metric(text, 'broadcast_streams{state="live"}') == 1
    assert metric(text, "broadcast_viewers") == 1
    assert metric(text, 'broadcast_sessions_started_total{kind="whip"}') == 1
    assert metric(text, "broadcast_rtp_packets_received_total") > 20
    assert metric(text, "broadcast_rtp_packets_sent_total") > 20
    assert metric(text, "broadcast_plis_sent_total") >= 1
    assert metric(text, "broadcast_join_to_keyframe_seconds_count") == 1
    sent_before = metric(text, "broadcast_rtp_packets_sent_total")

    await viewer.close()
    async with http.delete(server.make_url(publisher.location)) as r:
        assert r.status == 200
    async with http.get(server.make_url("/metrics")) as r:
        text = await r.text()
    # Counters never go down when their sessions end.
    assert metric(text, "broadcast_rtp_packets_sent_total") >= sent_before
    assert (
        metric(text, 'broadcast_sessions_ended_total{cause="client",kind="whip"}') == 1
    )
    await publisher.close()


async def test_metrics_need_the_admin_key_when_one_is_set(make_server, http):
    server = await make_server(admin_key="adm1n")
    async with http.get(server.make_url("/metrics")) as r:
        assert r.status == 401
    async with http.get(server.make_url("/metrics"), headers=ADMIN) as r:
        assert r.status == 200
        assert "broadcast_viewers_waiting_for_keyframe 0.0" in await r.text()


async def test_metrics_can_be_turned_off(make_server, http):
    server = await make_server(metrics_enabled=False)
    async with http.get(server.make_url("/metrics")) as r:
        assert r.status == 404


async def test_viewer_pages_report_what_they_see(make_server, http):
    server = await make_server(admin_key="adm1n")
    publisher = await publish(http, str(server.make_url("/whip/q")))
    viewer = await watch(http, str(server.make_url("/whep/q")))
    session = viewer.location.rsplit("/", 1)[1]
    report = {
        "type": "quality",
        "stream": "q",
        "session": session,
        "width": 1280,
        "height": 720,
        "fps": 29.5,
        "freezes": 1,
        "jitter_buffer_ms": 80,
        "loss_percent": 0.5,
        "candidate": "host",
        "tcp": False,
    }
    async with http.ws_connect(server.make_url("/ws")) as ws:
        await ws.send_json(report)
        for bad in ({**report, "session": "nope"}, {**report, "fps": "fast"}):
            await ws.send_json(bad)
            assert (await ws.receive_json())["error"] == "bad_report"
    async with http.get(server.make_url("/api/streams/q"), headers=ADMIN) as r:
        seen = (await r.json())["viewer_sessions"][0]["seen_by_viewer"]
    assert seen["height"] == 720 and seen["candidate"] == "host"
    async with http.get(server.make_url("/metrics"), headers=ADMIN) as r:
        text = await r.text()
    assert metric(text, "broadcast_viewer_fps_count") == 1
    assert (
        metric(
            text,
            'broadcast_viewer_quality_reports_total{candidate="host",transport="udp"}',
        )
        == 1
    )
    await asyncio.gather(viewer.close(), publisher.close())
