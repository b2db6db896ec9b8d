"""SourceTrack: one incoming track, rewritten once and fanned out to its viewer tracks."""

from __future__ import annotations

import asyncio
import secrets
import struct
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, cast

from aiortc import RTCRtpCodecParameters
from aiortc.clock import current_ntp_time
from aiortc.rtp import RtpPacket

from broadcast.media.history import (
    AUDIO_HISTORY_PACKETS,
    VIDEO_HISTORY_PACKETS,
    PacketHistory,
)
from broadcast.media.keyframe_detect import keyframe_test
from broadcast.media.keyframe_requests import KeyframeRequester
from broadcast.media.resolution import keyframe_resolution

if TYPE_CHECKING:
    from broadcast.media.udp_mux import FanOutTarget, MediaSocket

RTP_HEADER = struct.Struct("!BBHII")
# A camera's GOP kept for joining viewers: 1 s at 8 Mbit/s is ~850 packets, and cameras
# set to long GOPs send 4-5 s (~7 MB here at most, and in each worker serving the
# stream). Past this the cache is dropped until the next keyframe.
GOP_CACHE_PACKETS = 6000
# A publisher answers a join's PLI within ~1 frame and a round trip (Chrome, aiortc:
# under 100 ms); a viewer still without a keyframe after this starts from the cache.
GOP_FALLBACK_S = 0.25
# A publisher that ignores PLIs (a looped file, OBS with a fixed keyframe interval) still
# sends keyframes of its own, and some land just after one of our PLIs by chance: with
# joins asking every 0.5 s and a 1 s GOP, one in two. It is believed to answer again
# only after this many PLIs in a row each got a keyframe before the next PLI went out
# (a wrong belief costs every joiner GOP_FALLBACK_S: join p95 34 -> 280 ms at 200-400).
PLI_ANSWERS_TO_TRUST = 2
# A publisher's RTP clock against ours over a join (~0.1 s): a GOP this much older than
# the time since a viewer asked still began with the keyframe asked for.
GOP_AGE_SLACK_S = 0.05
# A viewer that took long to connect (TURN, ICE-TCP) does not start from a GOP this old,
# even if its keyframe came since the offer: it would start seconds behind live, with a
# burst of the whole GOP. It asks for a fresh keyframe instead.
JOIN_GOP_MAX_AGE_S = 0.5
RTP_VERSION_BITS = 0x80
RTP_PADDING_BIT = 0x20
NTP_ONE_SECOND = 1 << 32


class TrackViewer(Protocol):
    """What a SourceTrack asks of one viewer's copy of it (`ViewerTrack`, which
    imports this module: a source knows its viewers only through this)."""

    joined_at: float  # set when it joins the source
    asked_at: float  # when its offer came: a keyframe since then is its to start at

    @property
    def waiting_for_keyframe(self) -> bool: ...

    def send(self, packet: bytes, keyframe: bool) -> None: ...

    def fan_out_target(self) -> tuple[MediaSocket, FanOutTarget] | None: ...

    def fanned_from(self, packets: int, octets: int) -> None: ...

    def fan_out_left(self) -> None: ...


def _uint16_newer(a: int, b: int) -> bool:
    return a != b and ((a - b) & 0xFFFF) < 0x8000


