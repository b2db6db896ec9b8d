"""Recognise the first packet of a keyframe in VP8 and H.264 RTP payloads.

A viewer may only start at such a packet: a decoder given anything else shows garbage
or nothing until the next keyframe.
"""

from __future__ import annotations

from collections.abc import Callable

KeyframeTest = Callable[[bytes], bool]

H264_NAL_IDR = 5
H264_NAL_SPS = 7
H264_NAL_STAP_A = 24
H264_NAL_FU_A = 28


def vp8_starts_keyframe(payload: bytes) -> bool:
    """True for the first packet of a VP8 key frame (RFC 7741 §4.2, §4.3)."""
    if not payload:
        return False
    first = payload[0]
    start_of_partition = first & 0x10
    partition_id = first & 0x07
    if not start_of_partition or partition_id != 0:
        return False
    offset = 1
    if first & 0x80:  # X: extension byte follows
        if len(payload) < 2:
            return False
        ext = payload[1]
        offset = 2
        if ext & 0x80:  # I: picture id, 7 or 15 bits
            if len(payload) <= offset:
                return False
            offset += 2 if payload[offset] & 0x80 else 1
        if ext & 0x40:  # L: TL0PICIDX
            offset += 1
        if ext & 0x30:  # T or K: TID/Y/KEYIDX
            offset += 1
    if len(payload) <= offset:
        return False
    # VP8 payload header: P bit (inverse key frame flag) is bit 0 (RFC 6386 §9.1).
    return not payload[offset] & 0x01


def _first_slice_of_idr(nal_type: int, slice_header: bytes) -> bool:
    # first_mb_in_slice is ue(v) and opens the slice header: it is 0 exactly when the
    # first bit is 1 (ITU-T H.264 §7.3.3). Later slices of the frame must not open the gate.
    return (
        nal_type == H264_NAL_IDR and bool(slice_header) and bool(slice_header[0] & 0x80)
    )


def h264_starts_keyframe(payload: bytes) -> bool:
    """True for a packet that starts an IDR access unit: SPS, or the IDR's first slice
    (RFC 6184 §5: single NAL unit, STAP-A, FU-A)."""
    if not payload:
        return False
    nal_type = payload[0] & 0x1F
    if nal_type == H264_NAL_SPS:
        return True
    if nal_type == H264_NAL_IDR:
        return _first_slice_of_idr(nal_type, payload[1:2])
    if nal_type == H264_NAL_STAP_A:
        offset = 1
        while offset + 2 < len(payload):
            size = int.from_bytes(payload[offset : offset + 2], "big")
            inner_type = payload[offset + 2] & 0x1F
            if inner_type == H264_NAL_SPS or _first_slice_of_idr(
                inner_type, payload[offset + 3 : offset + 4]
            ):
                return True
            offset += 2 + size
        return False
    if nal_type == H264_NAL_FU_A and len(payload) > 2:
        fu_header = payload[1]
        return bool(fu_header & 0x80) and _first_slice_of_idr(
            fu_header & 0x1F, payload[2:3]
        )
    return False


def keyframe_test(mime_type: str) -> KeyframeTest | None:
    """The keyframe test for a video codec, or None for codecs that have no keyframes."""
    return {
        "video/vp8": vp8_starts_keyframe,
        "video/h264": h264_starts_keyframe,
    }.get(mime_type.lower())
