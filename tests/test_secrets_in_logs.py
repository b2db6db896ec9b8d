"""Secrets never reach the logs, not even at DEBUG, from any library.

One server set up as `broadcast serve` runs it (logs.configure_logging: root at the
configured level, every logger's records through one handler; `web.AppRunner` with its
access log), at DEBUG, through a workload that handles every kind of secret we know:
publish keys and tokens, view tokens (share link, `?token=`, Bearer), the admin key, a
camera's user:password (config and admin API), TURN REST credentials, the ICE passwords
of every offer and answer, the SRTP master keys of every DTLS handshake. Then every
line the handler wrote is searched for each of them.
"""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import re
from collections.abc import Iterator

import aiohttp
import aiortc.rtcdtlstransport
import pylibsrtp
import pytest
from aiohttp import web

from broadcast import tokens
from broadcast.app import create_app
from broadcast.config import Config, RtspCamera, RtspOptions
from broadcast.logs import configure_logging
from broadcast.redact import redact_text
from tests.camera_sim import start_camera
from tests.peers import Peer, publish, wait_for, watch

PUBLISH_KEY = "pk-Tq8wZr3Lm5Vx"
ADMIN_KEY = "ak-Hy7bNc2Kd9Ps"
TOKEN_SECRET = "ts-Jf4gRt6Yu1Qa"
TURN_SECRET = "tu-Wm3eXs8Pk2Lz"
CAMERA_USER = "camuser"
CAMERA_PASSWORD = "cp-Zx5vBn7Mq3Gh"
SECOND_CAMERA_PASSWORD = "cp2-Rt9yUi4Op6Kj"


class Secrets:
    """Every secret the workload handles, found as text, bytes repr, hex or base64."""

    def __init__(self) -> None:
        self.named: dict[str, str] = {}

    def add(self, name: str, value: str | bytes) -> None:
        if isinstance(value, bytes):
            self.named[f"{name} (hex)"] = value.hex()
            self.named[f"{name} (base64)"] = base64.b64encode(value).decode()
            self.named[f"{name} (repr)"] = repr(value)[2:-1]
        else:
            assert len(value) >= 8, f"{name} is too short to search for: {value!r}"
            self.named[name] = value

    def add_sdp(self, name: str, sdp: str) -> None:
        passwords = re.findall(r"a=ice-pwd:(\S+)", sdp)
        assert passwords, f"no ice-pwd in the {name}"
        for password in passwords:
            self.add(f"ice-pwd of the {name}", password)

    def add_peer(self, name: str, peer: Peer) -> None:
        self.add_sdp(f"{name}'s offer", peer.pc.localDescription.sdp)
        self.add_sdp(f"answer to {name}", peer.pc.remoteDescription.sdp)

    def found_in(self, text: str) -> list[str]:
        return [
            f"{name}: {line.strip()[:300]}"
            for name, value in self.named.items()
            for line in text.splitlines()
            if value in line
        ]


