"""WHIP/WHEP signaling: headers of RFC 9725, and clean JSON errors for bad input."""

from __future__ import annotations

import ast
import asyncio
import re
from pathlib import Path

import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from broadcast.api.metrics import METRICS
from broadcast.loadtest.run import run_loadtest
from broadcast.signaling.sdp import simulcast_rids
from broadcast.web_keys import REGISTRY
from tests.peers import MovingPicture, publish, recvonly_offer, wait_for, watch

SDP = {"Content-Type": "application/sdp"}
TRICKLE = {"Content-Type": "application/trickle-ice-sdpfrag"}

# A valid offer of a codec we do not forward (G722) and nothing else.
G722_OFFER = """v=0\r
o=- 1 1 IN IP4 0.0.0.0\r
s=-\r
t=0 0\r
a=group:BUNDLE 0\r
m=audio 9 UDP/TLS/RTP/SAVPF 9\r
c=IN IP4 0.0.0.0\r
a=mid:0\r
a=sendonly\r
a=rtcp-mux\r
a=rtpmap:9 G722/8000\r
a=ice-ufrag:abcd\r
a=ice-pwd:abcdefghijklmnopqrstuvwx\r
a=fingerprint:sha-256 {fingerprint}\r
a=setup:actpass\r
""".format(fingerprint=":".join(["00", "11", "22", "33"] * 8))


async def error_of(response) -> tuple[int, str, str]:
    assert response.content_type == "application/json"
    body = await response.json()
    assert body["message"] and "Traceback" not in body["message"]
    return response.status, body["error"], body["message"]


@pytest.mark.parametrize(
    "body,code",
    [
        ("", "empty_sdp"),
        ("hello", "malformed_sdp"),
        (
            "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96 VP8\r\n",
            "malformed_sdp",
        ),
        ("v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n", "malformed_sdp"),
        (G722_OFFER.replace("a=ice-ufrag:abcd\r\n", ""), "malformed_sdp"),
        (re.sub(r"a=fingerprint.*\r\n", "", G722_OFFER), "malformed_sdp"),
        ("v=0\r\n" + "\x00\xff" * 100, "malformed_sdp"),
        # aiortc's parser asserts on these: still a 400, never a 500.
        (G722_OFFER.replace("9 UDP/TLS", "9 udp/tls"), "malformed_sdp"),
        (G722_OFFER.replace("SAVPF 9", "SAVPF 300"), "malformed_sdp"),
        (G722_OFFER.replace("SAVPF 9", "SAVPF 72"), "malformed_sdp"),
        # Found by Hypothesis (tests/test_hostile.py): aiortc raised StopIteration.
        (
            "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96 97\r\n"
            "a=fmtp:102 packetization-mode=1;profile-level-id=42e01f\r\n",
            "malformed_sdp",
        ),
    ],
)
async def test_malformed_offers_get_400(server, http, body, code):
    for path in ("/whip/bad", "/whep/bad"):
        async with http.post(server.make_url(path), data=body, headers=SDP) as response:
            status, error, _ = await error_of(response)
            assert (status, error) in ((400, code), (404, "stream_not_found"))
    assert server.app[REGISTRY].get("bad") is None


async def test_no_common_codec_names_the_codecs(server, http):
    async with http.post(server.make_url("/whip/x"), data=G722_OFFER, headers=SDP) as r:
        status, error, message = await error_of(r)
    assert (status, error) == (400, "no_common_codec")
    assert "G722" in message and "VP8" in message
    assert server.app[REGISTRY].get("x") is None


async def test_viewer_without_the_streams_codec_gets_400(server, http):
    publisher = await publish(http, str(server.make_url("/whip/c")), "video/H264", None)
    offer = G722_OFFER.replace("a=sendonly", "a=recvonly")
    async with http.post(server.make_url("/whep/c"), data=offer, headers=SDP) as r:
        status, error, message = await error_of(r)
    assert (status, error) == (400, "no_common_codec")
    assert "H264" in message
    await publisher.close()


