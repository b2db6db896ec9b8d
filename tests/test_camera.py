"""IP cameras over RTSP (a real GStreamer RTSP server) reach WebRTC viewers."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest

from broadcast.config import RtspCamera, RtspOptions
from broadcast.media.h264 import NAL_FU_A, NAL_IDR, NAL_PPS, NAL_SPS, NAL_STAP_A
from broadcast.web_keys import REGISTRY, WORKERS
from tests.camera_sim import start_camera
from tests.peers import recvonly_offer, wait_for, watch
from tests.test_server import self_signed

# What aiortc decodes each codec to (PCMA and PCMU are 8 kHz, Opus always 48 kHz).
SAMPLE_RATES = {"pcma": 8000, "pcmu": 8000, "opus": 48000}


# WHEP POST to first frame for a viewer started from the cached GOP: ~0.1 s here; one
# that waits for the camera's next IDR in these tests waits a second or more.
FROM_THE_CACHE_S = 0.5


def camera(url: str, **options: object) -> tuple[RtspCamera, ...]:
    return (RtspCamera("cam", url, RtspOptions(**options)),)  # type: ignore[arg-type]


def decoded(viewer, kind: str) -> int:
    return len(viewer.frames.get(kind, []))


@pytest.mark.parametrize(
    "audio,transport,inband_sps",
    [("pcma", "tcp", True), ("pcmu", "udp", True), ("opus", "tcp", False)],
)
async def test_viewers_decode_a_camera(make_server, http, audio, transport, inband_sps):
    """Each audio codec a camera sends is forwarded as is: PCMA, PCMU, Opus."""
    async with start_camera(audio=audio, inband_sps=inband_sps) as cam:
        server = await make_server(cameras=camera(cam.url, transport=transport))
        viewers = [
            await watch(http, str(server.make_url("/whep/cam"))) for _ in range(2)
        ]
        await asyncio.gather(*(v.wait_connected() for v in viewers))
        await wait_for(
            lambda: all(decoded(v, "video") >= 10 for v in viewers),
            timeout=15,
            message="camera video not decoded",
        )
        for viewer in viewers:
            frame = viewer.frames["video"][-1]
            assert (frame.width, frame.height) == (640, 360)
            await wait_for(lambda v=viewer: decoded(v, "audio") > 5, timeout=5)
            assert viewer.frames["audio"][-1].sample_rate == SAMPLE_RATES[audio]
        stream = server.app[REGISTRY].get("cam")
        assert stream.tracks["audio"].codec.mimeType.lower() == f"audio/{audio}"
        assert stream.state == "live"
        assert stream.tracks["video"].resolution == (640, 360)
        await asyncio.gather(*(v.close() for v in viewers))


async def test_camera_reboot_brings_the_same_viewers_back(
    make_server, http, monkeypatch
):
    monkeypatch.setattr("broadcast.ingest.camera.RETRY_MAX_S", 1.0)
    async with start_camera() as cam:
        server = await make_server(cameras=camera(cam.url))
        stream = server.app[REGISTRY].get("cam")
        viewer = await watch(http, str(server.make_url("/whep/cam")), ("video",))
        await viewer.wait_connected()
        await wait_for(lambda: decoded(viewer, "video") >= 10, timeout=10)
        await cam.stop()
        await wait_for(lambda: stream.state == "reconnecting", timeout=10)
        assert stream.problem
        before = decoded(viewer, "video")
        await cam.restart()
        await wait_for(
            lambda: stream.state == "live", timeout=15, message=stream.problem
        )
        await wait_for(
            lambda: decoded(viewer, "video") >= before + 10,
            timeout=10,
            message="the viewer saw nothing after the camera came back",
        )
        await viewer.close()


async def test_frozen_camera_is_detected_and_pulled_again(
    make_server, http, monkeypatch
):
    monkeypatch.setattr("broadcast.ingest.rtsp.MEDIA_TIMEOUT_S", 1.0)
    monkeypatch.setattr("broadcast.ingest.camera.RETRY_MAX_S", 1.0)
    async with start_camera() as cam:
        server = await make_server(cameras=camera(cam.url, always_on=True))
        stream = server.app[REGISTRY].get("cam")
        await wait_for(lambda: stream.state == "live", timeout=10)
        cam.freeze()
        await wait_for(lambda: stream.state == "reconnecting", timeout=10)
        cam.thaw()
        await wait_for(
            lambda: stream.state == "live", timeout=15, message=stream.problem
        )


async def test_wrong_password_is_a_clear_state_and_never_leaks(
    make_server, http, caplog
):
    caplog.set_level(logging.DEBUG)
    async with start_camera(username="admin", password="right-pass") as cam:
        url = cam.url.replace("right-pass", "s3cr3t-wrong")
        server = await make_server(cameras=camera(url))
        async with http.ws_connect(server.make_url("/ws")) as ws:
            await ws.send_json({"type": "subscribe", "stream": "cam"})
            async with http.post(
                server.make_url("/whep/cam"),
                data=(await recvonly_offer()),
                headers={"Content-Type": "application/sdp"},
            ) as response:
                body = await response.json()
                assert response.status == 503 and body["error"] == "camera_unavailable"
                assert "401" in body["message"]
            events = []
            while not any(e.get("state") == "reconnecting" for e in events):
                events.append(await asyncio.wait_for(ws.receive_json(), 10))
        stream = server.app[REGISTRY].get("cam")
        assert "credentials" in (stream.problem or "")
        async with http.get(server.make_url("/metrics")) as r:
            metrics = await r.text()
    everything = caplog.text + str(events) + str(body) + metrics
    assert "s3cr3t-wrong" not in everything and "admin:" not in everything


async def test_on_demand_camera_connects_for_viewers_and_lets_go_after(
    make_server, http, monkeypatch
):
    monkeypatch.setattr("broadcast.ingest.camera.IDLE_TIMEOUT_S", 0.5)
    async with start_camera() as cam:
        server = await make_server(cameras=camera(cam.url))
        stream = server.app[REGISTRY].get("cam")
        await asyncio.sleep(0.5)
        assert stream.state == "waiting" and "video" not in stream.tracks
        viewer = await watch(http, str(server.make_url("/whep/cam")), ("video",))
        await viewer.wait_connected()
        await wait_for(lambda: decoded(viewer, "video") >= 5, timeout=10)
        assert stream.state == "live"
        await viewer.close()
        await wait_for(
            lambda: stream.state == "waiting", timeout=10, message=stream.state
        )


async def test_camera_aac_reaches_viewers_as_opus(make_server, http):
    async with start_camera(audio="aac") as cam:
        server = await make_server(cameras=camera(cam.url))
        viewer = await watch(http, str(server.make_url("/whep/cam")))
        await viewer.wait_connected()
        await wait_for(
            lambda: decoded(viewer, "audio") >= 20 and decoded(viewer, "video") >= 5,
            timeout=15,
            message=f"decoded {viewer.frames.keys()}",
        )
        stream = server.app[REGISTRY].get("cam")
        assert stream.tracks["audio"].codec.mimeType == "audio/opus"
        assert viewer.frames["audio"][-1].sample_rate == 48000
        await viewer.close()


async def test_cameras_are_added_and_removed_through_the_admin_api(make_server, http):
    admin = {"Authorization": "Bearer k"}
    async with start_camera() as cam:
        server = await make_server(admin_key="k")
        url = server.make_url("/api/cameras")
        bad_bodies = (
            {},
            {"id": "x"},
            {"id": "bad id", "url": cam.url},
            {"id": "x", "url": "http://h/"},
        )
        for bad in bad_bodies:
            async with http.post(url, json=bad, headers=admin) as r:
                assert r.status == 400 and (await r.json())["error"] == "bad_camera"
        async with http.post(
            url, json={"id": "door", "url": cam.url}, headers=admin
        ) as r:
            assert r.status == 201
            body = await r.json()
            assert body["watch"] == "/watch/door" and body["source"] == "rtsp"
            assert "@" not in str(body)
        async with http.post(
            url, json={"id": "door", "url": cam.url}, headers=admin
        ) as r:
            assert r.status == 409
        viewer = await watch(http, str(server.make_url("/whep/door")), ("video",))
        await viewer.wait_connected()
        await wait_for(lambda: decoded(viewer, "video") >= 5, timeout=10)
        async with http.delete(
            server.make_url("/api/cameras/door"), headers=admin
        ) as r:
            assert r.status == 200
        assert server.app[REGISTRY].get("door") is None
        await viewer.close()


async def test_unreachable_camera_says_so_and_keeps_trying(make_server, http):
    server = await make_server(
        cameras=camera("rtsp://127.0.0.1:9/nothing", always_on=True)
    )
    stream = server.app[REGISTRY].get("cam")
    await wait_for(lambda: stream.state == "reconnecting", timeout=10)
    assert stream.problem == "cannot connect to the camera"
    async with http.get(server.make_url("/healthz")) as r:
        assert r.status == 200  # the server itself is fine


@pytest.mark.parametrize(
    "settings,join_at_s",
    [
        # SPS/PPS only in the SDP's sprop-parameter-sets (rtph264pay config-interval=0).
        ({"inband_sps": False, "gop_s": 2.0}, 0.5),
        # A 5 s GOP at 6 Mbit/s: ~2,400 packets cached when the viewers join.
        ({"gop_s": 5.0, "bitrate_kbps": 6000, "width": 320, "height": 240}, 4.0),
    ],
    ids=["sprop-only", "long-gop"],
)
async def test_viewers_joining_mid_gop_start_from_the_cache_on_main_and_worker(
    make_server, http, settings, join_at_s
):
    """Whatever the camera sends in band and however long its GOP, a joining viewer
    starts from the cached GOP, on the main process and on a worker."""
    async with start_camera(**settings) as cam:
        server = await make_server(workers=2, cameras=camera(cam.url, always_on=True))
        (worker,) = server.app[WORKERS].workers
        stream = server.app[REGISTRY].get("cam")
        await wait_for(
            lambda: "video" in stream.tracks and stream.tracks["video"].packets_in,
            message="the camera sent no video",
        )
        await asyncio.sleep(join_at_s)  # the camera's first packet opens its first GOP
        cached = len(stream.tracks["video"].gop)
        asked = time.monotonic()
        viewers = [
            await watch(http, str(server.make_url("/whep/cam")), ("video",))
            for _ in range(2)
        ]
        await asyncio.gather(*(v.wait_connected() for v in viewers))
        assert len(worker.viewers) == 1  # one viewer on each process
        await wait_for(
            lambda: all(decoded(v, "video") for v in viewers),
            timeout=settings["gop_s"],
            message="a camera viewer got no picture",
        )
        for where, viewer in zip(("main", "worker"), viewers, strict=True):
            print(
                f"{where}: WHEP POST to first frame"
                f" {(viewer.first_frame_at['video'] - asked) * 1000:.0f} ms,"
                f" {join_at_s:g} s into a {settings['gop_s']:g} s GOP"
                f" ({cached} packets cached)"
            )
        for viewer in viewers:
            assert viewer.first_frame_at["video"] - asked < FROM_THE_CACHE_S
            assert {"SPS", "PPS", "IDR from its first slice"} <= first_picture(viewer)
        await asyncio.gather(*(v.close() for v in viewers))


def first_picture(viewer) -> set[str]:
    """What the first picture a viewer received holds: its decoder starts there."""
    packets = next(iter(viewer.received.packets.values()))
    found: set[str] = set()
    for packet in packets:
        if packet.timestamp != packets[0].timestamp:
            continue
        for nal_type, first_byte in nal_unit_starts(packet.payload):
            if nal_type in (NAL_SPS, NAL_PPS):
                found.add("SPS" if nal_type == NAL_SPS else "PPS")
            # first_mb_in_slice = 0: the slice header's first bit is 1 (H.264 §7.3.3).
            elif nal_type == NAL_IDR and first_byte & 0x80:
                found.add("IDR from its first slice")
    return found


def nal_unit_starts(payload: bytes) -> list[tuple[int, int]]:
    """Type and first byte after the header of each NAL unit a packet starts
    (RFC 6184 §5.6-5.8)."""
    nal_type = payload[0] & 0x1F
    if nal_type == NAL_FU_A:
        return [(payload[1] & 0x1F, payload[2])] if payload[1] & 0x80 else []
    if nal_type != NAL_STAP_A:
        return [(nal_type, payload[1])]
    starts, offset = [], 1
    while offset + 3 < len(payload):
        starts.append((payload[offset + 2] & 0x1F, payload[offset + 3]))
        offset += 2 + int.from_bytes(payload[offset : offset + 2], "big")
    return starts


async def test_viewers_waiting_for_a_camera_do_not_all_take_its_last_place(
    make_server, http
):
    """The per-stream limit is checked again once an on-demand camera plays: requests
    that waited for it together were all let in past the limit."""
    async with start_camera() as cam:
        server = await make_server(cameras=camera(cam.url), max_viewers_per_stream=1)
        offers = [await recvonly_offer() for _ in range(2)]
        answers = await asyncio.gather(
            *(
                http.post(
                    server.make_url("/whep/cam"),
                    data=offer,
                    headers={"Content-Type": "application/sdp"},
                )
                for offer in offers
            )
        )
        statuses = sorted(r.status for r in answers)
        for response in answers:
            response.release()
        assert statuses == [201, 503], statuses


def camera_certificate(directory: Path) -> Path:
    """A self-signed certificate for 127.0.0.1 and its key in one PEM file, as IP
    cameras (and the TURN server of tests/test_doctor.py) have."""
    cert, key = self_signed(directory, ip="127.0.0.1")
    pem = directory / "camera.pem"
    pem.write_bytes(Path(cert).read_bytes() + Path(key).read_bytes())
    return pem


async def test_an_rtsps_camera_is_verified_unless_told_otherwise(
    make_server, http, tmp_path
):
    """A self-signed camera is refused by default, with a problem saying what to do;
    trusted with its certificate in tls_ca, or with tls_verify false, it plays."""
    pem = camera_certificate(tmp_path)
    async with start_camera(tls_pem=str(pem)) as cam:
        assert cam.url.startswith("rtsps://")
        server = await make_server(
            cameras=(
                RtspCamera("strict", cam.url, RtspOptions(always_on=True)),
                RtspCamera("pinned", cam.url, RtspOptions(tls_ca=str(pem))),
                RtspCamera("trusting", cam.url, RtspOptions(tls_verify=False)),
            )
        )
        registry = server.app[REGISTRY]
        strict = registry.get("strict")
        await wait_for(lambda: strict.problem is not None, timeout=15)
        assert "certificate is not trusted" in strict.problem
        assert "tls_ca" in strict.problem and "tls_verify" in strict.problem
        for stream_id in ("pinned", "trusting"):
            viewer = await watch(http, str(server.make_url(f"/whep/{stream_id}")))
            await wait_for(
                lambda v=viewer: decoded(v, "video") >= 5,
                timeout=15,
                message=f"{stream_id}: {registry.get(stream_id).problem}",
            )
            await viewer.close()
