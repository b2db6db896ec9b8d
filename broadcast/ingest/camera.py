"""Camera: an IP camera as a stream's publisher — pulled, reconnected, on demand."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time

from aiortc import RTCRtpCodecParameters
from aiortc.rtp import RtpPacket

from broadcast.config import RtspCamera
from broadcast.ingest.rtsp import CameraError, CameraTrack, RtspSession
from broadcast.media.h264 import H264Repacketizer, parse_sprop_parameter_sets
from broadcast.media.source_track import SourceTrack
from broadcast.media.transcode import OPUS_FRAME_SAMPLES, OPUS_RATE, AacToOpus
from broadcast.redact import redact_url
from broadcast.source import SourceOwner

logger = logging.getLogger(__name__)

# Reconnect after 1, 2, 4, ... seconds, never waiting more than 30 (capped backoff).
RETRY_MIN_S = 1.0
RETRY_MAX_S = 30.0
# An on-demand camera is let go this long after its last viewer leaves.
IDLE_TIMEOUT_S = 10.0
# How long a first viewer waits for an on-demand camera to start sending.
READY_TIMEOUT_S = 10.0
VIDEO_PAYLOAD_TYPE = 96
DEFAULT_PROFILE_LEVEL_ID = (
    "42e01f"  # constrained baseline 3.1, when the SDP says nothing
)
PASSTHROUGH_AUDIO = {"PCMA": 8, "PCMU": 0}
OPUS_PAYLOAD_TYPE = 111


class Camera:
    """Pull one camera into its stream's source tracks, as long as it is wanted."""

    kind = "rtsp"
    # A configured camera is its stream's source for good: the stream lives as long as
    # the configuration, whatever the camera does, and the camera reconnects by itself.
    permanent = True

    def __init__(self, camera: RtspCamera, stream: SourceOwner) -> None:
        self.config = camera
        self.id = camera.id
        self.pull_url: str | None = redact_url(camera.url)
        self.stream = stream
        self.always_on = camera.options.keep_on
        self.record_from_start = camera.options.record
        self.problem: str | None = None
        self.bitrate_in_bps = 0
        self._ready = asyncio.Event()
        # Viewers waiting for the camera, told at once when an attempt fails.
        self._waiting: list[asyncio.Future[None]] = []
        self._task: asyncio.Task[None] | None = None
        self._idle_timer: asyncio.TimerHandle | None = None
        self._routes: list[_Route] = []
        self._packets = 0
        self._bytes = 0
        self._failed_packets = 0
        self._closed = False
        self._audience = 0  # viewers, edges pulling it, a recording

    def __repr__(self) -> str:
        return f"Camera({self.config.id} {self.pull_url})"

    # --- what the stream and the signaling ask of a camera --------------------

    def start(self) -> None:
        """Start pulling (again); nothing happens while it already runs."""
        if self._closed or (self._task is not None and not self._task.done()):
            return
        self._task = asyncio.create_task(self._run())
        # Started for a viewer who may never arrive (its offer fails): let go in time.
        self.viewers_changed(self._audience)

    async def wait_ready(self) -> None:
        """Start if needed and wait until the camera plays; fail at its first failure."""
        self.start()
        if self._ready.is_set():
            return
        failed = asyncio.get_running_loop().create_future()
        self._waiting.append(failed)
        ready = asyncio.ensure_future(self._ready.wait())
        try:
            await asyncio.wait(
                [ready, failed], timeout=READY_TIMEOUT_S, return_when="FIRST_COMPLETED"
            )
        finally:
            ready.cancel()
            if failed in self._waiting:
                self._waiting.remove(failed)
        if not self._ready.is_set():
            raise CameraError(
                self.problem
                or f"the camera did not start within {READY_TIMEOUT_S:.0f} s"
            )

    def viewers_changed(self, count: int) -> None:
        """Pull while anyone needs the picture (viewers, an edge, a recording); let an
        on-demand camera go a while after the last."""
        self._audience = count
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        if count > 0:
            self.start()  # for a recording: viewers started it already
        elif count == 0 and not self.always_on and not self._closed:
            self._idle_timer = asyncio.get_running_loop().call_later(
                IDLE_TIMEOUT_S, lambda: asyncio.create_task(self._stop_idle())
            )

    def source_counters(self) -> dict[str, int]:
        return {
            "rtp_packets_received": self._packets,
            "rtp_bytes_received": self._bytes,
        }

    async def close(self, reason: str, cause: str) -> None:
        """Stop for good (the stream ends); idempotent. Viewers waiting for the camera
        hear it now rather than when their wait would have run out."""
        self._closed = True
        await self._stop()
        self.problem = "the camera was removed"
        self._wake_waiting()

    def _wake_waiting(self) -> None:
        """Tell viewers waiting in `wait_ready` that this attempt is over."""
        for waiting in self._waiting:
            if not waiting.done():
                waiting.set_result(None)

    # --- the pull loop -------------------------------------------------------

    async def _stop_idle(self) -> None:
        if self._audience or self._task is None:
            return
        logger.info("%r idle: disconnecting", self)
        await self._stop()
        # A viewer may have started the camera again while it was let go.
        if self._task is None:
            self.stream.source_idle(self)

    async def _stop(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        task, self._task = self._task, None
        if task is None:
            return
        self._ready.clear()
        task.cancel()
        # Whatever the pull loop died of, stopping it must not fail (stream close).
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task

    async def _run(self) -> None:
        delay = RETRY_MIN_S
        while True:
            session = RtspSession(self.config.url, self.config.options, self._receive)
            try:
                await self._pull(session)
            except CameraError as error:
                self.problem = str(error)
            except Exception:  # a camera must never stop being retried
                logger.exception("%r failed unexpectedly", self)
                self.problem = "the camera sent something we could not handle"
            finally:
                await session.close()
            if self._ready.is_set():  # it played: the next failure starts over
                delay = RETRY_MIN_S
            self._ready.clear()
            self._wake_waiting()
            logger.warning("%r: %s; retrying in %.1f s", self, self.problem, delay)
            self.stream.source_lost(self, self.problem or "camera lost")
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_S)

    async def _pull(self, session: RtspSession) -> None:
        tracks = await session.describe()
        routed = [(track, self._route(track)) for track in tracks]
        wanted = [(track, route) for track, route in routed if route is not None]
        if not any(route.source.kind == "video" for _, route in wanted):
            raise CameraError(_unsupported(tracks))
        self._routes = [route for _, route in wanted]
        for route in self._routes:
            route.source.upstream_changed()
        await session.play([track for track, _ in wanted])
        self.problem = None
        self._ready.set()
        self.stream.source_live(self)
        logger.info("%r playing %s", self, ", ".join(t.encoding for t, _ in wanted))
        measuring = asyncio.create_task(self._measure())
        try:
            await session.run()
        finally:
            measuring.cancel()

    async def _measure(self) -> None:
        while True:
            before, start = self._bytes, time.monotonic()
            await asyncio.sleep(1.0)
            self.bitrate_in_bps = int(
                (self._bytes - before) * 8 / (time.monotonic() - start)
            )

    def _route(self, track: CameraTrack) -> _Route | None:
        """Where a camera track goes, creating the stream's source track at first."""
        if track.kind == "video" and track.encoding == "H264":
            codec = RTCRtpCodecParameters(
                mimeType="video/H264",
                clockRate=90000,
                payloadType=VIDEO_PAYLOAD_TYPE,
                parameters={
                    "packetization-mode": "1",
                    "level-asymmetry-allowed": "1",
                    "profile-level-id": _profile_level_id(track),
                },
            )
            source = self._source("video", codec, answers_pli=False)
            return _Route(
                source, H264Repacketizer(track.fmtp.get("sprop-parameter-sets"))
            )
        if track.kind == "audio" and track.encoding in PASSTHROUGH_AUDIO:
            codec = RTCRtpCodecParameters(
                mimeType=f"audio/{track.encoding}",
                clockRate=8000,
                channels=1,
                payloadType=PASSTHROUGH_AUDIO[track.encoding],
            )
            return _Route(self._source("audio", codec), None)
        if track.kind == "audio" and track.encoding == "OPUS":
            # WebRTC's own codec (RFC 7587: always opus/48000/2): forwarded as is.
            return _Route(self._source("audio", _opus_codec()), None)
        if track.kind == "audio" and _is_aac(track):
            size_length, index_length = _aac_header_lengths(track)
            aac = AacToOpus(track.fmtp["config"], size_length, index_length)
            return _Route(self._source("audio", _opus_codec()), None, aac)
        if track.kind == "audio":
            logger.warning(
                "%r: %s audio is not forwarded (PCMA, PCMU, Opus and AAC are)",
                self,
                track.encoding,
            )
        return None

    def _source(
        self, kind: str, codec: RTCRtpCodecParameters, answers_pli: bool = True
    ) -> SourceTrack:
        source = self.stream.tracks.get(kind)
        if source is None:
            source = SourceTrack(kind, codec, answers_pli=answers_pli)
            self.stream.tracks[kind] = source
        elif source.codec.mimeType.lower() != codec.mimeType.lower():
            raise CameraError(
                f"the camera changed its {kind} codec from {source.codec.mimeType} to "
                f"{codec.mimeType}; viewers cannot follow without reconnecting"
            )
        return source

    def _receive(self, index: int, data: bytes) -> None:
        if index >= len(self._routes):
            return
        try:
            packet = RtpPacket.parse(data)
        except ValueError:
            return
        self._packets += 1
        self._bytes += len(data)
        try:
            self._routes[index].forward(packet)
        except Exception:  # aiortsp would close the whole session on an exception
            self._failed_packets += 1
            if self._failed_packets <= 5:
                logger.exception("%r dropped a packet it could not handle", self)