class SourceTrack:
    """One media track of a stream, as all its viewers receive it.

    Packets are rewritten here once per track: our own SSRC (one for all viewers),
    sequence numbers and timestamps kept continuous across publisher reconnects, header
    extensions dropped (their ids were negotiated with the publisher, not the viewers).
    The codec is fixed by the first publish, since viewers negotiated it.
    """

    def __init__(
        self, kind: str, codec: RTCRtpCodecParameters, answers_pli: bool = True
    ) -> None:
        self.kind = kind
        self.codec = codec
        self.payload_type: int = cast(int, codec.payloadType)  # set by the SDP parser
        self.clock_rate = codec.clockRate
        self.ssrc = secrets.randbits(32) or 1
        self.viewers: list[TrackViewer] = []
        # Viewers sent to one by one (connecting, before their keyframe, on ICE-TCP or
        # a port of their own), and those the fan-out serves, by shared socket.
        self._one_by_one: list[TrackViewer] = []
        self._fanned: dict[TrackViewer, tuple[MediaSocket, FanOutTarget]] = {}
        self._fan_out_groups: list[tuple[MediaSocket, list[FanOutTarget]]] = []
        self.fanned_packets = 0
        self.fanned_octets = 0
        self.history = PacketHistory(
            VIDEO_HISTORY_PACKETS if kind == "video" else AUDIO_HISTORY_PACKETS
        )
        self._starts_keyframe = keyframe_test(codec.mimeType)
        self.needs_keyframe = self._starts_keyframe is not None
        self.request_pli: Callable[[], bool] = lambda: False
        self.keyframes = KeyframeRequester(lambda: self.request_pli())
        self._upstream_ssrc: int | None = None
        self._seq_offset = 0
        self._ts_offset = 0
        self._highest_seq: int | None = None
        self._last_ts = 0
        self._last_arrival = 0.0
        self._sender_report: tuple[int, int, float] | None = None
        self.packets_in = 0
        self.bytes_in = 0
        self.bitrate_bps = 0  # as its publisher's last receiver report measured it
        # The last GOP, so that a joining viewer can start at the latest keyframe: at
        # once from a source that cannot answer a PLI (a camera), and from a publisher
        # that has not answered the join's PLI within GOP_FALLBACK_S (a looped file, OBS
        # with a fixed keyframe interval) instead of waiting for its next keyframe.
        self._can_answer_pli = answers_pli
        self._answers_pli = answers_pli  # learnt: do our PLIs get keyframes?
        self._answered_in_row = 0
        self._plis_at_keyframe = 0  # keyframes.sent when the last keyframe came
        self._keyframe_ts: int | None = None
        self._cache_gop = self._starts_keyframe is not None
        self.gop: list[bytes] = []
        self._gop_arrived_at = -1.0  # monotonic seconds: when its keyframe came
        self.resolution: tuple[int, int] | None = None
        # Worker processes whose viewers watch this track get each packet once, and
        # the publisher's clock (for their viewers' sender reports).
        self.taps: list[Callable[[bytes], None]] = []
        self.clock_taps: list[Callable[[int, int], None]] = []

    @property
    def can_answer_pli(self) -> bool:
        """Whether its source can send a keyframe when asked (a camera cannot)."""
        return self._can_answer_pli

    @property
    def newest(self) -> tuple[int, int] | None:
        """The sequence number and timestamp of the newest packet sent (None: none)."""
        if self._highest_seq is None:
            return None
        return self._highest_seq, self._last_ts

    @property
    def gop_arrived_at(self) -> float:
        """When the cached GOP's keyframe came (monotonic seconds; -1: none yet)."""
        return self._gop_arrived_at

    def __repr__(self) -> str:
        return f"SourceTrack({self.kind} {self.codec.mimeType})"

    def forward(self, packet: RtpPacket) -> None:
        """Rewrite one upstream packet, keep it for NACKs, send it to every viewer."""
        if packet.ssrc != self._upstream_ssrc:
            self._rebase(packet)
        seq = (packet.sequence_number + self._seq_offset) & 0xFFFF
        ts = (packet.timestamp + self._ts_offset) & 0xFFFFFFFF
        payload = packet.payload
        first = RTP_VERSION_BITS
        if packet.padding_size:
            first |= RTP_PADDING_BIT
            payload += bytes(packet.padding_size - 1) + bytes([packet.padding_size])
        data = (
            RTP_HEADER.pack(
                first, (packet.marker << 7) | self.payload_type, seq, ts, self.ssrc
            )
            + payload
        )
        self.relay(data, seq, ts)

    def relay(self, data: bytes, seq: int, ts: int) -> None:
        """Keep one rewritten packet for NACKs and joins, send it to every viewer.

        A worker process's copy of the track starts here, with the packets the main
        process rewrote (they carry no header extension: the payload is at byte 12).
        """
        keyframe = self._starts_keyframe is not None and self._starts_keyframe(
            data[12:]
        )
        if self._highest_seq is None or _uint16_newer(seq, self._highest_seq):
            self._highest_seq = seq
            self._last_ts = ts
            self._last_arrival = time.monotonic()
        self.packets_in += 1
        self.bytes_in += len(data)
        self.history.add(seq, data)
        if keyframe:
            self.resolution = (
                keyframe_resolution(self.codec.mimeType, data[12:]) or self.resolution
            )
            if ts != self._keyframe_ts:  # not a later packet of the same keyframe
                self._keyframe_ts = ts
                self._learn_whether_plis_are_answered()
        if self._cache_gop:
            self._keep_in_gop(data, keyframe)
        for tap in self.taps:
            tap(data)
        for viewer in self._one_by_one:
            viewer.send(data, keyframe)
        if self._fan_out_groups:
            for media, targets in self._fan_out_groups:
                media.fan_out(data, targets)
            self.fanned_packets += 1
            self.fanned_octets += len(data) - 12
        if keyframe and self._one_by_one:
            self._move_to_fan_out()  # those whose first keyframe this was

    def _learn_whether_plis_are_answered(self) -> None:
        """At a keyframe: was it the answer to the one PLI sent since the last one?"""
        asked = self.keyframes.sent - self._plis_at_keyframe
        self._plis_at_keyframe = self.keyframes.sent
        if not asked:
            return  # the publisher's own
        if asked == 1 and time.monotonic() - self.keyframes.last_sent <= GOP_FALLBACK_S:
            self._answered_in_row += 1
            if self._answered_in_row >= PLI_ANSWERS_TO_TRUST:
                self._answers_pli = self._can_answer_pli
        else:  # a PLI went unanswered until the next one
            self._answered_in_row = 0

    def _move_to_fan_out(self) -> None:
        """Hand viewers past their keyframe gate to the fan-out, from the next packet.

        Asked when a gate may have opened (a viewer added, a keyframe, the cached GOP
        sent), not on a timer; those that never can (ICE-TCP, port-range mode) stay
        one by one."""
        moved = False
        for viewer in list(self._one_by_one):
            found = viewer.fan_out_target()
            if found is not None:
                self._one_by_one.remove(viewer)
                self._fanned[viewer] = found
                viewer.fanned_from(self.fanned_packets, self.fanned_octets)
                moved = True
        if moved:
            self._group_fan_out()

    def _group_fan_out(self) -> None:
        groups: dict[MediaSocket, list[FanOutTarget]] = {}
        for media, target in self._fanned.values():
            groups.setdefault(media, []).append(target)
        self._fan_out_groups = list(groups.items())

    def _keep_in_gop(self, data: bytes, keyframe: bool) -> None:
        # A keyframe's later packets (its IDR after the SPS/PPS, SPS/PPS repeated
        # before each slice) start no GOP: a GOP without its SPS/PPS cannot be decoded.
        if keyframe and not (self.gop and self.gop[0][4:8] == data[4:8]):
            self.gop = [data]
            self._gop_arrived_at = time.monotonic()
        elif self.gop and len(self.gop) < GOP_CACHE_PACKETS:
            self.gop.append(data)
        else:
            self.gop = []

    def _rebase(self, packet: RtpPacket) -> None:
        """Continue our sequence and timeline where the previous upstream left off."""
        self._upstream_ssrc = packet.ssrc
        self._sender_report = None
        if self._highest_seq is None:
            return
        elapsed = max(time.monotonic() - self._last_arrival, 0.001)
        self._seq_offset = (self._highest_seq + 1 - packet.sequence_number) & 0xFFFF
        self._ts_offset = (
            self._last_ts + int(elapsed * self.clock_rate) - packet.timestamp
        ) & 0xFFFFFFFF

    def upstream_changed(self) -> None:
        """A new publisher takes over: rebase at its first packet, whatever its SSRC."""
        self._upstream_ssrc = None
        self._answers_pli = self._can_answer_pli

    def take_sender_report(self, ntp_time: int, rtp_timestamp: int) -> None:
        """Remember the publisher's NTP/RTP clock pairing for viewers' sender reports."""
        ours = (rtp_timestamp + self._ts_offset) & 0xFFFFFFFF
        self._sender_report = (ntp_time, ours, time.monotonic())
        for tap in self.clock_taps:
            tap(ntp_time, ours)

    def clock_now(self) -> tuple[int, int]:
        """NTP time and our RTP timestamp for 'now', for sender reports to viewers."""
        now = time.monotonic()
        if self._sender_report is not None:
            ntp, rtp, at = self._sender_report
            elapsed = now - at
            return (
                (ntp + int(elapsed * NTP_ONE_SECOND)) & 0xFFFFFFFFFFFFFFFF,
                (rtp + int(elapsed * self.clock_rate)) & 0xFFFFFFFF,
            )
        elapsed = now - self._last_arrival if self._last_arrival else 0.0
        return current_ntp_time(), (
            self._last_ts + int(elapsed * self.clock_rate)
        ) & 0xFFFFFFFF

    def expect_viewer(self, viewer: TrackViewer) -> None:
        """Ask for the keyframe a viewer will start at when it offers, not once it has
        connected: the publisher's answer (35-150 ms from Chromium) then overlaps ICE
        and DTLS instead of following them."""
        if viewer.waiting_for_keyframe:
            self.keyframes.request()

    def add_viewer(self, viewer: TrackViewer) -> None:
        viewer.joined_at = time.monotonic()
        self.viewers.append(viewer)
        self._one_by_one.append(viewer)
        # The keyframe asked for at its offer may have come while it connected.
        if not self._answers_pli or self._gop_is_recent(viewer.asked_at):
            self._start_from_gop(viewer)
        if viewer.waiting_for_keyframe:
            arrived = self._gop_arrived_at >= viewer.asked_at  # but too old to use
            if arrived or self.keyframes.last_sent < viewer.asked_at:
                self.keyframes.request()  # else the one asked at its offer is coming
            asyncio.get_running_loop().call_later(
                GOP_FALLBACK_S, self._fall_back_to_gop, viewer
            )
        self._move_to_fan_out()

    def _gop_is_recent(self, asked_at: float) -> bool:
        """Whether the cached GOP's keyframe came since `asked_at`, and is as young in
        its RTP time: a worker's copy also receives an old GOP (replayed) then."""
        if not self.gop or self._gop_arrived_at < asked_at:
            return False
        first_ts = int.from_bytes(self.gop[0][4:8], "big")
        age_s = ((self._last_ts - first_ts) & 0xFFFFFFFF) / self.clock_rate
        return age_s <= min(
            JOIN_GOP_MAX_AGE_S, time.monotonic() - asked_at + GOP_AGE_SLACK_S
        )

    def _fall_back_to_gop(self, viewer: TrackViewer) -> None:
        """The PLI went unanswered: this viewer, and those who join next, start from
        the cached GOP (until a PLI is answered in time again)."""
        if self._start_from_gop(viewer):
            self._answers_pli = False
            self._answered_in_row = 0
            self._move_to_fan_out()

    def _start_from_gop(self, viewer: TrackViewer) -> bool:
        """Send the cached GOP to a viewer still waiting for its first keyframe;
        False if it was not waiting (it got one, or it left)."""
        if not viewer.waiting_for_keyframe or viewer not in self._one_by_one:
            return False
        for index, packet in enumerate(self.gop):
            viewer.send(packet, keyframe=index == 0)
        return True

    def retarget(self, viewer: TrackViewer) -> None:
        """The viewer's transport moved to another ICE pair (an ICE restart): its
        fan-out entry follows, or it goes back to one by one (now on ICE-TCP)."""
        if viewer not in self._fanned:
            return
        found = viewer.fan_out_target()
        if found is None:
            del self._fanned[viewer]
            viewer.fan_out_left()
            self._one_by_one.append(viewer)
        else:
            self._fanned[viewer] = found
        self._group_fan_out()

    def remove_viewer(self, viewer: TrackViewer) -> None:
        if viewer in self.viewers:
            self.viewers.remove(viewer)
        if viewer in self._one_by_one:
            self._one_by_one.remove(viewer)
        if self._fanned.pop(viewer, None) is not None:
            self._group_fan_out()

    def close(self) -> None:
        self.keyframes.close()
        self.viewers.clear()
        self._one_by_one.clear()
        self._fanned.clear()
        self._fan_out_groups = []