async def test_a_viewer_without_the_streams_h264_profile_gets_400_naming_both(
    server, http
):
    """The answer carries the publisher's exact profile; a viewer that offers only
    another (Safari offers a few) is told which it has and which the stream sends."""
    publisher = await publish(http, str(server.make_url("/whip/p")), "video/H264", None)
    video = server.app[REGISTRY].get("p").tracks["video"]
    profile = video.codec.parameters["profile-level-id"]  # what the publisher sends
    offer = await recvonly_offer()
    high = re.sub(r"profile-level-id=[0-9a-fA-F]{6}", "profile-level-id=640c1f", offer)
    async with http.post(server.make_url("/whep/p"), data=high, headers=SDP) as r:
        status, error, message = await error_of(r)
    assert (status, error) == (400, "no_common_codec")
    assert f"profile-level-id {profile}" in message and "640c1f" in message, message
    # With the publisher's profile offered, the answer names exactly that profile.
    async with http.post(server.make_url("/whep/p"), data=offer, headers=SDP) as r:
        assert r.status == 201
        answer = await r.text()
    assert f"profile-level-id={profile}" in answer
    await publisher.close()


async def test_oversized_body_gets_413(server, http):
    body = G722_OFFER + "a=x-padding:" + "x" * (65 * 1024) + "\r\n"
    async with http.post(server.make_url("/whip/big"), data=body, headers=SDP) as r:
        assert (await error_of(r))[:2] == (413, "body_too_large")


async def test_wrong_content_type_gets_415(server, http):
    headers = {"Content-Type": "application/json"}
    async with http.post(server.make_url("/whip/t"), data="{}", headers=headers) as r:
        assert (await error_of(r))[:2] == (415, "unsupported_media_type")


async def test_unknown_stream_gets_404(server, http):
    async with http.post(
        server.make_url("/whep/nobody"), data=G722_OFFER, headers=SDP
    ) as r:
        assert (await error_of(r))[:2] == (404, "stream_not_found")


@pytest.mark.parametrize("stream_id", ["a" * 65, "sp%20ace", "dot.ted", "%C3%A9"])
async def test_bad_stream_id_gets_400(server, http, stream_id):
    async with http.post(
        server.make_url(f"/whip/{stream_id}"), data=G722_OFFER, headers=SDP
    ) as r:
        assert (await error_of(r))[:2] == (400, "bad_stream_id")


async def test_unknown_session_gets_404(server, http):
    url = server.make_url("/whip/s/nosuchsession")
    async with http.delete(url) as r:
        assert (await error_of(r))[:2] == (404, "session_not_found")
    async with http.patch(url, data="a=end-of-candidates\r\n", headers=TRICKLE) as r:
        assert (await error_of(r))[:2] == (404, "session_not_found")


async def test_publish_key_is_required_when_configured(make_server, http):
    server = await make_server(publish_keys=("s3cret",))
    url = server.make_url("/whip/k")
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
        async with http.post(url, data=G722_OFFER, headers={**SDP, **headers}) as r:
            assert (await error_of(r))[:2] == (401, "unauthorized")
            assert r.headers["WWW-Authenticate"].startswith("Bearer")
    publisher = await publish(
        http, str(url), headers={"Authorization": "Bearer s3cret"}
    )
    await publisher.close()


async def test_whip_without_id_gets_an_unguessable_id_and_watch_link(server, http):
    publisher = await publish(http, str(server.make_url("/whip")))
    stream_id = publisher.location.split("/")[2]
    assert re.fullmatch(r"[A-Za-z0-9_-]{22,64}", stream_id)  # >= 128 bits, base64url
    assert server.app[REGISTRY].get(stream_id) is not None
    await publisher.close()


async def test_created_session_has_location_etag_and_accept_patch(server, http):
    publisher = await publish(http, str(server.make_url("/whip/h")))
    assert re.fullmatch(r"/whip/h/[A-Za-z0-9_-]{22}", publisher.location)
    assert re.fullmatch(r'"[0-9a-f]+"', publisher.etag)
    url = server.make_url(publisher.location)
    # Trickle: a candidate fragment is taken with 204.
    fragment = (
        "a=ice-ufrag:{}\r\na=mid:0\r\n"
        "a=candidate:1 1 udp 2130706431 127.0.0.1 9 typ host\r\n"
    )
    ufrag = publisher.pc.localDescription.sdp.split("a=ice-ufrag:")[1].split()[0]
    async with http.patch(
        url,
        data=fragment.format(ufrag),
        headers={**TRICKLE, "If-Match": publisher.etag},
    ) as r:
        assert r.status == 204
    async with http.patch(
        url, data=fragment.format(ufrag), headers={**TRICKLE, "If-Match": '"stale"'}
    ) as r:
        assert (await error_of(r))[:2] == (412, "etag_mismatch")
    async with http.patch(
        url, data=fragment.format("newufrag"), headers={**TRICKLE, "If-Match": "*"}
    ) as r:
        # A new ufrag asks for an ICE restart (tests/test_ice_restart.py): its pwd too.
        assert (await error_of(r))[:2] == (400, "ice_pwd_missing")
    async with http.patch(url, data="junk", headers=SDP) as r:
        assert (await error_of(r))[:2] == (415, "unsupported_media_type")
    await publisher.close()