class _Route:
    """One camera track into one source track: H.264 repacketized, AAC transcoded,
    PCMA, PCMU and Opus as they come."""

    def __init__(
        self,
        source: SourceTrack,
        h264: H264Repacketizer | None,
        aac: AacToOpus | None = None,
    ) -> None:
        self.source = source
        self.h264 = h264
        self.aac = aac
        self.timestamp = secrets.randbits(32)
        self.ssrc = secrets.randbits(32) or 1
        self.sequence_number = secrets.randbits(16)
        self._last_seq: int | None = None

    def forward(self, packet: RtpPacket) -> None:
        if self.aac is not None:
            for frame in self.aac.push(packet.payload):
                self.timestamp = (self.timestamp + OPUS_FRAME_SAMPLES) & 0xFFFFFFFF
                self._send(OPUS_PAYLOAD_TYPE, False, self.timestamp, frame)
            return
        if self.h264 is None:
            self.source.forward(packet)
            return
        lost = self._last_seq is not None and packet.sequence_number != (
            (self._last_seq + 1) & 0xFFFF
        )
        self._last_seq = packet.sequence_number
        for out in self.h264.push(
            packet.payload, packet.timestamp, bool(packet.marker), lost
        ):
            self._send(VIDEO_PAYLOAD_TYPE, out.marker, packet.timestamp, out.payload)

    def _send(
        self, payload_type: int, marker: bool, timestamp: int, payload: bytes
    ) -> None:
        self.sequence_number = (self.sequence_number + 1) & 0xFFFF
        self.source.forward(
            RtpPacket(
                payload_type=payload_type,
                marker=int(marker),
                sequence_number=self.sequence_number,
                timestamp=timestamp,
                ssrc=self.ssrc,
                payload=payload,
            )
        )


