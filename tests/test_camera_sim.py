"""The camera simulator is a real RTSP camera: aiortsp pulls H.264, PCMA and AAC from it.

aiortsp's RTSPMediaSession sets up one media only, so PLAYER drives RTSPConnection and
one RTPTransport per media itself, the way broadcast/ingest/rtsp.py will.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

import pytest
from aiortsp.rtsp.connection import RTSPConnection
from aiortsp.rtsp.errors import RTSPResponseError
from aiortsp.rtsp.sdp import SDP
from aiortsp.rtsp.session import sanitize_rtsp_url
from aiortsp.transport import (
    RTPTransport,
    RTPTransportClient,
    TCPTransport,
    UDPTransport,
)
from dpkt.rtp import RTP

from tests.camera_sim import Auth, Camera, CameraSettings, Protocols, start_camera

pytestmark = pytest.mark.timeout(30)

NAL_IDR, NAL_SPS, NAL_PPS, NAL_STAP_A, NAL_FU_A = 5, 7, 8, 24, 28


@dataclass
class Track(RTPTransportClient):
    """Collect the RTP packets of one media."""

    kind: str
    packets: list[RTP] = field(default_factory=list)
    closed: list[Exception | None] = field(default_factory=list)

    def handle_rtp(self, rtp: RTP) -> None:
        self.packets.append(rtp)

    def handle_closed(self, error: Exception | None) -> None:
        self.closed.append(error)

    def __hash__(self) -> int:  # RTPTransport keeps its clients in a set
        return id(self)

    def nal_types(self) -> set[int]:
        """Return the H.264 NAL unit types carried, looking into STAP-A and FU-A."""
        types: set[int] = set()
        for rtp in self.packets:
            payload = rtp.data
            nal = payload[0] & 0x1F
            if nal == NAL_STAP_A:
                offset = 1
                while offset + 2 < len(payload):
                    size = int.from_bytes(payload[offset : offset + 2], "big")
                    types.add(payload[offset + 2] & 0x1F)
                    offset += 2 + size
            elif nal == NAL_FU_A:
                types.add(payload[1] & 0x1F)
            else:
                types.add(nal)
        return types


@dataclass
class Player:
    connection: RTSPConnection
    sdp_text: str
    sdp: SDP
    tracks: dict[str, Track]


@contextlib.asynccontextmanager
async def play(url: str, lower: str = "tcp", **auth: object) -> AsyncIterator[Player]:
    """DESCRIBE, SETUP every media over `lower` ("tcp" or "udp"), PLAY."""
    parts = urlparse(url)
    async with RTSPConnection(
        parts.hostname, parts.port, parts.username, parts.password, timeout=5, **auth
    ) as connection:
        transports: list[RTPTransport] = []
        try:
            clean_url = sanitize_rtsp_url(url)  # without credentials
            answer = await connection.send_request(
                "DESCRIBE", clean_url, headers={"Accept": "application/sdp"}
            )
            base = answer.headers.get("content-base", clean_url)
            sdp = SDP(answer.content)
            tracks: dict[str, Track] = {}
            session = None
            for media in sdp["medias"]:
                kind = {"tcp": TCPTransport, "udp": UDPTransport}[lower]
                transport = kind(connection, timeout=5)
                await transport.prepare()
                transports.append(transport)
                track = tracks[media["type"]] = Track(media["type"])
                transport.subscribe(track)
                headers: dict[str, str] = {}
                transport.on_transport_request(headers)
                if session:
                    headers["Session"] = session
                control = media.get("attributes", {}).get("control")
                setup = await connection.send_request(
                    "SETUP", sdp.mix_url_control(base, control), headers=headers
                )
                transport.on_transport_response(setup.headers)
                session = setup.headers["session"].split(";")[0]
                await transport.warmup()
            await connection.send_request(
                "PLAY", base, headers={"Session": session, "Range": "npt=0-"}
            )
            yield Player(connection, answer.content, sdp, tracks)
            if connection.running:  # else send_request waits its whole timeout
                await connection.send_request(
                    "TEARDOWN", base, headers={"Session": session}
                )
        finally:
            for transport in transports:
                transport.close()  # TCPTransport.close() also closes the connection


async def wait_for_packets(player: Player, counts: dict[str, int]) -> None:
    """Wait (at most 5 s) until each track has received at least its count."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        got = {kind: len(player.tracks[kind].packets) for kind in counts}
        if all(got[kind] >= count for kind, count in counts.items()):
            return
        await asyncio.sleep(0.05)
    got = {kind: len(track.packets) for kind, track in player.tracks.items()}
    raise AssertionError(f"expected at least {counts} packets, got {got}")


