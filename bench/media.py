"""A benchmark publisher: pre-encoded 720p H.264 and Opus, looped, over WHIP.

Encoding once and looping the packets keeps the publisher's CPU out of the way of the
server it measures (aiortc's RTCRtpSender packetizes an av.Packet without encoding it),
and gives a realistic stream: 1280x720 at 30 fps, ~2 Mbit/s, a keyframe every second.
The publisher logs when it sends each video payload, so that a viewer's decrypted
sample can be timed from publisher to viewer (the server rewrites SSRC, sequence
numbers and timestamps, never payloads).
"""

from __future__ import annotations

import asyncio
import fractions
import time
from dataclasses import dataclass, field

import aiohttp
import av
import numpy
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.rtp import is_rtcp

from broadcast.loadtest.rtp_stats import payload_digest

WIDTH, HEIGHT, FPS = 1280, 720, 30
VIDEO_RATE = 90000
AUDIO_RATE = 48000
AUDIO_FRAME = 960  # 20 ms


@dataclass
class Encoded:
    """Packets of a clip: (bytes, pts in 1/`rate`), and the clip's length in ticks."""

    packets: list[tuple[bytes, int]]
    rate: int
    ticks: int


def _picture(index: int, noise: numpy.ndarray) -> av.VideoFrame:
    """A gradient drifting right over a noise texture drifting down: every frame needs
    fresh bits, as a camera's would."""
    columns = (numpy.arange(WIDTH) + 8 * index) % 256
    image = numpy.broadcast_to(columns.astype(numpy.uint8), (HEIGHT, WIDTH)).copy()
    image += numpy.roll(noise, 4 * index, axis=0)[:HEIGHT, :WIDTH]
    yuv = numpy.concatenate(
        [image, numpy.full((HEIGHT // 2, WIDTH), 128 + (index % 64), numpy.uint8)]
    )
    return av.VideoFrame.from_ndarray(yuv, format="yuv420p")


def encode_video(seconds: int, bitrate: int = 2_000_000) -> Encoded:
    """H.264 constrained baseline, Annex B (SPS/PPS before every IDR), 1 s GOP."""
    codec = av.CodecContext.create("libx264", "w")
    codec.width, codec.height = WIDTH, HEIGHT
    codec.pix_fmt = "yuv420p"
    codec.time_base = fractions.Fraction(1, FPS)
    codec.framerate = fractions.Fraction(FPS, 1)
    codec.bit_rate = bitrate
    codec.profile = "Baseline"
    codec.options = {
        "preset": "veryfast",
        "tune": "zerolatency",
        "x264-params": f"keyint={FPS}:min-keyint={FPS}:scenecut=0"
        f":vbv-maxrate={bitrate // 1000}:vbv-bufsize={bitrate // 1000}",
    }
    noise = numpy.random.default_rng(1).integers(
        0, 48, (2 * HEIGHT, WIDTH), numpy.uint8
    )
    packets = []
    for index in range(seconds * FPS):
        frame = _picture(index, noise)
        frame.pts = index
        for packet in codec.encode(frame):
            packets.append((bytes(packet), index * VIDEO_RATE // FPS))
    for packet in codec.encode(None):
        assert packet.pts is not None  # the encoder stamps what it flushes
        packets.append((bytes(packet), packet.pts * VIDEO_RATE // FPS))
    return Encoded(packets, VIDEO_RATE, seconds * VIDEO_RATE)


def encode_audio(seconds: int) -> Encoded:
    """Opus, 20 ms frames of a tone that glides, so that frames differ."""
    codec = av.CodecContext.create("libopus", "w")
    codec.sample_rate = AUDIO_RATE
    codec.layout = "mono"
    codec.format = "s16"
    codec.bit_rate = 48000
    codec.time_base = fractions.Fraction(1, AUDIO_RATE)
    packets: list[tuple[bytes, int]] = []
    t = numpy.arange(seconds * AUDIO_RATE) / AUDIO_RATE
    wave = (numpy.sin(2 * numpy.pi * (300 + 20 * t) * t) * 8000).astype(numpy.int16)
    for start in range(0, len(wave) - AUDIO_FRAME + 1, AUDIO_FRAME):
        frame = av.AudioFrame.from_ndarray(
            wave[start : start + AUDIO_FRAME].reshape(1, -1),
            format="s16",
            layout="mono",
        )
        frame.sample_rate = AUDIO_RATE
        frame.pts = start
        for packet in codec.encode(frame):
            assert packet.pts is not None  # the encoder stamps what it returns
            packets.append((bytes(packet), packet.pts))
    # The first packet comes early by the encoder's delay: start the clip at 0.
    start = packets[0][1]
    packets = [(data, pts - start) for data, pts in packets]
    return Encoded(packets, AUDIO_RATE, len(packets) * AUDIO_FRAME)


class LoopedPackets(MediaStreamTrack):
    """Plays an encoded clip in real time, forever; timestamps keep rising."""

    def __init__(self, kind: str, clip: Encoded) -> None:
        super().__init__()
        self.kind = kind
        self._clip = clip
        self._time_base = fractions.Fraction(1, clip.rate)
        self._index = 0
        self._start: float | None = None

    async def recv(self) -> av.Packet:
        packets = self._clip.packets
        data, pts = packets[self._index % len(packets)]
        pts += self._index // len(packets) * self._clip.ticks
        self._index += 1
        if self._start is None:
            self._start = time.monotonic()
        await asyncio.sleep(
            max(0.0, self._start + pts / self._clip.rate - time.monotonic())
        )
        packet = av.Packet(data)
        packet.pts = pts
        packet.time_base = self._time_base
        return packet


@dataclass
class SendLog:
    """When each video payload left the publisher, by digest: a looped clip sends the
    same payload once a loop, so a receipt matches the latest send before it."""

    sent: dict[str, list[float]] = field(default_factory=dict)

    def add(self, rtp: bytes) -> None:
        self.sent.setdefault(payload_digest(rtp), []).append(time.monotonic())

    def latencies_ms(self, samples: list[tuple[str, float]]) -> list[float]:
        found = []
        for digest, arrival in samples:
            before = [t for t in self.sent.get(digest, ()) if t <= arrival]
            if before:
                found.append(1000 * (arrival - max(before)))
        return found


@dataclass
class Publisher:
    pc: RTCPeerConnection
    location: str
    log: SendLog

    async def wait_connected(self, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while self.pc.connectionState != "connected":
            if self.pc.connectionState == "failed" or time.monotonic() > deadline:
                raise RuntimeError(f"publisher {self.pc.connectionState}")
            await asyncio.sleep(0.05)


def _prefer(pc: RTCPeerConnection, kind: str, mime: str, fmtp: dict[str, str]) -> None:
    codecs = [
        c
        for c in RTCRtpSender.getCapabilities(kind).codecs
        if c.mimeType.lower() == mime and fmtp.items() <= c.parameters.items()
    ]
    for transceiver in pc.getTransceivers():
        if transceiver.kind == kind:
            transceiver.setCodecPreferences(codecs)


async def whip_exchange(
    http: aiohttp.ClientSession, url: str, pc: RTCPeerConnection
) -> str:
    """Offer `pc` over WHIP, take the answer; return the session URL."""
    await pc.setLocalDescription(await pc.createOffer())
    headers = {"Content-Type": "application/sdp"}
    async with http.post(
        url, data=pc.localDescription.sdp, headers=headers
    ) as response:
        answer = await response.text()
        if response.status != 201:
            await pc.close()
            raise RuntimeError(f"WHIP {url} answered {response.status}: {answer}")
        location = response.headers["Location"]
    await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
    return location


async def publish(
    http: aiohttp.ClientSession, url: str, video: Encoded, audio: Encoded
) -> Publisher:
    """Publish the clips over WHIP; log the send time of every video payload."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    video_sender = pc.addTransceiver(LoopedPackets("video", video), "sendonly").sender
    pc.addTransceiver(LoopedPackets("audio", audio), "sendonly")
    h264 = {"packetization-mode": "1", "profile-level-id": "42e01f"}
    _prefer(pc, "video", "video/h264", h264)
    _prefer(pc, "audio", "audio/opus", {})
    location = await whip_exchange(http, url, pc)
    log = SendLog()
    transport = video_sender.transport
    send = transport._send_rtp
    ssrc = video_sender._ssrc.to_bytes(4, "big")

    async def send_and_log(data: bytes) -> None:
        if data[8:12] == ssrc and not is_rtcp(data):
            log.add(data)
        await send(data)

    transport._send_rtp = send_and_log  # type: ignore[method-assign]
    return Publisher(pc, location, log)
