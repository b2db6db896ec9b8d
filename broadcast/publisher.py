"""Publisher: a WHIP session feeding a stream's source tracks, and their feedback."""

from __future__ import annotations

import functools
import logging
import secrets
import time

from aiortc.rtp import (
    RTCP_PSFB_APP,
    RTCP_PSFB_PLI,
    RTCP_RTPFB_NACK,
    HeaderExtensionsMap,
    RtcpByePacket,
    RtcpPsfbPacket,
    RtcpRrPacket,
    RtcpRtpfbPacket,
    RtcpSrPacket,
    RtpPacket,
    pack_remb_fci,
)

from broadcast.media.transport_protocol import Transport
from broadcast.media.upstream import BandwidthEstimate, UpstreamTrack
from broadcast.session import Session
from broadcast.source import SourceOwner

logger = logging.getLogger(__name__)

# A media and an RTX SSRC per track (audio, and up to 4 simulcast layers of video), and
# room for a sender that changes its SSRC: a publisher spraying random SSRCs must not
# grow our routing table without end.
MAX_SSRCS = 16


class Publisher(Session):
    """The upstream side of a stream: routes its RTP to source tracks, gives feedback."""

    kind = "whip"
    record_from_start = False
    pull_url: str | None = None
    # A presenter may drop and come back as a new session; the stream waits a while.
    permanent = False

    def __init__(
        self,
        stream: SourceOwner,
        transport: Transport,
        remote_ufrag: str,
        upstream: list[UpstreamTrack],
        bandwidth: BandwidthEstimate,
        silence_timeout_s: float,
        extensions: HeaderExtensionsMap | None = None,
    ) -> None:
        super().__init__(stream.id, transport, remote_ufrag)
        self.stream = stream
        self.upstream = upstream
        self.bandwidth = bandwidth
        self.rtcp_ssrc = secrets.randbits(32) or 1
        self._by_ssrc: dict[int, UpstreamTrack] = {}
        self._by_payload_type: dict[int, UpstreamTrack] = {}
        # Simulcast: layers by rid, read from the header extensions of a packet from an
        # SSRC not seen yet (`extensions`: the ids the offer gave them).
        self._extensions = extensions
        self._by_rid = {t.rid: t for t in upstream if t.rid is not None}
        for track in upstream:
            self._by_payload_type[track.payload_type] = track
            if track.rtx_payload_type is not None:
                self._by_payload_type[track.rtx_payload_type] = track
            for ssrc in track.announced_ssrcs:
                self._by_ssrc[ssrc] = track
            track.source.request_pli = functools.partial(self._send_pli, track)
        self._last_report = time.monotonic()
        self._last_packet = time.monotonic()
        self._silence_timeout_s = silence_timeout_s
        self.hung_up = False
        self.bitrate_in_bps = 0

    def connected(self) -> None:
        self.stream.source_live(self)

    async def wait_ready(self) -> None:
        """Media flows once this session connects: a viewer need not wait for it."""

    def viewers_changed(self, count: int) -> None:
        """A presenter publishes whoever watches."""

    def source_counters(self) -> dict[str, int]:
        """None: this session's own counters report its media."""
        return {}

    def receive_rtp(self, data: bytes) -> None:
        self._last_packet = time.monotonic()
        try:
            packet = RtpPacket.parse(data)
        except ValueError:
            return
        track = self._by_ssrc.get(packet.ssrc)
        if track is None:
            track = self._new_ssrc(data, packet)
            if track is None or len(self._by_ssrc) >= MAX_SSRCS:
                return
            self._by_ssrc[packet.ssrc] = track
        if packet.payload_type == track.payload_type and track.ssrc != packet.ssrc:
            track.ssrc = packet.ssrc
            track.source.keyframes.retry()  # a request may have waited for the SSRC
        media = track.unwrap(packet)
        if media is None:
            return
        if track.receive(media, len(data)):
            self._send_nack(track)
        track.source.forward(media)

    def _new_ssrc(self, data: bytes, packet: RtpPacket) -> UpstreamTrack | None:
        """The track a packet from an SSRC not seen yet feeds: by its payload type, or
        for a simulcast layer (whose payload type all layers share) by its rid or, for
        its retransmissions, its repaired rid."""
        track = self._by_payload_type.get(packet.payload_type)
        if track is None or track.rid is None or self._extensions is None:
            return track
        try:
            extensions = RtpPacket.parse(data, self._extensions).extensions
        except ValueError:
            return None
        rid = extensions.rtp_stream_id or extensions.repaired_rtp_stream_id
        return self._by_rid.get(rid) if rid else None

    def receive_rtcp(self, packet: object) -> None:
        if isinstance(packet, RtcpSrPacket):
            for track in self.upstream:
                if track.ssrc == packet.ssrc:
                    ntp = packet.sender_info.ntp_timestamp
                    track.last_sr = ((ntp >> 16) & 0xFFFFFFFF, time.monotonic())
                    track.source.take_sender_report(
                        ntp, packet.sender_info.rtp_timestamp
                    )
        elif isinstance(packet, RtcpByePacket):
            logger.debug("%r got RTCP BYE", self)

    def counters(self) -> dict[str, int]:
        return {
            **super().counters(),
            "rtp_packets_received": sum(t.packets_total for t in self.upstream),
            "rtp_bytes_received": sum(t.bytes_total for t in self.upstream),
        }

    def failure(self) -> str | None:
        silent = time.monotonic() - self._last_packet
        if silent > self._silence_timeout_s:
            return f"no media for {silent:.0f} s"
        return None

    def rtcp_report(self) -> bytes:
        """Receiver reports for every track and a REMB for the video (RFC 3550, REMB)."""
        now = time.monotonic()
        interval, self._last_report = now - self._last_report, now
        reports = [r for r in (t.report() for t in self.upstream) if r is not None]
        if not reports:
            return b""
        compound = bytes(RtcpRrPacket(ssrc=self.rtcp_ssrc, reports=reports))
        received = sum(t.bytes_received for t in self.upstream)
        for track in self.upstream:
            track.source.bitrate_bps = int(
                track.bytes_received * 8 / max(interval, 0.001)
            )
            track.bytes_received = 0
        lost = max((r.fraction_lost for r in reports), default=0) / 256
        self.bitrate_in_bps = int(received * 8 / max(interval, 0.001))
        bitrate = self.bandwidth.update(self.bitrate_in_bps, lost)
        ssrcs = [t.ssrc for t in self.upstream if t.ssrc is not None]
        remb = RtcpPsfbPacket(
            fmt=RTCP_PSFB_APP,
            ssrc=self.rtcp_ssrc,
            media_ssrc=0,
            fci=pack_remb_fci(bitrate, ssrcs),
        )
        nacks = b"".join(self._nack(t) for t in self.upstream)
        return compound + bytes(remb) + nacks

    def _send_nack(self, track: UpstreamTrack) -> None:
        nack = self._nack(track)
        if nack:
            self.transport.send_rtcp(nack)

    def _nack(self, track: UpstreamTrack) -> bytes:
        """A NACK for what is still missing (sent at once, repeated with each report)."""
        if track.ssrc is None or track.nack is None or not track.nack.missing:
            return b""
        packet = RtcpRtpfbPacket(
            fmt=RTCP_RTPFB_NACK, ssrc=self.rtcp_ssrc, media_ssrc=track.ssrc
        )
        packet.lost = sorted(track.nack.missing)
        return bytes(packet)

    def _send_pli(self, track: UpstreamTrack) -> bool:
        """Ask the publisher for a keyframe; False if it cannot hear us yet."""
        if track.ssrc is None or self.transport.state != "connected":
            return False
        packet = RtcpPsfbPacket(
            fmt=RTCP_PSFB_PLI, ssrc=self.rtcp_ssrc, media_ssrc=track.ssrc
        )
        self.transport.send_rtcp(bytes(packet))
        return True

    async def hang_up(self) -> None:
        """The presenter stopped: the broadcast ends now, without a grace period."""
        self.hung_up = True
        await super().hang_up()

    def detach(self) -> None:
        if self.hung_up:
            self.stream.source_ended(self)
        else:
            self.stream.source_lost(self, None)
