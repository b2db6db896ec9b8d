"""The picture size a keyframe carries: VP8 frame header, H.264 SPS (for the admin API)."""

from __future__ import annotations

H264_HIGH_PROFILES = {100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135}


def vp8_resolution(payload: bytes) -> tuple[int, int] | None:
    """Width and height from the first packet of a VP8 key frame (RFC 6386 §9.1)."""
    if not payload:
        return None
    offset = 1
    if (
        payload[0] & 0x80 and len(payload) > 1
    ):  # payload descriptor extensions (RFC 7741)
        ext = payload[1]
        offset = 2
        if ext & 0x80:
            offset += 2 if len(payload) > offset and payload[offset] & 0x80 else 1
        offset += bool(ext & 0x40) + bool(ext & 0x30)
    header = payload[offset : offset + 10]
    if len(header) < 10 or header[0] & 0x01 or header[3:6] != b"\x9d\x01\x2a":
        return None
    width = int.from_bytes(header[6:8], "little") & 0x3FFF
    height = int.from_bytes(header[8:10], "little") & 0x3FFF
    return (width, height) if width and height else None


class _Bits:
    """Exp-Golomb reader over an RBSP (emulation-prevention bytes removed)."""

    def __init__(self, data: bytes) -> None:
        self.value = int.from_bytes(data, "big")
        self.left = len(data) * 8

    def bits(self, count: int) -> int:
        if count > self.left:
            raise ValueError("SPS truncated")
        self.left -= count
        return (self.value >> self.left) & ((1 << count) - 1)

    def ue(self) -> int:
        zeros = 0
        while self.bits(1) == 0:
            zeros += 1
            if zeros > 31:
                raise ValueError("bad Exp-Golomb code")
        return (1 << zeros) - 1 + self.bits(zeros)

    def se(self) -> int:
        code = self.ue()
        return (code + 1) // 2 if code % 2 else -(code // 2)


def h264_sps(payload: bytes) -> bytes | None:
    """The SPS in an RTP payload: a single NAL unit or inside a STAP-A (RFC 6184)."""
    if not payload:
        return None
    if payload[0] & 0x1F == 7:
        return payload
    if payload[0] & 0x1F == 24:
        offset = 1
        while offset + 2 < len(payload):
            size = int.from_bytes(payload[offset : offset + 2], "big")
            nal = payload[offset + 2 : offset + 2 + size]
            if nal and nal[0] & 0x1F == 7:
                return nal
            offset += 2 + size
    return None


def keyframe_resolution(mime_type: str, payload: bytes) -> tuple[int, int] | None:
    """The size announced by the first packet of a keyframe, if it says."""
    if mime_type.lower() == "video/vp8":
        return vp8_resolution(payload)
    sps = h264_sps(payload)
    return h264_resolution(sps) if sps else None


def h264_resolution(sps: bytes) -> tuple[int, int] | None:
    """Width and height from an SPS NAL unit (ITU-T H.264 §7.3.2.1.1), or None."""
    try:
        return _parse_sps(sps)
    except ValueError:
        return None


def _parse_sps(sps: bytes) -> tuple[int, int] | None:
    if len(sps) < 4 or sps[0] & 0x1F != 7:
        return None
    rbsp = sps[1:].replace(b"\x00\x00\x03", b"\x00\x00")
    bits = _Bits(rbsp)
    profile = bits.bits(8)
    bits.bits(16)  # constraint flags, level
    bits.ue()  # seq_parameter_set_id
    chroma_format = 1
    if profile in H264_HIGH_PROFILES:
        chroma_format = bits.ue()
        if chroma_format == 3:
            bits.bits(1)
        bits.ue(), bits.ue(), bits.bits(1)  # bit depths, qpprime bypass
        if bits.bits(1):  # seq_scaling_matrix_present_flag
            for index in range(8 if chroma_format != 3 else 12):
                if bits.bits(1):
                    _skip_scaling_list(bits, 16 if index < 6 else 64)
    bits.ue()  # log2_max_frame_num_minus4
    poc_type = bits.ue()
    if poc_type == 0:
        bits.ue()
    elif poc_type == 1:
        bits.bits(1), bits.se(), bits.se()
        for _ in range(bits.ue()):
            bits.se()
    bits.ue(), bits.bits(1)  # max_num_ref_frames, gaps allowed
    width_mbs = bits.ue() + 1
    height_units = bits.ue() + 1
    frame_mbs_only = bits.bits(1)
    if not frame_mbs_only:
        bits.bits(1)
    bits.bits(1)  # direct_8x8_inference_flag
    crop = (0, 0, 0, 0)
    if bits.bits(1):
        crop = (bits.ue(), bits.ue(), bits.ue(), bits.ue())
    crop_x = 2 if chroma_format in (1, 2) else 1
    crop_y = (2 if chroma_format == 1 else 1) * (2 - frame_mbs_only)
    width = width_mbs * 16 - crop_x * (crop[0] + crop[1])
    height = height_units * 16 * (2 - frame_mbs_only) - crop_y * (crop[2] + crop[3])
    return (width, height) if width > 0 and height > 0 else None


def _skip_scaling_list(bits: _Bits, size: int) -> None:
    last = next_scale = 8
    for _ in range(size):
        if next_scale:
            next_scale = (last + bits.se() + 256) % 256
        last = next_scale or last