@pytest.fixture
def srtp_keys(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """The SRTP master key and salt of every DTLS-SRTP session aiortc sets up."""
    keys: list[bytes] = []

    class RecordingPolicy(pylibsrtp.Policy):
        def __init__(self, key: bytes | None = None, **kwargs: int) -> None:
            if key:
                keys.append(key)
            super().__init__(key=key, **kwargs)

    monkeypatch.setattr(aiortc.rtcdtlstransport, "Policy", RecordingPolicy)
    return keys


@pytest.fixture
def root_logger() -> Iterator[logging.Logger]:
    """The root logger, put back as it was after the test."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield root
    root.handlers[:] = handlers
    root.setLevel(level)


def config_with_secrets(camera_url: str, log_format: str) -> Config:
    return Config(
        host="127.0.0.1",
        media_port=0,
        log_level="debug",
        log_format=log_format,
        publish_keys=(PUBLISH_KEY,),
        admin_key=ADMIN_KEY,
        token_secret=TOKEN_SECRET,
        private_viewing=True,
        turn_servers=("turn:127.0.0.1:3478?transport=udp",),
        turn_secret=TURN_SECRET,
        cameras=(RtspCamera("gate", camera_url, RtspOptions(always_on=True)),),
    )


@pytest.mark.parametrize("log_format", ["human", "json"])
async def test_debug_logs_of_a_full_workload_hold_no_secret(
    root_logger, srtp_keys, log_format
):
    secrets = Secrets()
    for name, value in (
        ("publish key", PUBLISH_KEY),
        ("admin key", ADMIN_KEY),
        ("token secret", TOKEN_SECRET),
        ("TURN secret", TURN_SECRET),
        ("camera password", CAMERA_PASSWORD),
        ("second camera password", SECOND_CAMERA_PASSWORD),
    ):
        secrets.add(name, value)
    async with (
        start_camera(username=CAMERA_USER, password=CAMERA_PASSWORD) as camera,
        start_camera(
            username=CAMERA_USER, password=SECOND_CAMERA_PASSWORD, auth="basic"
        ) as second_camera,
    ):
        assert CAMERA_PASSWORD in camera.url
        config = config_with_secrets(camera.url, log_format)
        log = io.StringIO()
        configure_logging(config, log)
        # Before redaction (the first handler sees records as the libraries made them).
        raw = io.StringIO()
        root_logger.handlers.insert(0, logging.StreamHandler(raw))
        # As broadcast.server.serve runs it: an AppRunner with its access log on.
        runner = web.AppRunner(create_app(config))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        base = f"http://{host}:{port}"
        peers: list[Peer] = []
        try:
            async with aiohttp.ClientSession() as http:
                await _workload(http, base, secrets, peers, second_camera.url)
        finally:
            for peer in peers:
                await peer.close()
            await runner.cleanup()
    assert len(srtp_keys) >= 2 * len(peers), "the SRTP keys were not recorded"
    for key in srtp_keys:
        secrets.add("SRTP master key", key)

    text = log.getvalue()
    # The handler saw the libraries' DEBUG records: the search covers them.
    for logger in ("aioice.ice", "aiortc.rtcdtlstransport", "aiohttp.access"):
        assert logger in text, f"no record of {logger} in the log"
    assert "DEBUG" in text or '"debug"' in text
    # The libraries did log secrets (the access log: request lines and Referers with
    # keys and tokens; aiortc: whole SDPs): the redaction is what keeps them out.
    assert secrets.found_in(raw.getvalue()), "the workload logged no secret"
    leaks = secrets.found_in(text)
    assert not leaks, "secrets in the DEBUG log:\n" + "\n".join(leaks)


async def _workload(
    http: aiohttp.ClientSession,
    base: str,
    secrets: Secrets,
    peers: list[Peer],
    second_camera_url: str,
) -> None:
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    # The presenter page with its key in the URL, as the README tells presenters.
    async with http.get(f"{base}/?key={PUBLISH_KEY}") as response:
        assert response.status == 200
    # TURN REST credentials handed out by OPTIONS.
    async with http.options(f"{base}/whip/demo") as response:
        links = response.headers.getall("Link")
    turn = [link for link in links if "credential=" in link]
    assert turn, links
    username = re.search(r'username="([^"]+)"', turn[0])[1]  # type: ignore[index]
    credential = re.search(r'credential="([^"]+)"', turn[0])[1]  # type: ignore[index]
    secrets.add("TURN username", username)
    secrets.add("TURN credential", credential)
    # A refused key (almost the right one) and a refused token.
    async with http.post(
        f"{base}/whip/demo",
        data="v=0\r\n",
        headers={
            "Content-Type": "application/sdp",
            "Authorization": f"Bearer {PUBLISH_KEY}x",
        },
    ) as response:
        assert response.status == 401

    # WHIP with the publish key; the answer links to the share page with a view token.
    publisher = await publish(
        http,
        f"{base}/whip/demo",
        headers={"Authorization": f"Bearer {PUBLISH_KEY}"},
    )
    peers.append(publisher)
    secrets.add_peer("publisher", publisher)
    # WHIP with a minted publish token.
    publish_token = tokens.mint(TOKEN_SECRET, tokens.PUBLISH, "minted", 600)
    secrets.add("publish token", publish_token)
    token_publisher = await publish(
        http,
        f"{base}/whip/minted",
        headers={"Authorization": f"Bearer {publish_token}"},
    )
    peers.append(token_publisher)
    secrets.add_peer("token publisher", token_publisher)
    await asyncio.gather(publisher.wait_connected(), token_publisher.wait_connected())

    view_token = tokens.mint(TOKEN_SECRET, tokens.VIEW, "demo", 600)
    secrets.add("view token", view_token)
    # The watch page with its token, and a file it loads with the page as Referer.
    async with http.get(f"{base}/watch/demo?token={view_token}") as response:
        assert response.status == 200
    async with http.get(
        f"{base}/healthz", headers={"Referer": f"{base}/watch/demo?token={view_token}"}
    ) as response:
        assert response.status == 200

    # WHEP: the token as `?token=` (share links) and as Bearer; a camera viewer.
    viewer = await watch(http, f"{base}/whep/demo?token={view_token}")
    peers.append(viewer)
    secrets.add_peer("viewer", viewer)
    minted_view = tokens.mint(TOKEN_SECRET, tokens.VIEW, "minted", 600)
    secrets.add("second view token", minted_view)
    bearer_viewer = await _watch_with_bearer(http, f"{base}/whep/minted", minted_view)
    peers.append(bearer_viewer)
    secrets.add_peer("bearer viewer", bearer_viewer)
    gate_token = tokens.mint(TOKEN_SECRET, tokens.VIEW, "gate", 600)
    secrets.add("camera view token", gate_token)
    camera_viewer = await watch(http, f"{base}/whep/gate?token={gate_token}")
    peers.append(camera_viewer)
    secrets.add_peer("camera viewer", camera_viewer)
    await asyncio.gather(*(p.wait_connected() for p in peers))
    await wait_for(
        lambda: (
            len(viewer.frames.get("video", [])) >= 5
            and len(camera_viewer.frames.get("video", [])) >= 5
        ),
        timeout=20,
        message="the viewers decoded nothing",
    )

    # Events, and the admin API with the admin key: list, show, add a camera, remove.
    async with http.ws_connect(f"{base}/ws") as ws:
        await ws.send_json({"type": "subscribe", "stream": "demo"})
        await asyncio.wait_for(ws.receive_json(), 5)
    async with http.get(f"{base}/api/streams", headers=admin) as response:
        assert response.status == 200
        assert CAMERA_PASSWORD not in await response.text()
    async with http.get(f"{base}/api/streams/gate", headers=admin) as response:
        assert response.status == 200
    async with http.get(f"{base}/metrics", headers=admin) as response:
        assert response.status == 200
    async with http.get(f"{base}/api/streams?key={ADMIN_KEY}x") as response:
        assert response.status in (401, 403)
    async with http.post(
        f"{base}/api/cameras",
        json={"id": "door", "url": second_camera_url, "always_on": True},
        headers=admin,
    ) as response:
        assert response.status == 201, await response.text()
    door_token = tokens.mint(TOKEN_SECRET, tokens.VIEW, "door", 600)
    secrets.add("second camera view token", door_token)
    door_viewer = await watch(http, f"{base}/whep/door?token={door_token}", ("video",))
    peers.append(door_viewer)
    secrets.add_peer("second camera viewer", door_viewer)
    await door_viewer.wait_connected()
    await wait_for(
        lambda: len(door_viewer.frames.get("video", [])) >= 3,
        timeout=20,
        message="the second camera was not decoded",
    )
    # A camera URL with a wrong password: refused by the camera, retried.
    wrong = second_camera_url.replace(SECOND_CAMERA_PASSWORD, "wrong-Pw8Tz1Xc")
    secrets.add("wrong camera password", "wrong-Pw8Tz1Xc")
    async with http.post(
        f"{base}/api/cameras",
        json={"id": "wrong", "url": wrong, "always_on": True},
        headers=admin,
    ) as response:
        assert response.status == 201
    await asyncio.sleep(1.5)

    # Trickle ICE and the end of every session; a stream stopped over the admin API.
    candidate = "a=candidate:1 1 udp 2130706431 127.0.0.1 9 typ host\r\n"
    async with http.patch(
        f"{base}{viewer.location}",
        data=candidate,
        headers={"Content-Type": "application/trickle-ice-sdpfrag", "If-Match": "*"},
    ) as response:
        assert response.status < 500
    for peer in (viewer, door_viewer):
        async with http.delete(f"{base}{peer.location}") as response:
            assert response.status in (200, 204)
    async with http.delete(f"{base}/api/streams/minted", headers=admin) as response:
        assert response.status == 200
    async with http.delete(f"{base}/api/cameras/door", headers=admin) as response:
        assert response.status == 200
    async with http.delete(
        f"{base}{publisher.location}",
        headers={"Authorization": f"Bearer {PUBLISH_KEY}"},
    ) as response:
        assert response.status in (200, 204)


async def _watch_with_bearer(http: aiohttp.ClientSession, url: str, token: str) -> Peer:
    original = http.post

    def post(*args, **kwargs):
        kwargs["headers"] = {
            **kwargs.get("headers", {}),
            "Authorization": f"Bearer {token}",
        }
        return original(*args, **kwargs)

    http.post = post  # type: ignore[method-assign]
    try:
        return await watch(http, url)
    finally:
        http.post = original  # type: ignore[method-assign]


@pytest.mark.parametrize(
    "line",
    [
        "GET /watch/x?token=view.1900000000.%s HTTP/1.1" % ("ab" * 32),
        'POST /whep/x?a=1&token=abc123def456 HTTP/1.1" 201',
        "GET /?key=anything-at-all HTTP/1.1",
        "Authorization: Bearer anything-at-all",
        "a=ice-pwd:abcdefghijklmnopqrstuvwx",
        "DESCRIBE rtsp://admin:anything-at-all@192.0.2.7/stream1 RTSP/1.0",
        'username="1900000000:broadcast"; credential="c2VjcmV0c2VjcmV0"',
    ],
)
def test_redaction_patterns(line: str) -> None:
    redacted = redact_text(line)
    for secret in (
        "ab" * 32,
        "abc123def456",
        "anything-at-all",
        "abcdefghijklmnopqrstuvwx",
        "c2VjcmV0c2VjcmV0",
    ):
        assert secret not in redacted, redacted
