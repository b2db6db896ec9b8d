"""What we track of one publisher's track to give it feedback: loss, NACKs, bandwidth."""

from __future__ import annotations

import time

from aiortc.rtcrtpreceiver import NackGenerator, StreamStatistics
from aiortc.rtp import RtcpReceiverInfo, RtpPacket, unwrap_rtx

from broadcast.media.source_track import SourceTrack

# Below this an estimate is useless for video and only makes the encoder give up.
MIN_BITRATE_BPS = 100_000
# Loss thresholds of Google's loss-based controller (draft-ietf-rmcat-gcc-02 §6).
LOSS_DECREASE = 0.10
LOSS_INCREASE = 0.02
# Gaps wider than this are a sender restart or garbage, not loss worth NACKing.
MAX_NACKED_GAP = 512


class UpstreamTrack:
    """One publisher's RTP stream feeding a SourceTrack: routing, statistics, NACKs."""

    def __init__(
        self,
        source: SourceTrack,
        payload_type: int,
        rtx_payload_type: int | None,
        announced_ssrcs: tuple[int, ...] = (),
        rid: str | None = None,
    ) -> None:
        self.source = source
        # A simulcast layer's RTP stream id (RFC 8852): its packets say it, not an SSRC
        # announced in the offer.
        self.rid = rid
        self.payload_type = payload_type
        self.rtx_payload_type = rtx_payload_type
        # From the offer's a=ssrc lines: the media SSRC first, then its RTX SSRC.
        self.announced_ssrcs = announced_ssrcs
        self.ssrc: int | None = announced_ssrcs[0] if announced_ssrcs else None
        self.stats = StreamStatistics(source.clock_rate)
        self.nack = NackGenerator() if source.kind == "video" else None
        self.bytes_received = 0  # since the last report
        self.packets_total = 0
        self.bytes_total = 0
        self.last_sr: tuple[int, float] | None = (
            None  # (middle 32 bits of NTP, arrival)
        )

    def unwrap(self, packet: RtpPacket) -> RtpPacket | None:
        """The media packet carried by `packet` (RTX unwrapped), or None to drop it."""
        if packet.payload_type == self.payload_type:
            return packet
        if packet.payload_type == self.rtx_payload_type and self.ssrc is not None:
            if len(packet.payload) < 2:
                return None  # RTX padding sent for bandwidth probing (RFC 4588 §4)
            return unwrap_rtx(packet, payload_type=self.payload_type, ssrc=self.ssrc)
        return None

    def receive(self, packet: RtpPacket, size: int) -> bool:
        """Count a media packet; True when the set of missing packets grew."""
        self.bytes_received += size
        self.packets_total += 1
        self.bytes_total += size
        self.stats.add(packet)
        if self.nack is None:
            return False
        if self.nack.max_seq is not None:
            jump = (packet.sequence_number - self.nack.max_seq) & 0xFFFF
            if MAX_NACKED_GAP < jump < 0x8000:
                # A restart, not a loss: asking for thousands of packets helps no one,
                # and aiortc's generator walks the whole gap.
                self.nack = NackGenerator()
        return self.nack.add(packet)

    def report(self) -> RtcpReceiverInfo | None:
        """A receiver report block (RFC 3550 §6.4.2) for this stream."""
        if self.ssrc is None or self.stats.max_seq is None:
            return None
        lsr = dlsr = 0
        if self.last_sr is not None:
            lsr, arrived = self.last_sr
            dlsr = min(int((time.monotonic() - arrived) * 65536), 0xFFFFFFFF)
        return RtcpReceiverInfo(
            ssrc=self.ssrc,
            fraction_lost=self.stats.fraction_lost,
            packets_lost=self.stats.packets_lost,
            highest_sequence=(self.stats.cycles + self.stats.max_seq) & 0xFFFFFFFF,
            jitter=min(self.stats.jitter, 0xFFFFFFFF),
            lsr=lsr,
            dlsr=dlsr,
        )


class BandwidthEstimate:
    """A REMB value that follows what actually arrives, so the publisher ramps up fast.

    aiortc's delay-based estimator ramps slowly. Here: while loss stays
    under 2 % we allow 1.5 times the measured rate (and at least the start bitrate), so the
    encoder reaches the camera's native resolution within seconds; above 10 % loss we
    cut to what arrived, scaled down by half the loss, as GCC's loss controller does.
    """

    def __init__(self, start_bps: int, max_bps: int) -> None:
        self.max_bps = max_bps
        self.start_bps = min(start_bps, max_bps)
        self.bitrate = self.start_bps

    def update(self, received_bps: float, fraction_lost: float) -> int:
        if fraction_lost > LOSS_DECREASE:
            target = received_bps * (1 - fraction_lost / 2)
        elif fraction_lost < LOSS_INCREASE:
            target = max(self.bitrate * 1.08, received_bps * 1.5, self.start_bps)
        else:
            target = self.bitrate
        self.bitrate = int(min(self.max_bps, max(MIN_BITRATE_BPS, target)))
        return self.bitrate
