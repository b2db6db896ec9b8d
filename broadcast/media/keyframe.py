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


def h264_starts_keyframe(payload: bytes) -> bool:
    """True for a packet that starts an IDR access unit: SPS or IDR (RFC 6184 §5)."""
    if not payload:
        return False
    nal_type = payload[0] & 0x1F
    if nal_type in (H264_NAL_SPS, H264_NAL_IDR):
        return True
    if nal_type == H264_NAL_STAP_A:
        offset = 1
        while offset + 2 < len(payload):
            size = int.from_bytes(payload[offset : offset + 2], "big")
            inner_type = payload[offset + 2] & 0x1F
            if inner_type in (H264_NAL_SPS, H264_NAL_IDR):
                return True
            offset += 2 + size
        return False
    if nal_type == H264_NAL_FU_A and len(payload) > 1:
        fu_header = payload[1]
        return bool(fu_header & 0x80) and (fu_header & 0x1F) == H264_NAL_IDR
    return False


def keyframe_test(mime_type: str) -> KeyframeTest | None:
    """The keyframe test for a video codec, or None for codecs that have no keyframes."""
    return {
        "video/vp8": vp8_starts_keyframe,
        "video/h264": h264_starts_keyframe,
    }.get(mime_type.lower())
