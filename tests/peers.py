"""Real WebRTC peers for the tests: aiortc publishers and viewers speaking WHIP/WHEP.

They record the RTP they send and receive (decrypted, as bytes) so that tests can check
that payloads cross the server byte for byte.
"""

from __future__ import annotations

import asyncio
import fractions
import math
import re
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
from aiortc.mediastreams import (
    AUDIO_PTIME,
    VIDEO_CLOCK_RATE,
    VIDEO_PTIME,
    MediaStreamError,
)
from aiortc.rtp import RtpPacket, is_rtcp

WIDTH, HEIGHT = 320, 240


class MovingPicture(MediaStreamTrack):
    """A synthetic camera: a moving gradient, so every frame encodes differently."""

    kind = "video"

    def __init__(self) -> None:
        super().__init__()
        self._start: float | None = None
        self._pts = 0
        self.size = (WIDTH, HEIGHT)  # a test may change it mid-stream

    async def recv(self) -> av.VideoFrame:
        if self._start is None:
            self._start = time.time()
        else:
            self._pts += int(VIDEO_PTIME * VIDEO_CLOCK_RATE)
            wait = self._start + self._pts / VIDEO_CLOCK_RATE - time.time()
            await asyncio.sleep(max(wait, 0))
        # Modulo first: uint16 + 65,536 overflows (numpy 2) at frame 65,536, 36 min in.
        shift = self._pts // 3000 % 256
        width, height = self.size
        row = (numpy.arange(width, dtype=numpy.uint16) + shift) % 256
        image = numpy.broadcast_to(row.astype(numpy.uint8), (height, width))
        rgb = numpy.stack([image, image[:, ::-1], numpy.full_like(image, 128)], axis=2)
        frame = av.VideoFrame.from_ndarray(numpy.ascontiguousarray(rgb), format="rgb24")
        frame.pts = self._pts
        frame.time_base = fractions.Fraction(1, VIDEO_CLOCK_RATE)
        return frame


class Tone(MediaStreamTrack):
    """A 440 Hz tone in 20 ms frames."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._start: float | None = None
        self._pts = 0

    async def recv(self) -> av.AudioFrame:
        rate = 48000
        samples = int(AUDIO_PTIME * rate)
        if self._start is None:
            self._start = time.time()
        else:
            self._pts += samples
            await asyncio.sleep(max(self._start + self._pts / rate - time.time(), 0))
        t = (numpy.arange(samples) + self._pts) / rate
        wave = (numpy.sin(2 * math.pi * 440 * t) * 8000).astype(numpy.int16)
        frame = av.AudioFrame.from_ndarray(
            wave.reshape(1, -1), format="s16", layout="mono"
        )
        frame.pts = self._pts
        frame.sample_rate = rate
        frame.time_base = fractions.Fraction(1, rate)
        return frame


@dataclass
class RtpLog:
    """RTP packets seen by one peer, decrypted, by SSRC."""

    packets: dict[int, list[RtpPacket]] = field(default_factory=dict)
    arrival: dict[int, list[float]] = field(default_factory=dict)

    def add(self, data: bytes) -> None:
        packet = RtpPacket.parse(data)
        self.packets.setdefault(packet.ssrc, []).append(packet)
        self.arrival.setdefault(packet.ssrc, []).append(time.monotonic())


def _record_sent(pc: RTCPeerConnection, log: RtpLog) -> None:
    """Record every RTP packet the peer protects and sends."""
    for transceiver in pc.getTransceivers():
        transport = transceiver.sender.transport
        if getattr(transport, "_recorded", False):
            continue
        transport._recorded = True  # type: ignore[attr-defined]  # our own mark
        send = transport._send_rtp

        async def send_and_record(data: bytes, send=send) -> None:
            if not is_rtcp(data):
                log.add(data)
            await send(data)

        transport._send_rtp = send_and_record  # type: ignore[method-assign]  # the tap


def _record_received(pc: RTCPeerConnection, log: RtpLog, drop=None) -> None:
    """Record every decrypted RTP packet.

    `drop(packet)` True loses a packet on the wire, before SRTP: its retransmission
    must then get through the receiver's replay protection, as in real life.
    """
    for transceiver in pc.getTransceivers():
        transport = transceiver.receiver.transport
        if getattr(transport, "_recorded", False):
            continue
        transport._recorded = True  # type: ignore[attr-defined]  # our own mark
        handle = transport._handle_rtp_data

        async def handle_and_record(
            data: bytes, arrival_time_ms: int, handle=handle
        ) -> None:
            log.add(data)
            await handle(data, arrival_time_ms)

        transport._handle_rtp_data = handle_and_record  # type: ignore[method-assign]  # the tap
        if drop is not None:
            ice = transport.transport
            receive = ice._recv

            async def lossy_receive(receive=receive) -> bytes:
                while True:
                    data = await receive()
                    if not (127 < data[0] < 192 and not is_rtcp(data) and drop(data)):
                        return data

            ice._recv = lossy_receive


def _prefer(pc: RTCPeerConnection, kind: str, mime_type: str) -> None:
    capabilities = RTCRtpSender.getCapabilities(kind)
    codecs = [c for c in capabilities.codecs if c.mimeType.lower() == mime_type.lower()]
    if mime_type.lower() == "video/h264":
        codecs = [c for c in codecs if c.parameters.get("packetization-mode") == "1"]
    rtx = [c for c in capabilities.codecs if c.mimeType.lower() == f"{kind}/rtx"]
    for transceiver in pc.getTransceivers():
        if transceiver.kind == kind:
            transceiver.setCodecPreferences(codecs + rtx)


@dataclass
class Peer:
    pc: RTCPeerConnection
    location: str
    etag: str
    sent: RtpLog
    received: RtpLog
    tracks: list[MediaStreamTrack] = field(default_factory=list)
    connected_at: float | None = None
    answered_by: str = ""  # the URL that answered the offer (after any redirect)

    async def wait_connected(self, timeout: float = 10) -> None:
        async def connected() -> None:
            while self.pc.connectionState != "connected":
                if self.pc.connectionState in ("failed", "closed"):
                    raise AssertionError(f"peer connection {self.pc.connectionState}")
                await asyncio.sleep(0.01)
            self.connected_at = time.monotonic()

        await asyncio.wait_for(connected(), timeout)

    def ssrc_of(self, kind: str) -> int:
        """The SSRC this peer sends `kind` with."""
        for transceiver in self.pc.getTransceivers():
            if transceiver.kind == kind:
                return transceiver.sender._ssrc
        raise KeyError(kind)

    async def close(self) -> None:
        await self.pc.close()


async def wait_for(condition, timeout: float = 10, message: str = "") -> None:
    """Poll `condition()` until true; fail with `message` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(message or f"timed out after {timeout} s")
        await asyncio.sleep(0.05)


