"""Snapshots: `GET /api/streams/<id>/snapshot.jpg` decodes the latest keyframe of a
live stream (VP8 or H.264 over WHIP, H.264 from an RTSP camera) to a JPEG."""

from __future__ import annotations

import asyncio
import io
import time

import av
import numpy
import pytest

from broadcast.config import RtspCamera, RtspOptions
from broadcast.recording.snapshot import SNAPSHOTS
from broadcast.web_keys import REGISTRY
from tests.camera_sim import start_camera
from tests.peers import HEIGHT, WIDTH, publish, wait_for

ADMIN = {"Authorization": "Bearer adm1n"}


def picture(jpeg: bytes) -> numpy.ndarray:
    """The JPEG decoded by FFmpeg, as RGB rows."""
    with av.open(io.BytesIO(jpeg), "r") as container:
        frame = next(container.decode(video=0))
    return frame.to_ndarray(format="rgb24")


def is_moving_picture(rgb: numpy.ndarray) -> bool:
    """tests/peers.MovingPicture: every row alike, red a ramp, blue 128 (a failed
    decode gives grey or green)."""
    rows_alike = numpy.abs(rgb.astype(int) - rgb[:1].astype(int)).mean() < 8
    blue = abs(float(rgb[..., 2].mean()) - 128) < 12
    return bool(rows_alike and blue and rgb[..., 0].std() > 40)


async def get(http, server, stream_id: str, query: str = "", headers=ADMIN):
    """Status, content type and body of one snapshot request."""
    url = server.make_url(f"/api/streams/{stream_id}/snapshot.jpg{query}")
    async with http.get(url, headers=headers) as response:
        return response.status, response.content_type, await response.read()


async def error_code(http, server, stream_id: str, query: str = "") -> tuple[int, str]:
    url = server.make_url(f"/api/streams/{stream_id}/snapshot.jpg{query}")
    async with http.get(url, headers=ADMIN) as response:
        return response.status, (await response.json())["error"]


def video_track(server, stream_id: str):
    """The stream's video track; None before the stream or its source's description."""
    stream = server.app[REGISTRY].get(stream_id)
    return stream and stream.tracks.get("video")


async def wait_for_keyframe(server, stream_id: str) -> None:
    await wait_for(
        lambda: bool(getattr(video_track(server, stream_id), "gop", None)),
        timeout=15,
        message="no keyframe in the GOP cache",
    )


@pytest.mark.parametrize("codec", ["video/VP8", "video/H264"])
async def test_snapshot_of_a_whip_stream(make_server, http, codec):
    server = await make_server(admin_key="adm1n")
    assert await error_code(http, server, "nobody") == (404, "stream_not_found")
    publisher = await publish(http, str(server.make_url("/whip/s")), video=codec)
    # The stream is there from the WHIP answer; its first keyframe comes after ICE.
    assert await error_code(http, server, "s") == (404, "no_keyframe")
    await wait_for_keyframe(server, "s")

    status, content_type, jpeg = await get(http, server, "s")
    assert (status, content_type) == (200, "image/jpeg")
    rgb = picture(jpeg)
    assert rgb.shape == (HEIGHT, WIDTH, 3)
    assert is_moving_picture(rgb)
    status, _, jpeg = await get(http, server, "s", "?width=160")
    assert status == 200
    assert picture(jpeg).shape == (160 * HEIGHT // WIDTH, 160, 3)

    for bad in ("15", "3841", "abc", "-20", ""):
        assert await error_code(http, server, "s", f"?width={bad}") == (
            400,
            "bad_width",
        )
    for headers in ({}, {"Authorization": "Bearer nope"}):
        status, _, _ = await get(http, server, "s", headers=headers)
        assert status == 401
    await publisher.close()


async def test_snapshot_of_a_camera(make_server, http):
    """H.264 from RTSP, SPS/PPS only in the SDP: the server puts them before the IDR."""
    async with start_camera(inband_sps=False) as cam:
        camera = RtspCamera("cam", cam.url, RtspOptions(always_on=True))
        server = await make_server(admin_key="adm1n", cameras=(camera,))
        await wait_for_keyframe(server, "cam")
        status, _, jpeg = await get(http, server, "cam")
        assert status == 200
        rgb = picture(jpeg)
        assert rgb.shape == (360, 640, 3)
        # The ball pattern: a white ball on black.
        assert numpy.median(rgb) < 40 and rgb.max() > 200
        status, _, jpeg = await get(http, server, "cam", "?width=160")
        assert picture(jpeg).shape == (90, 160, 3)


async def test_one_decode_a_second_and_per_keyframe(make_server, http, monkeypatch):
    """Requests in a row share a decode: within the interval even across a new
    keyframe, and past it while the keyframe is the same (a camera's long GOP)."""
    interval = 2.0  # longer than 1 s: a PLI's keyframe surely comes within it here
    monkeypatch.setattr("broadcast.recording.snapshot.SNAPSHOT_INTERVAL_S", interval)
    server = await make_server(admin_key="adm1n")
    snapshots = server.app[SNAPSHOTS]
    publisher = await publish(http, str(server.make_url("/whip/s")))
    await wait_for_keyframe(server, "s")
    track = video_track(server, "s")

    started = time.monotonic()
    together = await asyncio.gather(*(get(http, server, "s") for _ in range(3)))
    assert snapshots.decodes == 1
    assert len({body for _, _, body in together}) == 1
    first = together[0][2]
    await get(http, server, "s", "?width=160")  # encoded from the same picture
    assert snapshots.decodes == 1

    keyframe = track.gop[0][2:8]
    track.keyframes.request()
    await wait_for(lambda: track.gop[0][2:8] != keyframe, timeout=interval / 2)
    assert time.monotonic() - started < interval
    assert (await get(http, server, "s"))[2] == first
    assert snapshots.decodes == 1

    await asyncio.sleep(interval - (time.monotonic() - started) + 0.1)
    second = (await get(http, server, "s"))[2]
    assert snapshots.decodes == 2
    assert second != first and is_moving_picture(picture(second))

    # aiortc sends a keyframe only when asked: the same one a second later.
    keyframe = track.gop[0][2:8]
    await asyncio.sleep(interval + 0.1)
    assert track.gop[0][2:8] == keyframe
    assert (await get(http, server, "s"))[2] == second
    assert snapshots.decodes == 2
    await publisher.close()