def fmtp(player: Player, kind: str) -> dict[str, Any]:
    media = next(m for m in player.sdp["medias"] if m["type"] == kind)
    return media["attributes"]["fmtp"]


@pytest.mark.parametrize("lower", ["tcp", "udp"])
async def test_camera_sends_h264_with_sprop_parameter_sets(lower: Protocols) -> None:
    async with (
        start_camera(protocols=lower) as camera,
        play(camera.url, lower) as player,
    ):
        assert list(player.tracks) == ["video"]
        rtpmap = player.sdp.get_media("video")["attributes"]["rtpmap"]
        assert (rtpmap["encoding"], rtpmap["clockRate"]) == ("H264", 90000)
        sps, pps = fmtp(player, "video")["sprop-parameter-sets"].split(",")
        assert base64.b64decode(sps)[0] & 0x1F == NAL_SPS
        assert base64.b64decode(pps)[0] & 0x1F == NAL_PPS
        await wait_for_packets(player, {"video": 60})
        video = player.tracks["video"]
        assert {rtp.pt for rtp in video.packets} == {96}
        assert any(rtp.m for rtp in video.packets)  # marker: end of an access unit


async def test_camera_sends_h264_and_pcma_over_tcp() -> None:
    async with start_camera(audio="pcma") as camera, play(camera.url) as player:
        audio = player.sdp.get_media("audio")["attributes"]["rtpmap"]
        assert (audio["encoding"], audio["clockRate"]) == ("PCMA", 8000)
        await wait_for_packets(player, {"video": 30, "audio": 25})
        packets = player.tracks["audio"].packets
        assert {rtp.pt for rtp in packets} == {8}
        assert {len(rtp.data) for rtp in packets[1:-1]} == {160}  # 20 ms at 8 kHz


async def test_camera_sends_h264_and_pcmu_over_udp() -> None:
    async with start_camera(audio="pcmu") as camera, play(camera.url, "udp") as player:
        audio = player.sdp.get_media("audio")["attributes"]["rtpmap"]
        assert (audio["encoding"], audio["clockRate"]) == ("PCMU", 8000)
        await wait_for_packets(player, {"video": 30, "audio": 25})
        assert {rtp.pt for rtp in player.tracks["audio"].packets} == {0}


async def test_camera_sends_h264_and_aac() -> None:
    async with start_camera(audio="aac") as camera, play(camera.url) as player:
        # aiortsp 1.4 misparses "MPEG4-GENERIC/16000/1" (clock rate 1): read the line.
        assert "a=rtpmap:97 MPEG4-GENERIC/16000/1\r\n" in player.sdp_text
        assert fmtp(player, "audio")["mode"] == "AAC-hbr"
        assert fmtp(player, "audio")["config"]  # AudioSpecificConfig, hex
        await wait_for_packets(player, {"video": 30, "audio": 10})
        assert {rtp.pt for rtp in player.tracks["audio"].packets} == {97}


async def test_camera_sends_sps_pps_in_band_before_keyframes_by_default() -> None:
    async with start_camera() as camera, play(camera.url) as player:
        await wait_for_packets(player, {"video": 30})
        await asyncio.sleep(1.1)  # a whole GOP (1 s)
        assert {NAL_IDR, NAL_SPS, NAL_PPS} <= player.tracks["video"].nal_types()