async def test_options_answers_cors_preflight(server, http):
    async with http.options(
        server.make_url("/whep/any"),
        headers={
            "Origin": "https://example.org",
            "Access-Control-Request-Method": "POST",
        },
    ) as r:
        assert r.status == 204
        assert r.headers["Access-Control-Allow-Origin"] == "*"
        assert "POST" in r.headers["Access-Control-Allow-Methods"]
        assert "Location" in r.headers["Access-Control-Expose-Headers"]


async def test_cors_lets_a_client_of_another_origin_see_that_it_may_trickle(
    server, http
):
    """@eyevinn/whip-web-client trickles only if its script can read PATCH in our
    Allow-Methods, and sends the ETag back in an `ETag` request header
    (tests/e2e/test_interop_npm.py)."""
    async with http.options(
        server.make_url("/whip/any/session"),
        headers={
            "Origin": "https://example.org",
            "Access-Control-Request-Method": "PATCH",
            "Access-Control-Request-Headers": "content-type,etag",
        },
    ) as r:
        assert r.status == 204
        assert "ETag" in r.headers["Access-Control-Allow-Headers"].split(", ")
        exposed = r.headers["Access-Control-Expose-Headers"].split(", ")
        assert "Access-Control-Allow-Methods" in exposed


async def test_a_candidate_trickled_as_component_0_is_the_rtp_one(server, http):
    """@eyevinn/whip-web-client trickles its candidates as component 0 (its index for
    "rtp"). Kept as such, every check from that address failed an assertion in aioice
    and the publisher never connected whenever its PATCH beat its first check
    (tests/e2e/test_interop_npm.py, about 1 run in 20)."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver(MovingPicture(), direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    offer = pc.localDescription.sdp
    candidates = re.findall(r"a=candidate:(\S+) 1 (udp .*)\r\n", offer)
    assert candidates
    bare = re.sub(r"a=(candidate:.*|end-of-candidates)\r\n", "", offer)
    async with http.post(server.make_url("/whip/zero"), data=bare, headers=SDP) as r:
        assert r.status == 201
        answer, location = await r.text(), r.headers["Location"]
    ufrag = re.search(r"a=ice-ufrag:(\S+)", offer)[1]
    # A component we do not have (2: RTCP without rtcp-mux) at the same address goes
    # first: it must be dropped, not found by the checks from that address.
    fragment = f"a=ice-ufrag:{ufrag}\r\nm=audio 9 RTP/AVP 0\r\na=mid:0\r\n" + "".join(
        f"a=candidate:{foundation} {component} {rest}\r\n"
        for component in (2, 0)
        for foundation, rest in candidates
    )
    async with http.patch(
        server.make_url(location), data=fragment, headers=TRICKLE
    ) as r:
        assert r.status == 204
    # Only now does the publisher start its checks: the PATCH came first.
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
    try:
        await wait_for(
            lambda: server.app[REGISTRY].get("zero").state == "live",
            message="publisher never connected",
        )
    finally:
        await pc.close()


async def test_unknown_route_and_method_are_json_errors(server, http):
    async with http.get(server.make_url("/nope")) as r:
        assert (await error_of(r))[0] == 404
    async with http.get(server.make_url("/whip/x")) as r:
        assert (await error_of(r))[0] == 405


async def test_healthz(server, http):
    async with http.get(server.make_url("/healthz")) as r:
        assert r.status == 200 and await r.text() == "ok"


async def test_bad_input_does_not_disturb_a_live_stream(server, http):
    publisher = await publish(http, str(server.make_url("/whip/live")))
    await publisher.wait_connected()
    viewer = await watch(http, str(server.make_url("/whep/live")))
    await viewer.wait_connected()
    await wait_for(lambda: viewer.frames.get("video"))
    garbage = ["", "v=0", G722_OFFER, "v=0\r\nm=video 0 X 1\r\n" * 500, "\x00" * 5000]
    for body in garbage:
        for path in ("/whip/live", "/whep/live", "/whip", "/whep/nobody"):
            async with http.post(server.make_url(path), data=body, headers=SDP) as r:
                assert 400 <= r.status < 500
    async with http.post(
        server.make_url("/whip/live"), data=G722_OFFER, headers=SDP
    ) as r:
        assert r.status == 409
    before = len(viewer.frames["video"])
    await wait_for(lambda: len(viewer.frames["video"]) > before + 10)
    await asyncio.gather(viewer.close(), publisher.close())


async def test_public_ip_is_announced_beside_the_host_candidate(make_server, http):
    # A loopback address stands in for the public one: tests send nothing elsewhere.
    server = await make_server(public_ip="127.0.0.2")
    publisher = await publish(http, str(server.make_url("/whip/nat")))
    await publisher.wait_connected()  # the host candidate still works locally
    answer = publisher.pc.remoteDescription.sdp
    host = re.search(r"a=candidate:\S+ 1 udp \d+ 127\.0\.0\.1 (\d+) typ host", answer)
    public = re.search(
        r"a=candidate:\S+ 1 udp \d+ 127\.0\.0\.2 (\d+) typ srflx "
        r"raddr 127\.0\.0\.1 rport (\d+)",
        answer,
    )
    assert host and public and host.group(1) == public.group(1) == public.group(2)
    await publisher.close()


async def test_cors_answers_only_configured_origins(make_server, http):
    server = await make_server(cors_origins=("https://ok.example",))
    for origin, allowed in (
        ("https://ok.example", True),
        ("https://evil.example", False),
    ):
        async with http.options(
            server.make_url("/whip/x"), headers={"Origin": origin}
        ) as r:
            assert r.status == 204
            assert r.headers.get("Access-Control-Allow-Origin") == (
                origin if allowed else None
            )


async def test_limits_refuse_new_sessions_with_503_and_keep_the_others(
    make_server, http
):
    server = await make_server(max_streams=1, max_viewers_per_stream=1)
    first = await publish(http, str(server.make_url("/whip/one")))
    async with http.post(
        server.make_url("/whip/two"), data=G722_OFFER, headers=SDP
    ) as r:
        assert (await error_of(r))[:2] == (503, "server_full")
        assert r.headers["Retry-After"] == "10"
    viewer = await watch(http, str(server.make_url("/whep/one")))
    try:
        await watch(http, str(server.make_url("/whep/one")))
    except AssertionError as error:
        assert "503" in str(error) and "server_full" in str(error)
    else:
        raise AssertionError("a viewer past the limit was accepted")
    await viewer.wait_connected()
    await asyncio.gather(viewer.close(), first.close())


async def test_session_rate_per_client_gets_429(make_server, http):
    server = await make_server(sessions_per_client_per_minute=3)  # a burst of 1
    first = await publish(http, str(server.make_url("/whip/r1")))
    async with http.post(
        server.make_url("/whip/r2"), data=G722_OFFER, headers=SDP
    ) as r:
        assert (await error_of(r))[:2] == (429, "too_many_requests")
        assert r.headers["Retry-After"] == "1"
    await first.close()


async def test_probing_for_streams_is_rate_limited_too(make_server, http):
    server = await make_server(sessions_per_client_per_minute=3)
    statuses = []
    for name in ("a", "b"):
        async with http.post(
            server.make_url(f"/whep/{name}"), data=G722_OFFER, headers=SDP
        ) as r:
            statuses.append(r.status)
    assert statuses == [404, 429]


async def test_an_audience_behind_one_address_is_not_refused(server, http):
    """200 viewers from one address (an office NAT, a load test) within a few seconds,
    on the default limits: every one joins and gets media."""
    publisher = await publish(http, str(server.make_url("/whip/allhands")))
    await publisher.wait_connected()
    result = await run_loadtest(
        str(server.make_url("/whep/allhands")), 200, 1.0, ramp_s=3.0, settle_s=1.0
    )
    print(
        f"200 viewers from one address: {result.connected} joined, {result.failed} failed"
    )
    assert (result.connected, result.failed) == (200, 0)
    assert result.viewers_with_media == 200
    await publisher.close()


async def ghost_offer() -> str:
    """An offer from a peer that is gone and never said its candidates were complete:
    a session answering it never connects."""
    return (await recvonly_offer()).replace("a=end-of-candidates\r\n", "")


async def test_sessions_that_never_connect_cost_their_client(
    make_server, http, monkeypatch
):
    monkeypatch.setattr("broadcast.media.transport.CONNECT_TIMEOUT_S", 0.5)
    server = await make_server(sessions_per_client_per_minute=6)  # a burst of 2
    publisher = await publish(http, str(server.make_url("/whip/cost")))
    registry = server.app[REGISTRY]
    offer = await ghost_offer()
    for _ in range(2):
        async with http.post(
            server.make_url("/whep/cost"), data=offer, headers=SDP
        ) as r:
            assert r.status == 201
    await wait_for(lambda: len(registry.sessions) == 1, message="ghosts kept")
    async with http.post(server.make_url("/whep/cost"), data=offer, headers=SDP) as r:
        assert (await error_of(r))[:2] == (429, "too_many_requests")
    await publisher.close()


async def test_offers_deleted_before_they_connect_cost_their_client(make_server, http):
    server = await make_server(sessions_per_client_per_minute=6)  # a burst of 2
    publisher = await publish(http, str(server.make_url("/whip/churn")))
    await publisher.wait_connected()
    offer = await ghost_offer()
    statuses = []
    for _ in range(4):
        async with http.post(
            server.make_url("/whep/churn"), data=offer, headers=SDP
        ) as r:
            statuses.append(r.status)
            location = r.headers.get("Location")
        if location:
            async with http.delete(server.make_url(location)) as r:
                assert r.status == 200
    assert statuses[-1] == 429, statuses
    await publisher.close()


async def test_sessions_still_connecting_are_capped_per_client(make_server, http):
    server = await make_server(sessions_per_client_per_minute=6)
    publisher = await publish(http, str(server.make_url("/whip/cap")))
    await publisher.wait_connected()
    offer = await ghost_offer()
    for _ in range(6):  # nothing has failed yet, so nothing is charged
        async with http.post(
            server.make_url("/whep/cap"), data=offer, headers=SDP
        ) as r:
            assert r.status == 201
    async with http.post(server.make_url("/whep/cap"), data=offer, headers=SDP) as r:
        assert (await error_of(r))[:2] == (429, "too_many_requests")
    await publisher.close()


async def test_new_viewers_wait_while_the_event_loop_lags(server, http):
    publisher = await publish(http, str(server.make_url("/whip/lag")))
    server.app[METRICS].loop_lag_s = 1.0  # as the lag probe would measure it
    async with http.post(
        server.make_url("/whep/lag"), data=G722_OFFER, headers=SDP
    ) as r:
        assert (await error_of(r))[:2] == (503, "server_busy")
    await publisher.close()


async def test_media_ports_stay_within_the_configured_range(make_server, http):
    server = await make_server(media_ports=(47000, 47001))
    publisher = await publish(http, str(server.make_url("/whip/ports")))
    viewer = await watch(http, str(server.make_url("/whep/ports")))
    await asyncio.gather(publisher.wait_connected(), viewer.wait_connected())
    await wait_for(lambda: viewer.frames.get("video"))
    used = {
        int(port)
        for peer in (publisher, viewer)
        for port in re.findall(
            r" udp \d+ 127\.0\.0\.1 (\d+) typ host", peer.pc.remoteDescription.sdp
        )
    }
    assert used == {47000, 47001}
    # The range is full: a third session is told so, and the others go on.
    async with http.post(
        server.make_url("/whep/ports"), data=await recvonly_offer(), headers=SDP
    ) as r:
        assert (await error_of(r))[:2] == (503, "no_candidates")
    before = len(viewer.frames["video"])
    await wait_for(lambda: len(viewer.frames["video"]) > before + 5)
    await asyncio.gather(viewer.close(), publisher.close())


async def test_options_hands_out_stun_and_time_limited_turn_credentials(
    make_server, http
):
    import base64
    import hashlib
    import hmac
    import time

    server = await make_server(
        stun_servers=("stun:127.0.0.1:3478",),
        turn_servers=("turn:127.0.0.1:3478?transport=udp",),
        turn_secret="coturn-secret",
    )
    async with http.options(server.make_url("/whip/x")) as r:
        links = r.headers.getall("Link")
    assert '<stun:127.0.0.1:3478>; rel="ice-server"' in links
    turn = next(link for link in links if link.startswith("<turn:"))
    username = re.search(r'username="([^"]+)"', turn).group(1)
    credential = re.search(r'credential="([^"]+)"', turn).group(1)
    expiry, _, name = username.partition(":")
    assert name and int(expiry) > time.time() + 3600
    expected = hmac.new(b"coturn-secret", username.encode(), hashlib.sha1).digest()
    assert base64.b64decode(credential) == expected


async def test_a_connectivity_probe_connects_and_ends_by_itself(
    server, http, monkeypatch
):
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

    monkeypatch.setattr("broadcast.signaling.check.PROBE_LIFETIME_S", 1.0)
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("audio", direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    async with http.post(
        server.make_url("/check/ice"), data=pc.localDescription.sdp, headers=SDP
    ) as r:
        assert r.status == 201 and r.headers["Location"].startswith("/check/probe/")
        answer = await r.text()
    assert "a=inactive" in answer
    await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
    await wait_for(
        lambda: pc.connectionState == "connected", message=pc.connectionState
    )
    registry = server.app[REGISTRY]
    await wait_for(lambda: not registry.sessions, timeout=5, message="probe kept")
    await pc.close()


@pytest.mark.parametrize("handler", ["whip", "whep", "check", "session"])
def test_a_request_is_admitted_in_one_place(handler: str) -> None:
    """Stream id, key or token, the client's rate, loop lag and capacity are decided by
    `signaling/admission.py` alone, asked once per request: no handler asks `auth`,
    `limits` or the registry itself whether it may go ahead."""
    path = Path(__file__).parent.parent / "broadcast" / "signaling" / f"{handler}.py"
    tree = ast.parse(path.read_text())
    imported = {
        f"{node.module}.{alias.name}"
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    asking = {
        name
        for name in imported
        if name.startswith(("broadcast.auth.", "broadcast.limits."))
        or name.endswith(".check_stream_id")
    }
    assert not asking, f"signaling/{handler}.py decides admission itself: {asking}"


async def test_an_offer_without_rtcp_mux_is_refused_clearly(server, http):
    """Our answer is BUNDLEd on one ICE component: an offerer that wants RTCP on a port
    of its own would never connect it (and may not be answered with a=rtcp-mux)."""
    publisher = await publish(http, str(server.make_url("/whip/mux")), audio=None)
    offer = (await recvonly_offer()).replace("a=rtcp-mux\r\n", "")
    async with http.post(server.make_url("/whep/mux"), data=offer, headers=SDP) as r:
        assert (await error_of(r))[:2] == (400, "rtcp_mux_required")
    await publisher.close()


SIMULCAST_SEED = (
    Path(__file__).parent / "fuzz/seeds/sdp_offer/chrome_simulcast_publish.sdp"
)


@pytest.mark.parametrize(
    ("lines", "rids"),
    [
        (["a=rid:h send", "a=rid:m send", "a=simulcast:send h;m"], ["h", "m"]),
        # RFC 8853: alternatives (the first taken), paused streams (~) left out.
        (
            ["a=rid:a send", "a=rid:b send", "a=rid:c send", "a=simulcast:send a,b;~c"],
            [],
        ),
        (["a=rid:1 send", "a=rid:2 send", "a=simulcast:send 1;2;9"], ["1", "2"]),
        (["a=rid:x recv", "a=rid:y recv", "a=simulcast:send x;y"], []),  # not sent
        (["a=rid:h send", "a=simulcast:send h"], []),  # one layer is no simulcast
    ],
)
def test_simulcast_rids_of_an_offer(lines, rids):
    text = "v=0\r\nm=audio 9 x\r\na=mid:0\r\nm=video 9 x\r\na=mid:1\r\n"
    text += "\r\n".join(lines) + "\r\n"
    assert simulcast_rids(text) == ({"1": rids} if rids else {})


async def test_a_simulcast_offer_is_answered_with_its_layers(server, http):
    offer = SIMULCAST_SEED.read_text()
    async with http.post(server.make_url("/whip/sim"), data=offer, headers=SDP) as r:
        assert r.status == 201, await r.text()
        answer = await r.text()
    video = answer.split("m=video", 1)[1]
    for line in (
        "a=rid:h recv",
        "a=rid:m recv",
        "a=rid:l recv",
        "a=simulcast:recv h;m;l",
        "a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id",
        "a=extmap:11 urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id",
    ):
        assert line + "\r\n" in video, line
    assert "\r\n\r\n" not in answer
    assert "a=simulcast" not in answer.split("m=video", 1)[0]
    assert list(server.app[REGISTRY].get("sim").layers) == ["h", "m", "l"]
