"""ViewerTrack: one viewer's copy of a SourceTrack — only a payload type and a gate."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable

from broadcast.media.source_track import SourceTrack
from broadcast.media.transport_protocol import NativeTarget
from broadcast.media.udp_mux import FanOutTarget, MediaSocket

# A NACK names up to 17 packets per 4 bytes: a viewer could ask for thousands at once.
# Real loss on a viewer's link needs far less; the rest is a bug or an attack.
MAX_RETRANSMITS_PER_S = 300
# Each answer to a NACK goes out twice over UDP, the spare copy this much later. A
# receiver need not ask again for a retransmission that is lost in turn: aiortc's asks
# only at its next gap, and its jitter buffer holds every later frame until then (a
# 0.3-2 s freeze, 1 viewer in 12 over 5 s at 5 % loss). Two copies make that p^2:
# +5 % traffic at 5 % loss, none on a clean link; the receiver's SRTP replay check
# drops the spare. Later, not back to back: a queue that overflows loses bursts.
# Spares only from the budget the first copies left; none on ICE-TCP (reliable: a gap
# there is our own drop of a congested link, which a copy would only add to).
SPARE_COPY_DELAY_S = 0.02
# A viewer's own PLIs and FIRs, at most this often: it cannot make the publisher send
# keyframes at the interval joins may (each one costs every viewer picture quality).
VIEWER_KEYFRAME_INTERVAL_S = 1.0


class ViewerTrack:
    """Send a source's already-serialized packets to one viewer.

    Per packet the only per-viewer work is the payload-type byte (when the viewer chose
    another number for the codec) and the SRTP protect + send of its transport. Once
    connected and past the keyframe gate, the source hands that work to its socket's
    fan-out (native `sendmmsg`, or one Python loop) and this object only keeps the
    count.
    """

    def __init__(
        self,
        source: SourceTrack,
        send_rtp: Callable[[bytes], None],
        payload_type: int,
        native_target: Callable[[], NativeTarget | None] = lambda: None,
        spare_copies: Callable[[], bool] = lambda: True,
    ) -> None:
        self.source = source
        self._send_rtp = send_rtp
        self._native_target = native_target
        self.payload_type = payload_type
        self._rewrite_payload_type = payload_type != source.payload_type
        self.waiting_for_keyframe = source.needs_keyframe
        self._packets_sent = 0
        self._octets_sent = 0
        # The source's fan-out counts when this viewer joined it: (packets, octets).
        self._fanned_from: tuple[int, int] | None = None
        self._spare_copies = spare_copies
        self.retransmitted = 0  # packets answered to NACKs
        self.resent = 0  # copies sent for them
        self._keyframe_asked_at = -VIEWER_KEYFRAME_INTERVAL_S
        self.joined_at = time.monotonic()
        # When its offer came: a keyframe asked for or sent since then is its to start at.
        self.asked_at = self.joined_at
        self.first_keyframe_at: float | None = None
        # Packets it may have sent again per second (a LayerSwitch lowers it).
        self.retransmit_rate = float(MAX_RETRANSMITS_PER_S)
        self._budget = self.retransmit_rate
        self._budget_at = time.monotonic()

    def send(self, packet: bytes, keyframe: bool) -> None:
        """Forward one packet; video starts only at a keyframe."""
        if self.waiting_for_keyframe:
            if not keyframe:
                return
            self.waiting_for_keyframe = False
            self.first_keyframe_at = time.monotonic()
        if self._rewrite_payload_type:
            packet = self._with_payload_type(packet)
        self._send_rtp(packet)
        self._packets_sent += 1
        self._octets_sent += len(packet) - 12

    @property
    def ssrc(self) -> int:
        """The SSRC the viewer receives this track with (named in its answer)."""
        return self.source.ssrc

    def expect(self) -> None:
        """Its offer came: the keyframe it starts at may be asked for already."""
        self.source.expect_viewer(self)

    def attach(self) -> None:
        """Connected: packets may flow."""
        self.source.add_viewer(self)

    def detach(self) -> None:
        self.source.remove_viewer(self)

    def retarget(self) -> None:
        """Its transport moved to another ICE pair (an ICE restart)."""
        self.source.retarget(self)

    def clock_now(self) -> tuple[int, int]:
        """NTP time and RTP timestamp, as this viewer receives it, for sender reports."""
        return self.source.clock_now()

    def fan_out_target(self) -> tuple[MediaSocket, FanOutTarget] | None:
        """This viewer for the fan-out, once it can take every packet."""
        if self.waiting_for_keyframe:
            return None
        found = self._native_target()
        if found is None:
            return None
        media, session_address, address, session = found
        payload_type = self.payload_type if self._rewrite_payload_type else -1
        return media, (session_address, address, payload_type, session)

    def fanned_from(self, packets: int, octets: int) -> None:
        """From now on the source's fan-out sends this viewer's packets."""
        self._fanned_from = (packets, octets)

    def fan_out_left(self) -> None:
        """It is sent one by one from now on: what the fan-out sent it is kept."""
        self._packets_sent, self._octets_sent = self.packets_sent, self.octets_sent
        self._fanned_from = None

    @property
    def packets_sent(self) -> int:
        if self._fanned_from is None:
            return self._packets_sent
        return self._packets_sent + self.source.fanned_packets - self._fanned_from[0]

    @property
    def octets_sent(self) -> int:
        if self._fanned_from is None:
            return self._octets_sent
        return self._octets_sent + self.source.fanned_octets - self._fanned_from[1]

    def retransmit(self, sequence_numbers: Iterable[int]) -> None:
        """Answer a NACK from the source's history (RFC 4585 §6.2.1)."""
        if self.waiting_for_keyframe:
            return
        now = time.monotonic()
        self._budget = min(
            self.retransmit_rate,
            self._budget + (now - self._budget_at) * self.retransmit_rate,
        )
        self._budget_at = now
        answered = []
        for seq in set(sequence_numbers):
            if self._budget < 1:
                break
            packet = self._copy_of(seq)
            if packet is None:
                continue
            self._budget -= 1
            self._send_rtp(packet)
            answered.append(packet)
        self.retransmitted += len(answered)
        self.resent += len(answered)
        spares = answered[: int(self._budget)] if self._spare_copies() else []
        if spares:
            self._budget -= len(spares)
            asyncio.get_running_loop().call_later(
                SPARE_COPY_DELAY_S, self._send_spares, spares
            )

    def _copy_of(self, seq: int) -> bytes | None:
        """The packet it received as `seq`, to send again, if it is still kept."""
        packet = self.source.history.get(seq)
        if packet is not None and self._rewrite_payload_type:
            packet = self._with_payload_type(packet)
        return packet

    def _send_spares(self, packets: list[bytes]) -> None:
        """Send the spare copies (dropped by the transport if it closed since)."""
        for packet in packets:
            self._send_rtp(packet)
        self.resent += len(packets)

    def request_keyframe(self) -> None:
        """This viewer's PLI or FIR, merged with everyone's into the source's."""
        now = time.monotonic()
        if now - self._keyframe_asked_at >= VIEWER_KEYFRAME_INTERVAL_S:
            self._keyframe_asked_at = now
            self.source.keyframes.request()

    def _with_payload_type(self, packet: bytes) -> bytes:
        marker = packet[1] & 0x80
        return packet[:1] + bytes((marker | self.payload_type,)) + packet[2:]
