"""H.264 RTP repacketization (RFC 6184): a camera's packets made fit for WebRTC viewers.

Cameras send single NAL units, STAP-A and FU-A of any size (up to ~64 KB over
TCP-interleaved RTSP) and often announce SPS/PPS only in the SDP. Browsers need payloads
within our MTU budget, packetization-mode 1, and SPS+PPS before every IDR. No re-encoding:
NAL units are taken apart and put back together, their bytes untouched.
"""

from __future__ import annotations

import base64
import binascii
from typing import NamedTuple

# Our MTU budget for an RTP payload: 1200 leaves room for RTP, SRTP and TURN headers.
MAX_PAYLOAD_BYTES = 1200
# A reassembled NAL unit larger than this is garbage (a 4K IDR is ~2 MB): bound memory.
MAX_NAL_UNIT_BYTES = 8 * 1024 * 1024
# In-band SPS/PPS held until the next slice; more than this without a slice is garbage.
MAX_PENDING_PARAMETER_SETS = 8

# NAL unit types: H.264 table 7-1, RFC 6184 §5.2 table 1.
NAL_IDR = 5
NAL_SPS = 7
NAL_PPS = 8
NAL_STAP_A = 24
NAL_FU_A = 28
# Coded slices (non-IDR, partitions A-C, IDR): with SPS/PPS, all a WebRTC decoder needs.
# AUD, SEI, filler, end of sequence/stream and extension types are dropped on purpose.
_SLICE_TYPES = frozenset(range(1, 6))
_FU_START = 0x80
_FU_END = 0x40


class H264Payload(NamedTuple):
    """One outgoing RTP payload with its marker bit and whether it starts a keyframe."""

    payload: bytes
    marker: bool
    keyframe: (
        bool  # first packet of an IDR access unit: the SPS/PPS just before the IDR
    )


def parse_sprop_parameter_sets(sprop: str | None) -> list[bytes]:
    """Decode `sprop-parameter-sets` (RFC 6184 §8.1), skipping entries that are not base64."""
    nal_units = []
    for entry in (sprop or "").split(","):
        entry = entry.strip()
        if not entry:
            continue
        try:
            # Some cameras omit the base64 padding.
            nal = base64.b64decode(entry + "=" * (-len(entry) % 4), validate=True)
        except (binascii.Error, ValueError):
            continue
        if nal:
            nal_units.append(nal)
    return nal_units


