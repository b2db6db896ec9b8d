"""Viewer: a WHEP session receiving copies of source tracks.

It knows its tracks, not their stream: a worker holds real viewers of its own track
copies, and the stream that counts a viewer hears of its end through `on_close`.
`ViewerSession` is what the stream, the admin API, /metrics and `/ws` see of any
viewer, whichever process carries its media (`workers/remote.py` for a worker's).
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from aiortc.rtp import (
    RTCP_PSFB_PLI,
    RTCP_RTPFB_NACK,
    RtcpPsfbPacket,
    RtcpRrPacket,
    RtcpRtpfbPacket,
    RtcpSdesPacket,
    RtcpSenderInfo,
    RtcpSourceInfo,
    RtcpSrPacket,
)

from broadcast.errors import Conflict
from broadcast.media.layer_choice import layer_index
from broadcast.media.layer_switch import LayerSwitch
from broadcast.media.source_track import SourceTrack
from broadcast.media.transport_protocol import Transport
from broadcast.media.viewer_track import ViewerTrack
from broadcast.session import Session

logger = logging.getLogger(__name__)

RTCP_PSFB_FIR = 4  # RFC 5104 §4.3.1
RTCP_SDES_CNAME = 1


class ViewerSession(Session):
    """A WHEP session as its stream and the server's reports see it: its numbers."""

    kind = "whep"
    process = 0  # the process carrying its media: 0 the main one, N worker N

    def __init__(self, stream_id: str, transport: Transport, remote_ufrag: str):
        super().__init__(stream_id, transport, remote_ufrag)
        self.fraction_lost = 0
        self.rtt_s: float | None = None
        self.bitrate_out_bps = 0
        self.quality: dict[str, Any] | None = None  # the viewer page's last report
        self.layer: str | None = None  # the rid of its simulcast layer, if any

    @property
    def retransmissions(self) -> int:
        """Packets sent again after a NACK."""
        return 0

    @property
    def tracks_waiting(self) -> int:
        """Tracks connected but still waiting for their first keyframe."""
        return 0

    @property
    def estimate_bps(self) -> int | None:
        """What its link carried when it last lost packets (quality=auto), bit/s."""
        return None

    async def set_quality(self, quality: str) -> None:
        """The viewer chose another size (auto, high, medium, low) of a simulcast
        stream: from its next keyframe on, in the same session."""
        raise Conflict(
            "not_simulcast",
            f"Stream '{self.stream_id}' comes in one size here: there is no other "
            "quality to choose.",
        )