_H264_FMTP = re.compile(r"(a=fmtp:(\d+) [^\r\n]*profile-level-id=)([0-9a-fA-F]{6})")


@dataclass
class H264Claim:
    """An aiortc peer's H.264 offered as another profile (High, as OBS and browsers
    send it): aiortc encodes Constrained Baseline, which every profile decodes, so
    its stream is a valid one of that profile. The answer is turned back to the
    profile aiortc offered, which it insists on; the server sees only the claim."""

    profile: str
    offered: dict[str, str] = field(default_factory=dict)  # by payload type

    def offer(self, sdp: str) -> str:
        def claim(match: re.Match[str]) -> str:
            self.offered[match[2]] = match[3]
            return match[1] + self.profile

        return _H264_FMTP.sub(claim, sdp)

    def answer(self, sdp: str) -> str:
        return _H264_FMTP.sub(lambda m: m[1] + self.offered.get(m[2], m[3]), sdp)


async def _exchange(
    http: aiohttp.ClientSession,
    url: str,
    pc: RTCPeerConnection,
    headers: dict[str, str],
    claim: H264Claim | None = None,
) -> tuple[str, str, str]:
    await pc.setLocalDescription(await pc.createOffer())
    offer = pc.localDescription.sdp
    async with http.post(
        url,
        data=claim.offer(offer) if claim else offer,
        headers={"Content-Type": "application/sdp", **headers},
    ) as response:
        body = await response.text()
        if response.status != 201:
            await pc.close()
            raise AssertionError(f"{url} answered {response.status}: {body}")
        location = response.headers["Location"]
        etag = response.headers["ETag"]
        answered_by = str(response.url)
    if claim is not None:
        body = claim.answer(body)
    await pc.setRemoteDescription(RTCSessionDescription(sdp=body, type="answer"))
    return location, etag, answered_by


async def publish(
    http: aiohttp.ClientSession,
    url: str,
    video: str | None = "video/VP8",
    audio: str | None = "audio/opus",
    headers: dict[str, str] | None = None,
    h264_profile: str | None = None,
) -> Peer:
    """Publish a synthetic camera (and tone) over WHIP with the given codecs; its H.264
    offered as `h264_profile` if set (`H264Claim`)."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    tracks: list[MediaStreamTrack] = []
    if video:
        tracks.append(MovingPicture())
        pc.addTransceiver(tracks[-1], direction="sendonly")
        _prefer(pc, "video", video)
    if audio:
        tracks.append(Tone())
        pc.addTransceiver(tracks[-1], direction="sendonly")
        _prefer(pc, "audio", audio)
    sent = RtpLog()
    claim = H264Claim(h264_profile) if h264_profile else None
    location, etag, answered_by = await _exchange(http, url, pc, headers or {}, claim)
    _record_sent(pc, sent)
    return Peer(pc, location, etag, sent, RtpLog(), tracks, answered_by=answered_by)


@dataclass
class Viewer(Peer):
    frames: dict[str, list[av.frame.Frame | av.packet.Packet]] = field(
        default_factory=dict
    )
    first_frame_at: dict[str, float] = field(default_factory=dict)


async def watch(
    http: aiohttp.ClientSession,
    url: str,
    kinds=("video", "audio"),
    drop=None,
    headers: dict[str, str] | None = None,
    h264_profile: str | None = None,
) -> Viewer:
    """Watch over WHEP; decoded frames are collected by kind; H.264 offered as
    `h264_profile` if set (`H264Claim`)."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    for kind in kinds:
        pc.addTransceiver(kind, direction="recvonly")
    viewer = Viewer(pc, "", "", RtpLog(), RtpLog())
    consumers: list[asyncio.Task[None]] = []

    async def consume(track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            viewer.frames.setdefault(track.kind, []).append(frame)
            viewer.first_frame_at.setdefault(track.kind, time.monotonic())

    pc.on(
        "track", lambda track: consumers.append(asyncio.ensure_future(consume(track)))
    )
    claim = H264Claim(h264_profile) if h264_profile else None
    viewer.location, viewer.etag, viewer.answered_by = await _exchange(
        http, url, pc, headers or {}, claim
    )
    _record_received(pc, viewer.received, drop)
    return viewer


async def recvonly_offer(kinds=("video",)) -> str:
    """A real offer to receive `kinds`, from a peer that is gone by the time it is used."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    for kind in kinds:
        pc.addTransceiver(kind, direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    offer = pc.localDescription.sdp
    await pc.close()
    return offer
