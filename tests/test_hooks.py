"""Back-end hooks against a real receiver: an aiohttp app on 127.0.0.1, real peers.

The receiver verifies every signature as README "Hooks" tells operators to, records
what it was sent, and answers as a test tells it: a status and message, late, or not
at all (nothing listening).
"""

from __future__ import annotations

import asyncio
import hmac
import io
import json
import logging
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from broadcast.config import RtspCamera, RtspOptions
from broadcast.events import viewer_event
from broadcast.hooks import HOOKS
from broadcast.hooks.events import MAX_QUEUE
from broadcast.hooks.signing import SIGNATURE_HEADER, signature, verify
from broadcast.logs import configure_logging
from broadcast.web_keys import REGISTRY
from tests.peers import Peer, publish, recvonly_offer, wait_for, watch

SECRET = "hook-secret-Xq7Lm2Vb"
SDP = {"Content-Type": "application/sdp"}


@dataclass
class Receiver:
    """The operator's back end: answers `status` with `message` after `delay_s`."""

    base: str = ""
    status: int = 200
    message: str = ""
    delay_s: float = 0.0
    fail_events: int = 0  # answer the next N events POSTs with 500
    calls: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    unsigned: int = 0  # calls whose signature did not verify

    def url(self, path: str) -> str:
        return f"{self.base}/{path}"

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if not verify(SECRET, request.headers.get(SIGNATURE_HEADER, ""), body):
            self.unsigned += 1
        path = request.match_info["hook"]
        self.calls.setdefault(path, []).append(json.loads(body))
        if path == "events":
            if self.fail_events:
                self.fail_events -= 1
                return web.Response(status=500)
            return web.Response(status=204)
        await asyncio.sleep(self.delay_s)
        return web.json_response({"message": self.message}, status=self.status)

    def events(self) -> list[dict[str, Any]]:
        return [e for call in self.calls.get("events", []) for e in call["events"]]

    def types(self, stream: str) -> list[str]:
        return [e["type"] for e in self.events() if e["stream"] == stream]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    receiver = Receiver()
    app = web.Application()
    app.router.add_post("/{hook}", receiver.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    receiver.base = str(server.make_url("")).rstrip("/")
    yield receiver
    await server.close()


def nothing_listening() -> str:
    """A URL on 127.0.0.1 where no one listens (connection refused)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/play"


MakeServer = Callable[..., Awaitable[TestServer]]


async def hooked(make_server: MakeServer, receiver: Receiver, **more: Any) -> str:
    """A server asking and telling `receiver`; its base URL."""
    return base_of(await hooked_server(make_server, receiver, **more))


def base_of(server: TestServer) -> str:
    return str(server.make_url("")).rstrip("/")


async def hooked_server(
    make_server: MakeServer, receiver: Receiver, **more: Any
) -> TestServer:
    options = {
        "hooks_publish_auth": receiver.url("publish"),
        "hooks_play_auth": receiver.url("play"),
        "hooks_events": receiver.url("events"),
        "hooks_secret": SECRET,
        **more,
    }
    return await make_server(**options)


async def post_offer(
    http: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any], dict[str, str]]:
    offer = await recvonly_offer() if "/whep/" in url else await publish_offer()
    async with http.post(url, data=offer, headers={**SDP, **(headers or {})}) as r:
        body = await r.json() if r.status != 201 else {}
        return r.status, body, dict(r.headers)


async def publish_offer() -> str:
    from aiortc import RTCPeerConnection

    pc = RTCPeerConnection()
    pc.addTransceiver("video", direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    offer = pc.localDescription.sdp
    await pc.close()
    return offer


async def test_the_back_end_lets_a_publisher_and_a_viewer_in_in_place_of_our_keys(
    receiver, make_server, http
):
    # Our own key is set, the back end's credential is not it: the hook decides.
    base = await hooked(make_server, receiver, publish_keys=("internal-key-1",))
    peers: list[Peer] = []
    try:
        peers.append(
            await publish(
                http,
                f"{base}/whip/cam",
                headers={"Authorization": "Bearer backend-pub-1"},
            )
        )
        peers.append(await watch(http, f"{base}/whep/cam?token=backend-view-1"))
        for peer in peers:
            await peer.wait_connected()
    finally:
        for peer in peers:
            await peer.close()
    (asked_publish,) = receiver.calls["publish"]
    (asked_play,) = receiver.calls["play"]
    assert asked_publish["user_agent"].startswith("Python")
    assert {k: v for k, v in asked_publish.items() if k != "user_agent"} == {
        "action": "publish",
        "stream": "cam",
        "client": "127.0.0.1",
        "key": "backend-pub-1",
    }
    assert (asked_play["action"], asked_play["stream"], asked_play["token"]) == (
        "play",
        "cam",
        "backend-view-1",
    )
    assert receiver.unsigned == 0
    # Without the hook, the same credential is refused by our own key.
    plain = await make_server(publish_keys=("internal-key-1",))
    status, body, _ = await post_offer(
        http,
        str(plain.make_url("/whip/cam")),
        {"Authorization": "Bearer backend-pub-1"},
    )
    assert (status, body["error"]) == (401, "unauthorized")


async def test_a_refusal_reaches_the_client_with_its_status_and_message(
    receiver, make_server, http
):
    base = await hooked(make_server, receiver)
    receiver.status, receiver.message = 403, "No ticket for this show.\n"
    status, body, _ = await post_offer(http, f"{base}/whep/show?token=t-1")
    assert (status, body) == (
        403,
        {"error": "hook_refused", "message": "No ticket for this show."},
    )
    receiver.status, receiver.message = 402, "Pay first. " * 100
    status, body, _ = await post_offer(
        http, f"{base}/whip/show", {"Authorization": "Bearer k-2"}
    )
    assert (status, body["error"]) == (402, "hook_refused")
    assert len(body["message"]) == 200 and body["message"].startswith("Pay first.")


@pytest.mark.parametrize("outage", ["slow", "down", "5xx"])
@pytest.mark.parametrize("policy", ["deny", "allow"])
async def test_an_outage_follows_on_failure(
    make_server, receiver, http, outage, policy
):
    receiver.delay_s = 3.0 if outage == "slow" else 0.0
    receiver.status = 502 if outage == "5xx" else 200
    more: dict[str, Any] = {"hooks_timeout_s": 0.3, "hooks_on_failure": policy}
    if outage == "down":
        more["hooks_play_auth"] = nothing_listening()
    base = await hooked(make_server, receiver, **more)
    publisher = None
    if policy == "allow":  # a stream to be let into (publish_auth is slow too)
        publisher = await publish(http, f"{base}/whip/live")
    try:
        start = time.monotonic()
        status, body, headers = await post_offer(http, f"{base}/whep/live")
        elapsed = time.monotonic() - start
    finally:
        if publisher is not None:
            await publisher.close()
    assert elapsed < 2.0, "the hook's timeout was not applied"
    if policy == "deny":
        assert (status, body["error"], headers["Retry-After"]) == (
            503,
            "hook_unavailable",
            "5",
        )
    else:
        assert status == 201
    async with http.get(f"{base}/metrics") as response:
        text = await response.text()
    assert 'broadcast_hook_calls_total{hook="play_auth",outcome="failed"} 1.0' in text
    assert 'broadcast_hook_seconds_count{hook="play_auth"} 1.0' in text


async def test_ten_joins_with_one_token_make_one_call(receiver, make_server, http):
    base = await hooked(make_server, receiver, hooks_events=None)
    await publish(http, f"{base}/whip/hall")
    receiver.delay_s = 0.2  # the joins arrive while the first call is under way
    results = await asyncio.gather(
        *(post_offer(http, f"{base}/whep/hall?token=ticket-1") for _ in range(10))
    )
    assert [status for status, _, _ in results] == [201] * 10
    assert len(receiver.calls["play"]) == 1
    await post_offer(http, f"{base}/whep/hall?token=ticket-1")  # later, still cached
    assert len(receiver.calls["play"]) == 1
    await post_offer(http, f"{base}/whep/hall?token=ticket-2")  # another token
    assert len(receiver.calls["play"]) == 2
    # A refusal is kept as well: a burst of a bad token makes one call too.
    receiver.status = 403
    refused = await asyncio.gather(
        *(post_offer(http, f"{base}/whep/hall?token=bad") for _ in range(5))
    )
    assert [status for status, _, _ in refused] == [403] * 5
    assert len(receiver.calls["play"]) == 3


def test_a_signature_verifies_only_for_its_body_secret_and_time():
    body = b'{"events":[{"type":"publish_started","stream":"cam"}]}'
    header = signature(SECRET, body)
    assert verify(SECRET, header, body)
    assert not verify(SECRET, header, body.replace(b"cam", b"cat"))
    assert not verify("another-secret", header, body)
    assert not verify(SECRET, header.replace("v1=", "v1=0"), body)
    stale = signature(SECRET, body, time.time() - 600)
    assert not verify(SECRET, stale, body)
    t, v1 = (part.split("=", 1)[1] for part in header.split(","))
    assert t.isdigit() and len(v1) == 64


async def test_a_broadcast_is_told_signed_and_batched(receiver, make_server, http):
    base = await hooked(make_server, receiver, hooks_publish_auth=None)
    publisher = await publish(http, f"{base}/whip/show")
    await wait_for(lambda: receiver.types("show") == ["publish_started"])
    viewers = [await watch(http, f"{base}/whep/show") for _ in range(3)]
    for viewer in viewers:
        await viewer.wait_connected()
    await wait_for(lambda: receiver.types("show").count("viewer_joined") == 3)
    for viewer in viewers:
        await viewer.close()
    await wait_for(lambda: receiver.types("show").count("viewer_left") == 3)
    async with http.delete(base + publisher.location) as response:
        assert response.status == 200
    await publisher.close()
    await wait_for(lambda: "publish_ended" in receiver.types("show"))
    types = receiver.types("show")
    assert types[0] == "publish_started" and types[-1] == "publish_ended"
    assert types.count("publish_started") == types.count("publish_ended") == 1
    started = receiver.events()[0]
    assert started["source"] == "whip" and abs(started["time"] - time.time()) < 30
    joined = {e["session"] for e in receiver.events() if e["type"] == "viewer_joined"}
    assert joined == {v.location.rsplit("/", 1)[1] for v in viewers}
    assert receiver.unsigned == 0
    # Seven events in at most one POST a second: fewer POSTs than events.
    assert len(receiver.calls["events"]) < len(types)


async def test_a_burst_of_500_viewer_events_makes_one_post(receiver, make_server, http):
    server = await hooked_server(make_server, receiver)
    events = server.app[REGISTRY].events
    for n in range(500):  # as 500 viewers joining at once would announce
        events.announce(viewer_event("big", f"s{n}", joined=True))
    await wait_for(lambda: len(receiver.events()) == 500)
    assert len(receiver.calls["events"]) == 1
    assert [e["session"] for e in receiver.events()] == [f"s{n}" for n in range(500)]
    assert {e["type"] for e in receiver.events()} == {"viewer_joined"}
    assert len({e["id"] for e in receiver.events()}) == 500
    assert receiver.unsigned == 0


async def test_a_failed_post_is_retried_and_a_full_queue_drops_and_counts(
    receiver, make_server, http
):
    server = await hooked_server(make_server, receiver)
    hooks = server.app[HOOKS].events
    assert hooks is not None
    hooks.backoff_s = 0.05
    receiver.fail_events = 2
    hooks.add("camera_problem", "gate", problem="camera_unreachable")
    await wait_for(lambda: len(receiver.calls.get("events", [])) == 3)
    first, _, third = receiver.calls["events"]
    assert first == third  # the same batch, ids and all: the receiver dedups
    for n in range(MAX_QUEUE + 7):  # faster than any sender: never waits, drops
        hooks.add("viewer_left", "big", session=f"s{n}")
    assert hooks.dropped == 7
    async with aiohttp.ClientSession() as scraper:
        async with scraper.get(f"{base_of(server)}/metrics") as response:
            text = await response.text()
    assert "broadcast_hook_events_dropped_total 7.0" in text
    assert 'broadcast_hook_calls_total{hook="events",outcome="failed"} 2.0' in text
    assert 'broadcast_hook_calls_total{hook="events",outcome="delivered"} 1.0' in text


async def test_the_secret_and_credentials_never_reach_the_logs(
    receiver, make_server, http
):
    """As `broadcast serve` logs (logs.configure_logging, at DEBUG): the secret is
    never logged at all, presented credentials are blanked like our own."""
    server = await hooked_server(make_server, receiver, hooks_timeout_s=0.3)
    base = base_of(server)
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    log, raw = io.StringIO(), io.StringIO()
    configure_logging(server.app[REGISTRY].config, log)
    root.handlers.insert(0, logging.StreamHandler(raw))  # before redaction
    root.setLevel(logging.DEBUG)
    try:
        publisher = await publish(
            http,
            f"{base}/whip/quiet",
            headers={"Authorization": "Bearer pub-cred-9Yt"},
        )
        receiver.status, receiver.message = 403, "no"
        await post_offer(http, f"{base}/whep/quiet?token=view-cred-4Rk")
        receiver.delay_s = 1.0
        await post_offer(http, f"{base}/whep/quiet?token=view-cred-5Rk")
        receiver.fail_events = 1
        async with http.delete(base + publisher.location):
            pass  # publish_ended: answered 500, retried
        await publisher.close()
        await wait_for(lambda: len(receiver.calls["events"]) == 3)
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    assert "events hook: receiver failed (HTTP 500)" in log.getvalue()
    assert SECRET not in raw.getvalue()
    for secret in (SECRET, "pub-cred-9Yt", "view-cred-4Rk", "view-cred-5Rk"):
        assert secret not in log.getvalue()


async def test_a_camera_problem_and_a_finished_recording_are_told(
    receiver, make_server, http, tmp_path
):
    dead = nothing_listening().replace("http://", "rtsp://")
    camera = RtspCamera("gate", dead, RtspOptions(always_on=True))
    base = await hooked(
        make_server,
        receiver,
        hooks_publish_auth=None,
        cameras=(camera,),
        record_all=True,
        recording_dir=str(tmp_path),
    )
    await wait_for(lambda: "camera_problem" in receiver.types("gate"))
    problem = next(e for e in receiver.events() if e["type"] == "camera_problem")
    assert problem["problem"]
    publisher = await publish(http, f"{base}/whip/talk")
    await wait_for(lambda: "publish_started" in receiver.types("talk"))
    await asyncio.sleep(1.5)  # a recording with some frames in it
    async with http.delete(base + publisher.location):
        pass
    await publisher.close()
    await wait_for(lambda: "recording_ready" in receiver.types("talk"))
    ready = next(e for e in receiver.events() if e["type"] == "recording_ready")
    assert (tmp_path / ready["file"]).is_file() and ready["duration"] > 0


def test_the_readme_check_of_a_signature_works():
    """README "Hooks" tells receivers how to check: those lines, as written."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    check = readme.split("**Signature.**", 1)[1].split("```python\n", 1)[1]
    check = check.split("```", 1)[0]
    body = b'{"events":[]}'
    scope: dict[str, Any] = {"hmac": hmac, "time": time, "SECRET": SECRET}
    for header, expected in (
        (signature(SECRET, body), True),
        (signature(SECRET, body + b" "), False),
        (signature("wrong-secret", body), False),
    ):
        exec(check, {**scope, "header": header, "body": body}, result := {})
        assert result["ok"] is expected