class Viewer(ViewerSession):
    """One browser (or any WHEP client) watching a stream, its media carried here."""

    def __init__(
        self,
        stream_id: str,
        tracks: Mapping[str, SourceTrack],
        transport: Transport,
        remote_ufrag: str,
        payload_types: dict[str, int],
        cname: str,
        on_join: Callable[[float], None] = lambda seconds: None,
        layers: Sequence[tuple[str, SourceTrack]] = (),
        on_layer_switch: Callable[[bool], None] = lambda up: None,
        pinned: bool = False,
    ) -> None:
        """`layers`: a simulcast stream's video layers (rid, track), best first, to
        switch between as its network allows (`?quality=auto`), or as the viewer
        chooses (`pinned`: it asked for one); `tracks["video"]` is the one it starts
        on."""
        super().__init__(stream_id, transport, remote_ufrag)
        self.cname = cname
        self.rtcp_ssrc = secrets.randbits(32) or 1
        self.switch: LayerSwitch | None = None
        self.tracks: list[ViewerTrack] = []
        for kind, payload_type in payload_types.items():
            if kind == "video" and len(layers) > 1:
                rids, sources = zip(*layers, strict=True)

                def switched(old: int, new: int, rids: tuple[str, ...] = rids) -> None:
                    self.layer = rids[new]
                    on_layer_switch(new < old)

                self.switch = LayerSwitch(
                    sources,
                    sources.index(tracks["video"]),
                    transport.send_rtp,
                    payload_type,
                    transport.fan_out_target,
                    lambda: not transport.on_tcp,
                    switched,
                    pinned,
                )
                self.tracks.append(self.switch)
                continue
            self.tracks.append(
                ViewerTrack(
                    tracks[kind],
                    transport.send_rtp,
                    payload_type,
                    transport.fan_out_target,
                    lambda: not transport.on_tcp,
                )
            )
        self._by_ssrc = {t.ssrc: t for t in self.tracks}
        transport.on_path(self._path_changed)
        for track in self.tracks:
            track.expect()
        self.nacks_received = 0
        self._octets_reported = 0
        self._reported_at = time.monotonic()
        self._join_reported = False
        self._on_join = on_join
        # Sender reports we sent, by their compact NTP time (the RR's LSR), for RTT.
        self._reports_sent: dict[int, float] = {}

    def connected(self) -> None:
        """Start receiving; video waits for the keyframe this join asks for."""
        for track in self.tracks:
            track.attach()

    def receive_rtcp(self, packet: object) -> None:
        if isinstance(packet, RtcpRtpfbPacket) and packet.fmt == RTCP_RTPFB_NACK:
            self.nacks_received += 1
            track = self._by_ssrc.get(packet.media_ssrc)
            if track is not None:
                track.retransmit(seq & 0xFFFF for seq in packet.lost)
        elif isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_PLI:
            track = self._by_ssrc.get(packet.media_ssrc)
            if track is not None:
                track.request_keyframe()
        elif isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_FIR:
            # FIR names its target SSRCs in the FCI, 8 bytes per entry.
            for offset in range(0, len(packet.fci) - 7, 8):
                ssrc = int.from_bytes(packet.fci[offset : offset + 4], "big")
                track = self._by_ssrc.get(ssrc)
                if track is not None:
                    track.request_keyframe()
        elif isinstance(packet, (RtcpRrPacket, RtcpSrPacket)):
            for report in packet.reports:
                if self.switch is not None and report.ssrc == self.switch.ssrc:
                    self.switch.receiver_report(report.fraction_lost / 256)
                if report.ssrc in self._by_ssrc:
                    self.fraction_lost = report.fraction_lost
                    sent = self._reports_sent.get(report.lsr)
                    if sent is not None:
                        # RFC 3550 §6.4.1: RTT = now - LSR - DLSR.
                        self.rtt_s = max(
                            0.0, time.monotonic() - sent - report.dlsr / 65536
                        )

    @property
    def retransmissions(self) -> int:
        return sum(t.retransmitted for t in self.tracks)

    @property
    def estimate_bps(self) -> int | None:
        return None if self.switch is None else self.switch.choice.estimate_bps

    async def set_quality(self, quality: str) -> None:
        if self.switch is None:
            await super().set_quality(quality)
            return
        count = len(self.switch.layers)
        self.switch.pin(None if quality == "auto" else layer_index(quality, count))

    @property
    def tracks_waiting(self) -> int:
        return sum(t.waiting_for_keyframe for t in self.tracks)

    def counters(self) -> dict[str, int]:
        return {
            **super().counters(),
            "rtp_packets_sent": sum(t.packets_sent + t.resent for t in self.tracks),
            "rtp_bytes_sent": sum(t.octets_sent for t in self.tracks),
            "nacks_received": self.nacks_received,
            "retransmissions": self.retransmissions,
        }

    def _measure(self) -> None:
        now = time.monotonic()
        octets = sum(t.octets_sent for t in self.tracks)
        interval = max(now - self._reported_at, 0.001)
        self.bitrate_out_bps = int((octets - self._octets_reported) * 8 / interval)
        self._octets_reported, self._reported_at = octets, now
        if not self._join_reported:
            for track in self.tracks:
                if track.first_keyframe_at is not None:
                    self._on_join(track.first_keyframe_at - track.joined_at)
                    self._join_reported = True

    def rtcp_report(self) -> bytes:
        """Sender reports (for lip sync and RTT) and our CNAME (RFC 3550 §6.4.1)."""
        self._measure()
        compound = b""
        while len(self._reports_sent) > 4:  # an RR answers one of the last few
            del self._reports_sent[next(iter(self._reports_sent))]
        for track in self.tracks:
            if track.packets_sent == 0:
                continue
            ntp, rtp = track.clock_now()
            self._reports_sent[(ntp >> 16) & 0xFFFFFFFF] = time.monotonic()
            compound += bytes(
                RtcpSrPacket(
                    ssrc=track.ssrc,
                    sender_info=RtcpSenderInfo(
                        ntp_timestamp=ntp,
                        rtp_timestamp=rtp,
                        packet_count=track.packets_sent & 0xFFFFFFFF,
                        octet_count=track.octets_sent & 0xFFFFFFFF,
                    ),
                )
            )
        if compound:
            sdes = RtcpSdesPacket(
                chunks=[
                    RtcpSourceInfo(
                        ssrc=self.tracks[0].ssrc,
                        items=[(RTCP_SDES_CNAME, self.cname.encode())],
                    )
                ]
            )
            compound += bytes(sdes)
        return compound

    def _path_changed(self) -> None:
        """An ICE restart moved us: the fan-out must send to the new address."""
        for track in self.tracks:
            track.retarget()

    def detach(self) -> None:
        for track in self.tracks:
            track.detach()