class H264Repacketizer:
    """Turn a camera's H.264 RTP payloads into WebRTC-sized payloads, SPS/PPS before every IDR.

    Feed payloads in sequence order; timestamps and sequence numbers are the caller's.
    `dropped_packets` counts what was discarded as malformed, unsupported (STAP-B, MTAP,
    FU-B) or incomplete (a FU-A that lost a fragment).
    """

    def __init__(
        self,
        sprop_parameter_sets: str | None = None,
        max_payload: int = MAX_PAYLOAD_BYTES,
    ) -> None:
        # An FU-A needs two header bytes and one of data; the STAP-A size field is 16 bits.
        if not 3 <= max_payload <= 0xFFFF:
            raise ValueError(f"max_payload must be within 3..65535, not {max_payload}")
        self.max_payload = max_payload
        self.dropped_packets = 0
        self._sps: bytes | None = None
        self._pps: bytes | None = None
        self._pending: list[bytes] = []  # in-band SPS/PPS not forwarded yet
        self._fragments: list[bytes] = []  # the FU-A being reassembled
        self._fragment_bytes = 0
        self._fragment_timestamp = 0
        self._keyframe_timestamp: int | None = None
        for nal in parse_sprop_parameter_sets(sprop_parameter_sets):
            self._remember(nal)

    @property
    def parameter_sets_known(self) -> bool:
        """Whether an SPS and a PPS are known (from the SDP or in band)."""
        return self._sps is not None and self._pps is not None

    def reset(self) -> None:
        """Drop a partial FU-A and held SPS/PPS (after packet loss or a camera reconnect)."""
        self._drop_fragments()
        self._pending = []
        self._keyframe_timestamp = None

    def push(
        self, payload: bytes, timestamp: int, marker: bool, lost: bool = False
    ) -> list[H264Payload]:
        """Feed one incoming RTP payload; return the outgoing payloads for ready NAL units.

        `lost`: packets are missing just before this one, so a partial FU-A is dropped.
        """
        out: list[H264Payload] = []
        if lost or (self._fragments and timestamp != self._fragment_timestamp):
            self._drop_fragments()
        for nal in self._depacketize(payload, timestamp):
            self._forward(nal, timestamp, out)
        # The camera marks the last packet of a frame (RFC 6184 §5.1): so do we.
        if marker and out:
            out[-1] = out[-1]._replace(marker=True)
        return out

    def _depacketize(self, payload: bytes, timestamp: int) -> list[bytes]:
        if not payload:
            self.dropped_packets += 1
            return []
        nal_type = payload[0] & 0x1F
        if 1 <= nal_type <= 23:  # single NAL unit packet, RFC 6184 §5.6
            return [payload]
        if nal_type == NAL_STAP_A:
            return self._split_stap_a(payload)
        if nal_type == NAL_FU_A:
            return self._reassemble_fu_a(payload, timestamp)
        # STAP-B, MTAP16/24, FU-B need interleaved mode (we negotiate mode 1); 0/30/31 undefined.
        self.dropped_packets += 1
        return []

    def _split_stap_a(self, payload: bytes) -> list[bytes]:
        """Split a STAP-A (RFC 6184 §5.7.1); drop it whole if a size field is off."""
        nal_units = []
        offset, end = 1, len(payload)
        while offset < end:
            size = int.from_bytes(payload[offset : offset + 2], "big")
            offset += 2
            if size == 0 or offset + size > end:
                self.dropped_packets += 1
                return []
            nal_units.append(payload[offset : offset + size])
            offset += size
        if not nal_units:
            self.dropped_packets += 1
        return nal_units

    def _reassemble_fu_a(self, payload: bytes, timestamp: int) -> list[bytes]:
        """Collect FU-A fragments (RFC 6184 §5.8); a run missing its start is dropped."""
        if len(payload) < 2:
            self.dropped_packets += 1
            return []
        fu_header = payload[1]
        if fu_header & _FU_START:
            self._drop_fragments()
            # The original NAL header: F and NRI from the FU indicator, type from the FU header.
            header = (payload[0] & 0xE0) | (fu_header & 0x1F)
            self._fragments = [bytes((header,))]
            self._fragment_bytes = 1
            self._fragment_timestamp = timestamp
        elif not self._fragments:
            self.dropped_packets += 1
            return []
        self._fragments.append(payload[2:])
        self._fragment_bytes += len(payload) - 2
        if self._fragment_bytes > MAX_NAL_UNIT_BYTES:
            self._drop_fragments()
            return []
        if not fu_header & _FU_END:
            return []
        nal = b"".join(self._fragments)
        self._fragments = []
        return [nal]

    def _drop_fragments(self) -> None:
        if self._fragments:
            self._fragments = []
            self.dropped_packets += 1

    def _remember(self, nal: bytes) -> None:
        nal_type = nal[0] & 0x9F  # with the forbidden bit, which must be 0
        if nal_type == NAL_SPS:
            self._sps = nal
        elif nal_type == NAL_PPS:
            self._pps = nal

    def _forward(self, nal: bytes, timestamp: int, out: list[H264Payload]) -> None:
        header = nal[0]
        nal_type = header & 0x1F
        if header & 0x80 or nal_type == 0 or nal_type > 23:
            # Forbidden bit set (RFC 6184 §5.3: may be discarded) or not a NAL unit type.
            self.dropped_packets += 1
            return
        if nal_type in (NAL_SPS, NAL_PPS):
            # Held until the next slice: before an IDR they go out with it, once.
            self._remember(nal)
            if len(self._pending) >= MAX_PENDING_PARAMETER_SETS:
                del self._pending[0]
            self._pending.append(nal)
            return
        if nal_type not in _SLICE_TYPES:
            return
        if nal_type == NAL_IDR and timestamp != self._keyframe_timestamp:
            # First IDR slice of its access unit: SPS and PPS right before it.
            self._keyframe_timestamp = timestamp
            pending_types = {pending[0] & 0x1F for pending in self._pending}
            if {NAL_SPS, NAL_PPS} <= pending_types:
                parameter_sets = self._pending
            else:
                parameter_sets = [
                    nal for nal in (self._sps, self._pps) if nal is not None
                ]
            self._pending = []
            self._aggregate(parameter_sets, self.parameter_sets_known, out)
        elif self._pending:
            self._aggregate(self._pending, False, out)
            self._pending = []
        self._packetize(nal, out)

    def _aggregate(
        self, nal_units: list[bytes], keyframe: bool, out: list[H264Payload]
    ) -> None:
        """Send NAL units in one STAP-A if they fit (RFC 6184 §5.7.1), else one by one."""
        if not nal_units:
            return
        first = len(out)
        size = 1 + sum(2 + len(nal) for nal in nal_units)
        if len(nal_units) > 1 and size <= self.max_payload:
            # STAP-A header: NRI is the highest NRI (§5.7.1); F is 0, as F=1 units are dropped.
            nri = max(nal[0] & 0x60 for nal in nal_units)
            parts = [bytes((nri | NAL_STAP_A,))]
            for nal in nal_units:
                parts += (len(nal).to_bytes(2, "big"), nal)
            out.append(H264Payload(b"".join(parts), False, False))
        else:
            for nal in nal_units:
                self._packetize(nal, out)
        if keyframe:
            out[first] = out[first]._replace(keyframe=True)

    def _packetize(self, nal: bytes, out: list[H264Payload]) -> None:
        """Send a NAL unit whole (RFC 6184 §5.6) or in FU-A fragments (§5.8)."""
        if len(nal) <= self.max_payload:
            out.append(H264Payload(nal, False, False))
            return
        indicator = (nal[0] & 0xE0) | NAL_FU_A
        nal_type = nal[0] & 0x1F
        chunk = self.max_payload - 2
        end = len(nal)
        for start in range(1, end, chunk):
            fu_header = nal_type
            if start == 1:
                fu_header |= _FU_START
            if start + chunk >= end:
                fu_header |= _FU_END
            fragment = bytes((indicator, fu_header)) + nal[start : start + chunk]
            out.append(H264Payload(fragment, False, False))
