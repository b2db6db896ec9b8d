"""Encoded fan-out: what a publisher sends reaches every viewer untouched."""

from __future__ import annotations

import asyncio
import importlib

import pytest

from broadcast.media import udp_mux
from broadcast.web_keys import REGISTRY
from tests.peers import HEIGHT, WIDTH, Peer, publish, wait_for, watch

VIEWERS = 10


@pytest.fixture(autouse=True, params=["native", "python"])
def fan_out_path(request, monkeypatch) -> list[str]:
    """Every test here runs on the native fan-out and on the pure-Python path; the
    list returned names the path of each packet the fan-out sent."""
    if request.param == "python":
        monkeypatch.setattr(udp_mux, "NATIVE", False)
    else:
        assert udp_mux.NATIVE, "the native extension is not built"
    paths: list[str] = []
    python_loop, native = (
        udp_mux.fan_out_each,
        importlib.import_module("broadcast.media._fanout"),
    )

    class CountingNative:
        @staticmethod
        def fan_out(*arguments):
            paths.append("native")
            return native.fan_out(*arguments)

        send = staticmethod(native.send)

    def counting_loop(*arguments):
        paths.append("python")
        return python_loop(*arguments)

    monkeypatch.setattr(udp_mux, "fan_out_each", counting_loop)
    monkeypatch.setattr(udp_mux, "_fanout", CountingNative)
    paths.append(request.param)  # the first entry: the path under test
    return paths


def assert_payloads_identical(publisher: Peer, viewer: Peer, kind: str) -> int:
    """Every packet a viewer got carries the bytes the publisher sent; return count."""
    sent = {
        (p.sequence_number, p.timestamp): p.payload
        for p in publisher.sent.packets[publisher.ssrc_of(kind)]
    }
    sent_payloads = set(sent.values())
    checked = 0
    for packets in viewer.received.packets.values():
        for packet in packets:
            if packet.payload not in sent_payloads:
                continue  # the other kind
            # First publisher: sequence numbers and timestamps pass through as sent.
            assert sent[(packet.sequence_number, packet.timestamp)] == packet.payload
            checked += 1
    return checked


@pytest.mark.parametrize(
    "video,audio",
    [
        ("video/VP8", "audio/opus"),
        ("video/H264", "audio/opus"),
        ("video/VP8", "audio/PCMA"),
        ("video/H264", "audio/PCMU"),
    ],
)
async def test_every_viewer_decodes_byte_identical_media(
    server, http, video, audio, fan_out_path
):
    publisher = await publish(http, str(server.make_url("/whip/cam")), video, audio)
    await publisher.wait_connected()
    viewers = await asyncio.gather(
        *(watch(http, str(server.make_url("/whep/cam"))) for _ in range(VIEWERS))
    )
    await asyncio.gather(*(v.wait_connected() for v in viewers))
    await wait_for(
        lambda: all(
            len(v.frames.get("video", [])) >= 15
            and len(v.frames.get("audio", [])) >= 10
            for v in viewers
        ),
        timeout=20,
        message="not every viewer decoded video and audio",
    )
    for viewer in viewers:
        frame = viewer.frames["video"][-1]
        assert (frame.width, frame.height) == (WIDTH, HEIGHT)
        assert viewer.first_frame_at["video"] - viewer.connected_at <= 1.0
        assert assert_payloads_identical(publisher, viewer, "video") >= 15
        assert assert_payloads_identical(publisher, viewer, "audio") >= 10
    stream = server.app[REGISTRY].get("cam")
    assert stream.tracks["video"].resolution == (WIDTH, HEIGHT)  # read from keyframes
    assert {t.codec.mimeType.lower() for t in stream.tracks.values()} == {
        video.lower(),
        audio.lower(),
    }
    # Connected viewers past their keyframe are served by the fan-out, on the path
    # under test only.
    assert all(t.fanned_packets for t in stream.tracks.values())
    path, *used = fan_out_path
    assert used and set(used) == {path}
    for viewer in viewers:
        await viewer.close()
    await publisher.close()


async def test_viewer_gets_no_video_before_a_keyframe(server, http):
    publisher = await publish(http, str(server.make_url("/whip/k")))
    await publisher.wait_connected()
    await asyncio.sleep(1.5)  # the publisher is well past its first keyframe
    viewer = await watch(http, str(server.make_url("/whep/k")), kinds=("video",))
    await viewer.wait_connected()
    await wait_for(lambda: viewer.frames.get("video"), message="no video frame")
    first = min(
        (p for ps in viewer.received.packets.values() for p in ps),
        key=lambda p: p.sequence_number,
    )
    # VP8 payload descriptor with S=1, PID=0, then a key frame header (P bit 0).
    descriptor_size = 1 if not first.payload[0] & 0x80 else 4
    assert first.payload[0] & 0x10
    assert not first.payload[descriptor_size] & 0x01
    await viewer.close()
    await publisher.close()


async def test_a_viewer_joins_the_fan_out_as_its_gate_opens(server, http):
    """Not some packets later: audio has no gate, so none of its packets go one by one;
    video goes one by one only up to the keyframe that opened its gate."""
    publisher = await publish(http, str(server.make_url("/whip/gate")))
    await publisher.wait_connected()
    viewer = await watch(http, str(server.make_url("/whep/gate")))
    await viewer.wait_connected()
    await wait_for(lambda: len(viewer.frames.get("video", [])) >= 5)
    (session,) = server.app[REGISTRY].get("gate").viewers
    tracks = {t.source.kind: t for t in session.tracks}
    assert tracks["audio"]._packets_sent == 0, "audio sent one by one before fan-out"
    video = tracks["video"]
    assert video._fanned_from is not None
    print(f"video packets sent one by one: {video._packets_sent}")
    await asyncio.gather(viewer.close(), publisher.close())
