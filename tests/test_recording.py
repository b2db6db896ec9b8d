"""Recording: a stream's packets remuxed to a file (VP8 + Opus to WebM, H.264 + Opus to
fragmented MP4), started and stopped over the API or from the config, listed, served
with range requests and deleted; names from requests never leave the directory."""

from __future__ import annotations

import asyncio
import itertools
import time
from pathlib import Path

import av
import pytest

from broadcast.config import RtspCamera, RtspOptions
from broadcast.recording.recordings import RECORDINGS
from broadcast.web_keys import REGISTRY
from tests.camera_sim import start_camera
from tests.peers import HEIGHT, WIDTH, publish, wait_for

ADMIN = {"Authorization": "Bearer adm1n"}


def read_file(path: Path) -> dict:
    """What PyAV finds in a recording: its duration (from the last packet), the video
    size, whether it has audio, and whether each track's timestamps only grow."""
    with av.open(str(path)) as container:
        video = container.streams.video[0] if container.streams.video else None
        size = (
            (video.codec_context.width, video.codec_context.height) if video else None
        )
        audio_packets = 0
        last: dict[int, int] = {}
        monotonic = True
        end = 0.0
        keyframe_first = None
        for packet in container.demux():
            if packet.dts is None:
                continue
            index = packet.stream.index
            audio_packets += packet.stream.type == "audio"
            if packet.stream.type == "video" and keyframe_first is None:
                keyframe_first = packet.is_keyframe
            if index in last and packet.dts <= last[index]:
                monotonic = False
            last[index] = packet.dts
            pts = packet.dts if packet.pts is None else packet.pts
            end = max(end, float((pts + (packet.duration or 0)) * packet.time_base))
        decoded = 0
        container.seek(0)
        for _ in container.decode(video=0) if video else ():
            decoded += 1
    return {
        "duration": end,
        "size": size,
        "audio": audio_packets,
        "monotonic": monotonic,
        "keyframe_first": keyframe_first,
        "decoded": decoded,
    }


def video_gop(server, stream_id: str) -> list[bytes]:
    stream = server.app[REGISTRY].get(stream_id)
    track = stream and stream.tracks.get("video")
    return track.gop if track else []


async def api(http, server, method: str, path: str, **kwargs):
    async with http.request(
        method, server.make_url(path), headers=ADMIN, **kwargs
    ) as response:
        body = (
            await response.json()
            if response.content_type == "application/json"
            else await response.read()
        )
        return response.status, body


@pytest.mark.parametrize(
    ("codec", "extension"), [("video/VP8", "webm"), ("video/H264", "mp4")]
)
async def test_record_a_whip_stream(make_server, http, tmp_path, codec, extension):
    server = await make_server(admin_key="adm1n", recording_dir=str(tmp_path))
    events = []
    server.app[RECORDINGS]._events.listen("s", events.append)
    publisher = await publish(http, str(server.make_url("/whip/s")), video=codec)
    await wait_for(lambda: bool(video_gop(server, "s")), timeout=15)
    status, body = await api(http, server, "POST", "/api/streams/s/recording")
    assert status == 201, body
    assert body["state"] == "recording"
    status, body = await api(http, server, "POST", "/api/streams/s/recording")
    assert (status, body["error"]) == (409, "already_recording")
    started = time.monotonic()
    await asyncio.sleep(10)
    status, body = await api(http, server, "DELETE", "/api/streams/s/recording")
    recorded_s = time.monotonic() - started
    assert status == 200, body
    name = body["file"]
    assert name.startswith("s-") and name.endswith(f".{extension}")
    found = read_file(tmp_path / name)
    assert abs(found["duration"] - recorded_s) <= 1.0, (found, recorded_s)
    assert found["size"] == (WIDTH, HEIGHT)
    assert found["audio"] >= 10 * 40  # 20 ms Opus frames
    assert found["monotonic"] and found["keyframe_first"], found
    assert found["decoded"] >= 10 * 20  # aiortc sends ~30 fps
    status, listing = await api(http, server, "GET", "/api/recordings")
    assert status == 200
    (entry,) = listing
    assert entry["file"] == name and entry["state"] == "done" and entry["stream"] == "s"
    assert abs(entry["duration"] - found["duration"]) < 0.5
    assert entry["size"] == (tmp_path / name).stat().st_size
    assert [e["event"] for e in events if e["type"] == "recording"] == [
        "started",
        "stopped",
    ]
    await publisher.pc.close()


def recorded_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.suffix in (".mp4", ".webm"))


