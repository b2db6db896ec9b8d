"""ViewerTrack: one viewer's copy of a SourceTrack — only a payload type and a gate."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from broadcast.media.source_track import SourceTrack

# A NACK names up to 17 packets per 4 bytes: a viewer could ask for thousands at once.
# Real loss on a viewer's link needs far less; the rest is a bug or an attack.
MAX_RETRANSMITS_PER_S = 300


class ViewerTrack:
    """Send a source's already-serialized packets to one viewer.

    Per packet the only per-viewer work is the payload-type byte (when the viewer chose
    another number for the codec) and the SRTP protect + send of its transport.
    """

    def __init__(
        self,
        source: SourceTrack,
        send_rtp: Callable[[bytes], None],
        payload_type: int,
    ) -> None:
        self.source = source
        self._send_rtp = send_rtp
        self.payload_type = payload_type
        self._rewrite_payload_type = payload_type != source.payload_type
        self.waiting_for_keyframe = source.needs_keyframe
        self.packets_sent = 0
        self.octets_sent = 0
        self.retransmitted = 0
        self.joined_at = time.monotonic()
        self.first_keyframe_at: float | None = None
        self._budget = float(MAX_RETRANSMITS_PER_S)
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
        self.packets_sent += 1
        self.octets_sent += len(packet) - 12

    def retransmit(self, sequence_numbers: Iterable[int]) -> None:
        """Answer a NACK from the source's history (RFC 4585 §6.2.1)."""
        if self.waiting_for_keyframe:
            return
        now = time.monotonic()
        self._budget = min(
            float(MAX_RETRANSMITS_PER_S),
            self._budget + (now - self._budget_at) * MAX_RETRANSMITS_PER_S,
        )
        self._budget_at = now
        for seq in set(sequence_numbers):
            if self._budget < 1:
                return
            self._budget -= 1
            packet = self.source.history.get(seq)
            if packet is None:
                continue
            if self._rewrite_payload_type:
                packet = self._with_payload_type(packet)
            self._send_rtp(packet)
            self.retransmitted += 1

    def request_keyframe(self) -> None:
        self.source.keyframes.request()

    def _with_payload_type(self, packet: bytes) -> bytes:
        marker = packet[1] & 0x80
        return packet[:1] + bytes((marker | self.payload_type,)) + packet[2:]