def _opus_codec() -> RTCRtpCodecParameters:
    """What viewers get for a camera's Opus, or its AAC transcoded."""
    return RTCRtpCodecParameters(
        mimeType="audio/opus",
        clockRate=OPUS_RATE,
        channels=2,
        payloadType=OPUS_PAYLOAD_TYPE,
        parameters={"minptime": 10, "useinbandfec": 1},
    )


def _is_aac(track: CameraTrack) -> bool:
    """AAC as RFC 3640 AAC-hbr, with a sane decoder config and AU header lengths."""
    if track.encoding != "MPEG4-GENERIC":
        return False
    if track.fmtp.get("mode", "").lower() != "aac-hbr":
        return False
    try:
        bytes.fromhex(track.fmtp.get("config", ""))
        _aac_header_lengths(track)
    except ValueError:
        return False
    return bool(track.fmtp.get("config"))


def _aac_header_lengths(track: CameraTrack) -> tuple[int, int]:
    """sizelength and indexlength of the AU headers (RFC 3640 §4.1), checked."""
    size = track.fmtp.get("sizelength", "13")
    index = track.fmtp.get("indexlength", "3")
    if not (size.isdecimal() and index.isdecimal()):
        raise ValueError("AU header lengths must be numbers")
    lengths = int(size[:3]), int(index[:3])
    if not (1 <= lengths[0] <= 32 and 0 <= lengths[1] <= 32):
        raise ValueError("AU header lengths out of range")
    return lengths


def _profile_level_id(track: CameraTrack) -> str:
    """From the SDP's profile-level-id, else from the SPS in sprop-parameter-sets."""
    declared = track.fmtp.get("profile-level-id", "")
    if len(declared) == 6:
        return declared.lower()
    for nal in parse_sprop_parameter_sets(track.fmtp.get("sprop-parameter-sets")):
        if nal and nal[0] & 0x1F == 7 and len(nal) >= 4:
            return nal[1:4].hex()
    return DEFAULT_PROFILE_LEVEL_ID


def _unsupported(tracks: list[CameraTrack]) -> str:
    video = [
        t.encoding or f"payload type {t.payload_type}"
        for t in tracks
        if t.kind == "video"
    ]
    if not video:
        return "the camera offers no video track"
    advice = {
        "H265": "browsers cannot play H.265 over WebRTC; set the camera to H.264",
        "JPEG": "MJPEG cannot be forwarded over WebRTC; set the camera to H.264",
    }
    for encoding in video:
        if encoding in advice:
            return f"the camera sends {encoding}: {advice[encoding]}"
    return f"the camera sends {', '.join(video)}; only H.264 video is forwarded"
