"""What a receiving viewer measures of the RTP it gets, and how it asks for what it lost.

Per-SSRC counts, extended sequence numbers and jitter (RFC 3550), NACK-based recovery
(RFC 4585), and the payload of a plaintext RTP packet. `broadcast loadtest`'s viewers
use them on every packet, so they are plain arithmetic on bytes.
"""

from __future__ import annotations

import hashlib
import struct

from aiortc.rtp import RTCP_RTPFB_NACK

# A missing packet is NACKed at once, again every NACK_RETRY_S, at most NACK_TRIES
# times; then it is given up.
NACK_RETRY_S = 0.1
NACK_TRIES = 3
# Gaps wider than this are a restart, not loss; missing packets kept at most.
MAX_GAP = 512
MAX_MISSING = 2048


def payload_digest(rtp: bytes) -> str:
    """A short, stable name for a decrypted RTP packet's payload (the server rewrites
    SSRC, sequence numbers and timestamps but forwards payloads as they are)."""
    return hashlib.blake2b(rtp_payload(rtp), digest_size=8).hexdigest()


def rtp_payload(rtp: bytes) -> bytes:
    """The payload of a plaintext RTP packet: past CSRCs and header extension, before
    padding (RFC 3550 §5.1, §5.3.1)."""
    offset = 12 + 4 * (rtp[0] & 0x0F)
    if rtp[0] & 0x10 and len(rtp) >= offset + 4:
        offset += 4 + 4 * int.from_bytes(rtp[offset + 2 : offset + 4], "big")
    end = len(rtp) - (rtp[-1] if rtp[0] & 0x20 else 0)
    return rtp[offset:end]


class RtpCounter:
    """Counters of one received SSRC: packets, extended sequence numbers (RFC 3550
    A.1, without probation) and interarrival jitter (RFC 3550 A.8)."""

    __slots__ = (
        "base",
        "bytes",
        "clock_rate",
        "ext_max",
        "frames",
        "jitter",
        "kind",
        "last_arrival",
        "last_ts",
        "max_ts_step",
        "min_ts_step",
        "packets",
        "top_ts",
        "ts_wraps",
    )

    def __init__(self, kind: str, clock_rate: int) -> None:
        self.kind = kind
        self.clock_rate = clock_rate
        self.packets = self.bytes = self.frames = 0
        self.base = self.ext_max = self.last_ts = self.top_ts = 0
        self.last_arrival = self.jitter = 0.0
        # Between packets in sequence order: timestamp wraps, the widest step forward
        # and the widest backward (0 if none), in clock ticks.
        self.ts_wraps = self.max_ts_step = self.min_ts_step = 0

    def add(self, seq: int, ts: int, size: int, marker: int, now: float) -> None:
        self.packets += 1
        self.bytes += size
        self.frames += marker
        if self.packets == 1:
            self.base = self.ext_max = seq
            self.top_ts = ts
        else:
            forward = (seq - self.ext_max) & 0xFFFF
            if forward < 0x8000:  # else late or reordered: the highest stays
                self.ext_max += forward
                step = ((ts - self.top_ts + 0x80000000) & 0xFFFFFFFF) - 0x80000000
                self.ts_wraps += step > 0 and ts < self.top_ts
                self.max_ts_step = max(self.max_ts_step, step)
                self.min_ts_step = min(self.min_ts_step, step)
                self.top_ts = ts
            elapsed = ((ts - self.last_ts + 0x80000000) & 0xFFFFFFFF) - 0x80000000
            d = abs((now - self.last_arrival) * self.clock_rate - elapsed)
            self.jitter += (d - self.jitter) / 16
        self.last_ts = ts
        self.last_arrival = now

    @property
    def seq_wraps(self) -> int:
        return self.ext_max >> 16 if self.packets else 0

    @property
    def expected(self) -> int:
        return self.ext_max - self.base + 1 if self.packets else 0

    @property
    def jitter_ms(self) -> float:
        return 1000 * self.jitter / self.clock_rate


def generic_nack(sender_ssrc: int, media_ssrc: int, lost: list[int]) -> bytes:
    """An RTCP generic NACK (RFC 4585 §6.2.1) for `lost`, in sequence order, across
    the wrap (aiortc's RtcpRtpfbPacket cannot: its bitmask shift goes negative)."""
    fci = b""
    pid, blp = lost[0], 0
    for seq in lost[1:]:
        distance = (seq - pid - 1) & 0xFFFF
        if distance < 16:
            blp |= 1 << distance
        else:
            fci += struct.pack("!HH", pid, blp)
            pid, blp = seq, 0
    fci += struct.pack("!HH", pid, blp)
    header = struct.pack(
        "!BBHII",
        0x80 | RTCP_RTPFB_NACK,
        205,
        2 + len(fci) // 4,
        sender_ssrc,
        media_ssrc,
    )
    return header + fci


class LossRecovery:
    """Missing sequence numbers of one received SSRC, NACKed until they come or are
    given up (RFC 4585 §6.2.1); tells fresh packets from retransmitted duplicates."""

    def __init__(self) -> None:
        self.highest: int | None = None
        # seq -> [next NACK at, NACKs sent]; tries -1: given up, still welcome.
        self.missing: dict[int, list[float]] = {}
        self.recovered = self.given_up = self.duplicates = 0

    def add(self, seq: int, now: float) -> bool:
        """Note a received packet; False for a duplicate (count it no more)."""
        if self.highest is None:
            self.highest = seq
            return True
        forward = (seq - self.highest) & 0xFFFF
        if 0 < forward < 0x8000:
            if forward <= MAX_GAP:
                for gap in range(1, forward):
                    self.missing[(self.highest + gap) & 0xFFFF] = [now, 0]
                while len(self.missing) > MAX_MISSING:
                    del self.missing[next(iter(self.missing))]
            self.highest = seq
            return True
        entry = self.missing.pop(seq, None)
        if entry is None:
            self.duplicates += 1
            return False
        self.recovered += 1
        return True

    def due(self, now: float) -> tuple[list[int], int]:
        """Sequence numbers to NACK now, and how many were just given up."""
        nack, given_up = [], 0
        for seq, entry in self.missing.items():
            if entry[1] < 0 or entry[0] > now:
                continue
            if entry[1] >= NACK_TRIES:
                entry[1] = -1
                given_up += 1
                continue
            entry[0], entry[1] = now + NACK_RETRY_S, entry[1] + 1
            nack.append(seq)
        self.given_up += given_up
        return nack, given_up
