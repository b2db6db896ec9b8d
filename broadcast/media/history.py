"""Recently forwarded packets of one track, kept to answer viewers' NACKs."""

from __future__ import annotations

# At 4 Mbit/s video is ~400 packets/s: 1024 slots keep 2.5 s. No more: libsrtp refuses
# to protect a packet more than 1024 behind the newest (aiortc's replay window).
VIDEO_HISTORY_PACKETS = 1024
AUDIO_HISTORY_PACKETS = 512


class PacketHistory:
    """A fixed ring of serialized RTP packets indexed by sequence number."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._sequence_numbers: list[int] = [-1] * size
        self._packets: list[bytes] = [b""] * size

    def add(self, sequence_number: int, packet: bytes) -> None:
        slot = sequence_number % self._size
        self._sequence_numbers[slot] = sequence_number
        self._packets[slot] = packet

    def get(self, sequence_number: int) -> bytes | None:
        """The packet with this sequence number, if still held."""
        slot = sequence_number % self._size
        if self._sequence_numbers[slot] == sequence_number:
            return self._packets[slot]
        return None
