"""Our rewritten RTP packets back into whole frames, for the recorder and snapshots.

A frame is written only when every packet of it came; a video frame with a hole is
dropped with every frame after it until the next keyframe, so that a recording never
holds a frame whose reference is missing (a decoder shows garbage until the next
keyframe otherwise). Packets may come a little out of order (a retransmission, a
publisher's pacing): a frame waits for its missing packets while a few newer frames
are pending.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from aiortc.codecs.h264 import H264PayloadDescriptor
from aiortc.codecs.vpx import VpxPayloadDescriptor

from broadcast.media.keyframe_detect import keyframe_test
from broadcast.media.resolution import keyframe_resolution
from broadcast.media.source_track import RTP_PADDING_BIT

RTP_HEADER_BYTES = 12  # our rewritten packets carry no CSRC and no extension
# Newer frames pending before a frame still missing packets is given up: ~0.3 s of
# 30 fps video (time for a retransmission to come), 0.2 s of 20 ms audio.
MAX_PENDING_FRAMES = 10

Depacketize = Callable[[bytes], bytes]


def _h264(payload: bytes) -> bytes:
    """Annex B NAL units, start codes included (RFC 6184: single, STAP-A, FU-A)."""
    return H264PayloadDescriptor.parse(payload)[1]


def _vp8(payload: bytes) -> bytes:
    return VpxPayloadDescriptor.parse(payload)[1]


# What each codec's RTP payloads become once the payload headers are taken off.
DEPACKETIZERS: dict[str, Depacketize] = {
    "video/h264": _h264,
    "video/vp8": _vp8,
    "audio/opus": lambda payload: payload,
}


def rtp_payload(packet: bytes) -> bytes:
    end = len(packet) - packet[-1] if packet[0] & RTP_PADDING_BIT else len(packet)
    return packet[RTP_HEADER_BYTES:end]


def rtp_seq(packet: bytes) -> int:
    return int.from_bytes(packet[2:4], "big")


def rtp_timestamp(packet: bytes) -> int:
    return int.from_bytes(packet[4:8], "big")


def _newer32(a: int, b: int) -> bool:
    return a != b and ((a - b) & 0xFFFFFFFF) < 0x80000000


@dataclass
class Frame:
    """One frame's payload, its RTP timestamp and when its first packet came."""

    data: bytes
    timestamp: int
    keyframe: bool
    arrived_at: float
    resolution: tuple[int, int] | None = None  # a video keyframe's


@dataclass
class _Pending:
    arrived_at: float
    packets: dict[int, bytes] = field(default_factory=dict)  # by sequence number
    last_seq: int | None = None  # the marker's


class FrameAssembler:
    """One track's packets in, its whole frames out, in order.

    Video frames end at the marker bit (RFC 3550 §5.1: RFC 6184, RFC 7741); an audio
    packet is a frame of its own. A lost or broken frame is counted in `dropped`.
    """

    def __init__(self, mime_type: str, video: bool) -> None:
        self._mime_type = mime_type
        self._depacketize = DEPACKETIZERS[mime_type.lower()]
        self._starts_keyframe = keyframe_test(mime_type)
        self._video = video
        self._pending: dict[int, _Pending] = {}  # by RTP timestamp
        self._next_seq: int | None = None  # the first packet of the next frame
        self._last_timestamp: int | None = None
        self._need_keyframe = video
        self.dropped = 0

    def push(self, packet: bytes, arrived_at: float) -> list[Frame]:
        """Take one packet; the frames it completes (often none, sometimes several)."""
        timestamp, seq = rtp_timestamp(packet), rtp_seq(packet)
        if self._last_timestamp is not None and not _newer32(
            timestamp, self._last_timestamp
        ):
            return []  # of a frame written or given up already
        if not self._video:
            return self._audio(packet, timestamp, arrived_at)
        pending = self._pending.setdefault(timestamp, _Pending(arrived_at))
        pending.packets[seq] = packet
        if packet[1] & 0x80:
            pending.last_seq = seq
        return self._drain()

    def _audio(self, packet: bytes, timestamp: int, arrived_at: float) -> list[Frame]:
        self._last_timestamp = timestamp
        payload = rtp_payload(packet)
        if not payload:
            return []
        return [Frame(self._depacketize(payload), timestamp, True, arrived_at)]

    def _drain(self) -> list[Frame]:
        frames: list[Frame] = []
        while self._pending:
            timestamp = self._oldest()
            pending = self._pending[timestamp]
            packets = self._in_order(pending)
            if packets is None:
                if len(self._pending) <= MAX_PENDING_FRAMES:
                    break
                self._give_up(timestamp)
                continue
            del self._pending[timestamp]
            self._last_timestamp = timestamp
            assert pending.last_seq is not None
            self._next_seq = (pending.last_seq + 1) & 0xFFFF
            frame = self._frame(packets, timestamp, pending.arrived_at)
            if frame is not None:
                frames.append(frame)
        return frames

    def _oldest(self) -> int:
        """The pending frame of the earliest RTP time (a frame's first packet may come
        after packets of the next frame: reordering in the network)."""
        reference = self._last_timestamp
        if reference is None:
            reference = next(iter(self._pending))
        return min(self._pending, key=lambda ts: (ts - reference) & 0xFFFFFFFF)

    def _in_order(self, pending: _Pending) -> list[bytes] | None:
        """The frame's packets from its first to its marker, or None while some are
        missing. After a loss its first packet is unknown: a keyframe's first packet
        says it is one, so a frame we can start at is still recognised."""
        last = pending.last_seq
        if last is None:
            return None
        first = self._next_seq
        if first is None:  # the packet furthest before the marker
            first = max(pending.packets, key=lambda seq: (last - seq) & 0xFFFF)
        count = ((last - first) & 0xFFFF) + 1
        if count > len(pending.packets):
            return None
        packets = [pending.packets.get((first + n) & 0xFFFF) for n in range(count)]
        if None in packets:
            return None
        return packets  # type: ignore[return-value]

    def _give_up(self, timestamp: int) -> None:
        del self._pending[timestamp]
        self._last_timestamp = timestamp
        self._next_seq = None
        self._need_keyframe = True
        self.dropped += 1

    def _frame(
        self, packets: list[bytes], timestamp: int, arrived_at: float
    ) -> Frame | None:
        payloads = [rtp_payload(packet) for packet in packets]
        keyframe = self._starts_keyframe is not None and self._starts_keyframe(
            payloads[0]
        )
        if self._need_keyframe and not keyframe:
            self.dropped += 1
            return None
        try:
            data = b"".join(self._depacketize(payload) for payload in payloads)
        except ValueError:  # a payload header we cannot read: as if lost
            self._need_keyframe = True
            self.dropped += 1
            return None
        self._need_keyframe = False
        size = keyframe_resolution(self._mime_type, payloads[0]) if keyframe else None
        return Frame(data, timestamp, keyframe, arrived_at, size)
