"""The media mechanics on their own: keyframe tests, NACK budgets, upstream gaps."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiortc import RTCRtpCodecParameters
from aiortc.rtp import RTCP_RTPFB_NACK, RtcpPacket, RtcpRtpfbPacket, RtpPacket

from broadcast.media import vp8
from broadcast.media.keyframe_detect import h264_starts_keyframe, vp8_starts_keyframe
from broadcast.media.resolution import h264_resolution
from broadcast.media.source_track import GOP_FALLBACK_S, SourceTrack
from broadcast.media.transcode import split_access_units
from broadcast.media.upstream import MAX_NACKED_GAP, BandwidthEstimate, UpstreamTrack
from broadcast.media.viewer_track import (
    MAX_RETRANSMITS_PER_S,
    SPARE_COPY_DELAY_S,
    ViewerTrack,
)

VP8 = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96)
SPS = bytes([0x67, 0x42, 0xC0, 0x1F])
PPS = bytes([0x68, 0xCE, 0x3C, 0x80])
IDR_FIRST_SLICE = bytes([0x65, 0x88, 0x84])  # first_mb_in_slice = 0: first bit set
IDR_LATER_SLICE = bytes([0x65, 0x12, 0x34])  # first_mb_in_slice > 0
NON_IDR = bytes([0x41, 0x9A, 0x00])


def stap_a(*nals: bytes) -> bytes:
    return bytes([0x78]) + b"".join(len(n).to_bytes(2, "big") + n for n in nals)


def fu_a(nal: bytes, start: bool) -> bytes:
    indicator = (nal[0] & 0xE0) | 28
    header = (0x80 if start else 0) | (nal[0] & 0x1F)
    return bytes([indicator, header]) + nal[1:]


def test_h264_keyframe_starts_at_sps_or_the_first_idr_slice():
    assert h264_starts_keyframe(SPS)
    assert h264_starts_keyframe(stap_a(SPS, PPS))
    assert h264_starts_keyframe(stap_a(PPS, IDR_FIRST_SLICE))
    assert h264_starts_keyframe(IDR_FIRST_SLICE)
    assert h264_starts_keyframe(fu_a(IDR_FIRST_SLICE, start=True))
    assert not h264_starts_keyframe(fu_a(IDR_FIRST_SLICE, start=False))
    assert not h264_starts_keyframe(fu_a(IDR_LATER_SLICE, start=True))
    assert not h264_starts_keyframe(IDR_LATER_SLICE)
    assert not h264_starts_keyframe(NON_IDR)
    assert not h264_starts_keyframe(stap_a(PPS))
    assert not h264_starts_keyframe(b"")
    assert not h264_starts_keyframe(bytes([0x78, 0xFF]))  # truncated STAP-A


def test_vp8_keyframe_needs_partition_start_and_key_bit():
    key = bytes([0x10, 0x00])  # S=1, PID=0; payload header P=0
    assert vp8_starts_keyframe(key)
    assert vp8_starts_keyframe(
        bytes([0x90, 0x80, 0x81, 0x23, 0x00])
    )  # 15-bit picture id
    assert not vp8_starts_keyframe(bytes([0x10, 0x01]))  # inter frame
    assert not vp8_starts_keyframe(bytes([0x00, 0x00]))  # continuation
    assert not vp8_starts_keyframe(bytes([0x90, 0x80]))  # truncated descriptor
    assert not vp8_starts_keyframe(b"")


def packet(seq: int, payload: bytes = b"\x10\x00") -> RtpPacket:
    return RtpPacket(
        payload_type=96,
        sequence_number=seq,
        timestamp=seq * 3000,
        ssrc=5,
        payload=payload,
    )


def watching(packets: int, **options: Any) -> tuple[ViewerTrack, list[bytes]]:
    """A viewer past its keyframe gate of a video track that forwarded `packets`
    packets (0 a keyframe), and the list its later packets go to."""
    source = SourceTrack("video", VP8)
    sent: list[bytes] = []
    viewer = ViewerTrack(source, sent.append, 96, **options)
    source.add_viewer(viewer)
    for seq in range(packets):
        source.forward(packet(seq))
    sent.clear()
    return viewer, sent


async def test_a_nack_storm_is_answered_within_the_retransmit_budget():
    viewer, sent = watching(1000)
    viewer.retransmit(list(range(1000)) * 5)
    assert len(sent) == MAX_RETRANSMITS_PER_S  # and no spare copies: none left
    assert len(sent) == len(set(sent))


async def test_nacks_for_packets_no_longer_held_cost_no_budget():
    viewer, sent = watching(2000)  # the first ~1000 are out of the history by now
    viewer.retransmit([*range(MAX_RETRANSMITS_PER_S), *range(1990, 2000)])
    assert len(sent) == 10, "held packets refused for the budget spent on misses"
    await asyncio.sleep(SPARE_COPY_DELAY_S * 3)  # their spare copies, left to go


async def test_each_answer_is_sent_again_a_little_later():
    viewer, sent = watching(20)
    viewer.retransmit([5, 7])
    assert len(sent) == 2  # the answers at once
    await asyncio.sleep(SPARE_COPY_DELAY_S * 3)
    assert sorted(sent) == sorted(sent[:2] * 2), "no spare copy of each"
    assert viewer.retransmitted == 2 and viewer.resent == 4


async def test_no_spare_copy_where_the_link_repairs_loss():
    viewer, sent = watching(20, spare_copies=lambda: False)
    viewer.retransmit([5])
    await asyncio.sleep(SPARE_COPY_DELAY_S * 3)
    assert len(sent) == 1


def test_a_sequence_jump_is_a_restart_not_thousands_of_losses():
    upstream = UpstreamTrack(SourceTrack("video", VP8), 96, None, (5,))
    upstream.receive(packet(100), 100)
    upstream.receive(packet(100 + MAX_NACKED_GAP + 10_000), 100)
    assert upstream.nack is not None and not upstream.nack.missing
    upstream.receive(packet(100 + MAX_NACKED_GAP + 10_003), 100)
    assert len(upstream.nack.missing) == 2


def test_losses_across_the_sequence_wrap_are_nacked_upstream():
    upstream = UpstreamTrack(SourceTrack("video", VP8), 96, None, (5,))
    for seq in (65533, 65535, 1):  # 65534 and 0 lost, on both sides of the wrap
        upstream.receive(packet(seq), 100)
    assert upstream.nack is not None and upstream.nack.missing == {65534, 0}
    nack = RtcpRtpfbPacket(fmt=RTCP_RTPFB_NACK, ssrc=1, media_ssrc=5)
    nack.lost = sorted(upstream.nack.missing)  # as Publisher._nack builds it
    (parsed,) = RtcpPacket.parse(bytes(nack))
    assert sorted(parsed.lost) == [0, 65534]


def test_bandwidth_estimate_ramps_without_loss_and_backs_off_with_it():
    estimate = BandwidthEstimate(start_bps=1_000_000, max_bps=4_000_000)
    assert estimate.update(900_000, 0.0) == 1_350_000
    for _ in range(30):
        estimate.update(3_000_000, 0.0)
    assert estimate.bitrate == 4_000_000
    assert estimate.update(2_000_000, 0.3) == 1_700_000


def test_a_joining_viewer_gets_the_cached_gop_at_once():
    source = SourceTrack("video", VP8, answers_pli=False)
    for seq in range(5):
        source.forward(
            packet(seq, b"\x10\x01" if seq else b"\x10\x00")
        )  # key, 4 deltas
    for seq in range(5, 8):
        source.forward(packet(seq, b"\x10\x00" if seq == 6 else b"\x10\x01"))
    sent: list[bytes] = []
    viewer = ViewerTrack(source, sent.append, 96)
    source.add_viewer(viewer)
    # The cache holds the latest keyframe (seq 6) and what followed it.
    assert [int.from_bytes(p[2:4], "big") for p in sent] == [6, 7]
    assert not viewer.waiting_for_keyframe


async def test_a_publisher_is_asked_for_a_keyframe_and_the_cache_serves_if_it_is_deaf():
    source = SourceTrack("video", VP8)
    plis: list[float] = []
    source.request_pli = lambda: plis.append(time.monotonic()) is None
    source.forward(packet(0, b"\x10\x00"))  # a keyframe, then a delta
    source.forward(packet(1, b"\x10\x01"))
    sent: list[bytes] = []
    viewer = ViewerTrack(source, sent.append, 96)
    source.add_viewer(viewer)
    assert sent == [] and viewer.waiting_for_keyframe and len(plis) == 1
    # The publisher does not answer the PLI: the viewer starts from the cached GOP.
    await asyncio.sleep(GOP_FALLBACK_S + 0.1)
    assert [int.from_bytes(p[2:4], "big") for p in sent] == [0, 1]
    assert not viewer.waiting_for_keyframe
    # Known deaf now: the next viewer starts from the cache at once.
    late: list[bytes] = []
    source.add_viewer(ViewerTrack(source, late.append, 96))
    assert [int.from_bytes(p[2:4], "big") for p in late] == [0, 1]


async def test_a_publisher_that_answers_the_pli_gives_a_fresh_keyframe_not_the_cache():
    source = SourceTrack("video", VP8)
    source.request_pli = lambda: True
    source.forward(packet(0, b"\x10\x00"))
    sent: list[bytes] = []
    viewer = ViewerTrack(source, sent.append, 96)
    source.add_viewer(viewer)
    source.forward(packet(1, b"\x10\x00"))  # the answer to the PLI
    await asyncio.sleep(GOP_FALLBACK_S + 0.1)
    assert [int.from_bytes(p[2:4], "big") for p in sent] == [1]


def test_aac_access_units_are_split_as_rfc_3640_says():
    units = [b"\x01" * 5, b"\x02" * 300]
    headers = b"".join(((len(u) << 3) | 0).to_bytes(2, "big") for u in units)
    payload = (16 * len(units)).to_bytes(2, "big") + headers + b"".join(units)
    assert split_access_units(payload, 13, 3) == units
    # Lies and garbage give what fits, never an exception.
    assert split_access_units(payload[:-10], 13, 3) == units[:1]
    for garbage in (b"", b"\xff", b"\xff\xff", b"\x00\x10\xff\xff", bytes(range(256))):
        assert isinstance(split_access_units(garbage, 13, 3), list)


def _x264_sps(width: int, height: int, profile: str) -> bytes:
    import av
    import numpy

    encoder = av.CodecContext.create("libx264", "w")
    encoder.width, encoder.height, encoder.pix_fmt = width, height, "yuv420p"
    encoder.options = {"profile": profile, "tune": "zerolatency"}
    frame = av.VideoFrame.from_ndarray(
        numpy.zeros((height, width, 3), numpy.uint8), format="rgb24"
    ).reformat(format="yuv420p")
    stream = b"".join(bytes(p) for p in encoder.encode(frame))
    stream += b"".join(bytes(p) for p in encoder.encode(None))
    for nal in stream.split(b"\x00\x00\x01"):
        nal = nal.rstrip(b"\x00")
        if nal and nal[0] & 0x1F == 7:
            return nal
    raise AssertionError("no SPS")


def test_resolution_is_read_from_h264_sps_of_any_profile():
    for width, height, profile in [
        (1280, 720, "high"),
        (1920, 1080, "main"),
        (640, 360, "baseline"),
    ]:
        assert h264_resolution(_x264_sps(width, height, profile)) == (width, height)
    assert h264_resolution(b"\x67\x42") is None
    assert h264_resolution(b"\x67" + b"\x00" * 20) is None


def test_quality_reports_with_absurd_numbers_are_refused():
    from broadcast.api.quality import clean_report

    good = {
        "width": 1280,
        "height": 720,
        "fps": 30,
        "freezes": 0,
        "jitter_buffer_ms": 50,
        "loss_percent": 0,
    }
    assert clean_report(good) is not None
    for field, value in (
        ("fps", 10**400),
        ("fps", float("nan")),
        ("width", True),
        ("fps", "30"),
    ):
        assert clean_report({**good, field: value}) is None
    assert clean_report({**good, "fps": 1e9})["fps"] == 240  # clamped


def test_vp8_picture_ids_shift_within_their_fields_and_bad_descriptors_are_left():
    header = bytes(12)
    # X, I with a 15-bit id 0x7FFE, L with TL0PICIDX 255, then the VP8 payload.
    long_id = bytearray(header + bytes([0x90, 0xC0, 0xFF, 0xFE, 0xFF, 0x10]))
    assert vp8.picture_ids(long_id) == vp8.PictureIds(0x7FFE, 255)
    vp8.shift_picture_ids(long_id, 3, 2)
    assert vp8.picture_ids(long_id) == vp8.PictureIds(1, 1)  # both wrapped
    assert long_id[-1] == 0x10  # the payload is untouched
    short_id = bytearray(header + bytes([0x90, 0x80, 0x7F, 0x10]))  # a 7-bit id
    vp8.shift_picture_ids(short_id, 2, 0)
    assert vp8.picture_ids(short_id) == vp8.PictureIds(1, None)
    for cut in (bytes([0x90]), bytes([0x90, 0xC0]), bytes([0x90, 0x80, 0x80])):
        truncated = bytearray(header + cut)  # a descriptor cut short: nothing read
        vp8.shift_picture_ids(truncated, 5, 5)
        assert truncated == header + cut
    assert vp8.picture_ids(header + bytes([0x10, 0x00])) == vp8.PictureIds(None, None)