async def test_camera_without_inband_sps_sends_them_only_in_the_sdp() -> None:
    async with start_camera(inband_sps=False) as camera, play(camera.url) as player:
        assert fmtp(player, "video")["sprop-parameter-sets"]
        await wait_for_packets(player, {"video": 30})
        await asyncio.sleep(1.1)
        types = player.tracks["video"].nal_types()
        assert NAL_IDR in types
        assert not {NAL_SPS, NAL_PPS} & types


@pytest.mark.parametrize("method", ["basic", "digest"])
async def test_camera_lets_in_the_right_password_only(method: Auth) -> None:
    async with start_camera(username="admin", password="s3cret", auth=method) as camera:
        assert camera.url.startswith("rtsp://admin:s3cret@127.0.0.1:")
        async with play(camera.url, accept_auth=[method]) as player:
            await wait_for_packets(player, {"video": 10})
        wrong = camera.url.replace(":s3cret@", ":wrong@")
        with pytest.raises(RTSPResponseError) as error:
            async with play(wrong):
                pass
        assert error.value.response.status == 401
        anonymous = camera.url.replace("admin:s3cret@", "")
        with pytest.raises(RTSPResponseError) as error:
            async with play(anonymous):
                pass
        assert error.value.response.status == 401


async def test_camera_offers_only_the_configured_auth_method() -> None:
    async with start_camera(username="a", password="b", auth="digest") as camera:
        # A client that only speaks Basic cannot answer a Digest challenge.
        with pytest.raises(RTSPResponseError) as error:
            async with play(camera.url, accept_auth=["basic"]):
                pass
        challenge = error.value.response.headers["www-authenticate"]
        assert str(challenge).startswith("Digest ")


async def test_tcp_only_camera_refuses_udp() -> None:
    async with start_camera(protocols="tcp") as camera:
        with pytest.raises(RTSPResponseError) as error:
            async with play(camera.url, "udp"):
                pass
        assert error.value.response.status == 461  # Unsupported Transport


async def test_camera_restarts_on_the_same_port() -> None:
    async with start_camera() as camera:
        url = camera.url
        async with play(url) as player:
            await wait_for_packets(player, {"video": 10})
            await camera.restart()
            # aiortsp tells no RTPTransportClient that the connection dropped (only its
            # own no-data timeout does): RTSPConnection.result is the signal.
            await asyncio.wait_for(asyncio.shield(player.connection.result), 5)
            assert not player.connection.running
        assert camera.url == url
        async with play(url) as player:
            await wait_for_packets(player, {"video": 10})


async def test_frozen_camera_sends_nothing_until_thawed() -> None:
    async with start_camera() as camera, play(camera.url) as player:
        await wait_for_packets(player, {"video": 10})
        camera.freeze()
        await asyncio.sleep(0.3)  # let packets in flight arrive
        frozen_at = len(player.tracks["video"].packets)
        await asyncio.sleep(1)
        assert len(player.tracks["video"].packets) == frozen_at
        assert not player.tracks["video"].closed
        camera.thaw()
        await wait_for_packets(player, {"video": frozen_at + 10})


async def test_missing_gstreamer_fails_with_the_packages_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("tests.camera_sim.PYTHON", "/nonexistent/python3")
    with pytest.raises(
        RuntimeError, match=r"apt-get install .*gir1\.2-gst-rtsp-server-1\.0"
    ):
        async with start_camera():
            pass


class SettingsNeedingAnUnknownElement(CameraSettings):
    def elements(self) -> list[str]:
        return [*super().elements(), "nosuchenc"]


async def test_missing_element_fails_naming_it_and_the_packages() -> None:
    camera = Camera(SettingsNeedingAnUnknownElement())
    with pytest.raises(RuntimeError, match=r"(?s)apt-get install .*nosuchenc"):
        await camera.start()