async def test_a_publisher_reconnect_continues_the_same_file_with_its_gap(
    make_server, http, tmp_path
):
    """`record_all` records from the first packet; the outage is in the file as a gap
    of its length, not squeezed out, and the file goes on."""
    server = await make_server(
        record_all=True, reconnect_grace_s=10, recording_dir=str(tmp_path)
    )
    url = str(server.make_url("/whip/re"))
    first = await publish(http, url)
    await wait_for(lambda: bool(recorded_files(tmp_path)), timeout=15)
    await asyncio.sleep(3)
    stream = server.app[REGISTRY].get("re")
    await first.close()
    await wait_for(lambda: stream.state == "reconnecting", message=stream.state)
    gone_at = time.monotonic()
    await asyncio.sleep(2)
    second = await publish(http, url)
    await wait_for(lambda: stream.state == "live", timeout=15)
    outage_s = time.monotonic() - gone_at
    await asyncio.sleep(3)
    await second.close()
    await stream.close()
    await server.app[RECORDINGS].close()
    (path,) = recorded_files(tmp_path)
    with av.open(str(path)) as container:
        times = [
            float(packet.pts * packet.time_base)
            for packet in container.demux(video=0)
            if packet.pts is not None
        ]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert max(gaps) >= outage_s - 0.5, (max(gaps), outage_s)
    assert times[-1] - times[0] >= 3 + outage_s + 2


async def test_files_roll_at_a_keyframe_after_max_file_minutes(
    make_server, http, tmp_path
):
    server = await make_server(
        admin_key="adm1n",
        recording_dir=str(tmp_path),
        recording_max_file_minutes=0.05,  # 3 s
    )
    publisher = await publish(http, str(server.make_url("/whip/s")), video="video/H264")
    await wait_for(lambda: bool(video_gop(server, "s")), timeout=15)
    assert (await api(http, server, "POST", "/api/streams/s/recording"))[0] == 201
    await wait_for(lambda: len(recorded_files(tmp_path)) >= 3, timeout=20)
    status, _ = await api(http, server, "DELETE", "/api/streams/s/recording")
    assert status == 200
    files = recorded_files(tmp_path)
    for path in files[:-1]:  # each starts at a keyframe and holds about 3 s
        found = read_file(path)
        assert found["keyframe_first"] and found["size"] == (WIDTH, HEIGHT)
        assert 2.9 <= found["duration"] <= 3 + 4, found  # aiortc: a keyframe ~3 s
    await publisher.close()


async def test_a_camera_with_record_true_is_recorded_from_start(make_server, tmp_path):
    """H.264 and AAC from a GStreamer RTSP camera: the file has the camera's size and
    its sound (as the Opus viewers get)."""
    async with start_camera(audio="aac", width=640, height=360) as camera:
        server = await make_server(
            admin_key="adm1n",
            recording_dir=str(tmp_path),
            cameras=(RtspCamera("cam", camera.url, RtspOptions(record=True)),),
        )
        await wait_for(lambda: bool(recorded_files(tmp_path)), timeout=20)
        started = time.monotonic()
        await asyncio.sleep(10)
        stream = server.app[REGISTRY].get("cam")
        await stream.close()
        recorded_s = time.monotonic() - started
        await server.app[RECORDINGS].close()
    (path,) = recorded_files(tmp_path)
    assert path.suffix == ".mp4"
    found = read_file(path)
    assert found["size"] == (640, 360)
    assert found["audio"] >= 9 * 40 and found["monotonic"] and found["keyframe_first"]
    assert abs(found["duration"] - recorded_s) <= 1.0 + 1.0, (found, recorded_s)


async def test_recording_an_on_demand_camera_pulls_it_without_viewers(
    make_server, http, tmp_path
):
    async with start_camera() as camera:
        server = await make_server(
            admin_key="adm1n",
            recording_dir=str(tmp_path),
            cameras=(RtspCamera("cam", camera.url),),
        )
        stream = server.app[REGISTRY].get("cam")
        assert stream.state == "waiting" and not stream.tracks  # nobody watches
        status, body = await api(http, server, "POST", "/api/streams/cam/recording")
        assert status == 201, body
        await wait_for(lambda: bool(recorded_files(tmp_path)), timeout=20)
        await asyncio.sleep(2)
        status, body = await api(http, server, "DELETE", "/api/streams/cam/recording")
        assert status == 200 and body["duration"] >= 1.5, body
        assert not stream.recorded


@pytest.mark.parametrize("codec", ["video/VP8", "video/H264"])
async def test_a_change_of_picture_size_stays_in_the_same_file(
    make_server, http, tmp_path, codec
):
    """Browsers change their size with their network: one file, every frame decodes."""
    server = await make_server(admin_key="adm1n", recording_dir=str(tmp_path))
    publisher = await publish(http, str(server.make_url("/whip/s")), video=codec)
    await wait_for(lambda: bool(video_gop(server, "s")), timeout=15)
    assert (await api(http, server, "POST", "/api/streams/s/recording"))[0] == 201
    await asyncio.sleep(2)
    publisher.tracks[0].size = (WIDTH // 2, HEIGHT // 2)
    await asyncio.sleep(3)
    assert (await api(http, server, "DELETE", "/api/streams/s/recording"))[0] == 200
    (path,) = recorded_files(tmp_path)
    with av.open(str(path)) as container:
        sizes = [(frame.width, frame.height) for frame in container.decode(video=0)]
    assert sizes[0] == (WIDTH, HEIGHT) and sizes[-1] == (WIDTH // 2, HEIGHT // 2)
    assert len(sizes) >= 4 * 20
    await publisher.close()
