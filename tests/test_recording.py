"""Recording: a stream's packets remuxed to a file (VP8 + Opus to WebM, H.264 + Opus to
fragmented MP4), started and stopped over the API or from the config, listed, served
with range requests and deleted; names from requests never leave the directory."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import av
import pytest

from broadcast.recording.recordings import RECORDINGS
from broadcast.web_keys import REGISTRY
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
            end = max(
                end, float((packet.pts + (packet.duration or 0)) * packet.time_base)
            )
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
