"""H264Repacketizer: a camera's RTP (RFC 6184) in, WebRTC-ready payloads out."""

from __future__ import annotations

import base64
import fractions

import pytest

from broadcast.media.h264 import (
    MAX_PAYLOAD_BYTES,
    H264Payload,
    H264Repacketizer,
    parse_sprop_parameter_sets,
)

try:
    from hypothesis import given, settings
    from hypothesis import strategies as st
except ImportError as error:  # pragma: no cover - CI installs it
    raise ImportError(
        "tests/test_h264.py needs hypothesis: pip install hypothesis"
    ) from error

SPS = bytes([0x67, 0x42, 0xC0, 0x1E, 0xDA, 0x02, 0x80, 0xBF, 0xE5])
PPS = bytes([0x68, 0xCE, 0x3C, 0x80])
OTHER_SPS = bytes([0x67, 0x64, 0x00, 0x28, 0xAC])
SPROP = f"{base64.b64encode(SPS).decode()},{base64.b64encode(PPS).decode()}"
AUD = bytes([0x09, 0xF0])
SEI = bytes([0x06, 0x05, 0x01, 0x80])


def idr(size: int, fill: int = 0xAB) -> bytes:
    return bytes([0x65]) + bytes([fill]) * (size - 1)


def slice_(size: int, fill: int = 0xCD) -> bytes:
    return bytes([0x41]) + bytes([fill]) * (size - 1)


def stap_a(*nals: bytes) -> bytes:
    return bytes([0x78]) + b"".join(len(n).to_bytes(2, "big") + n for n in nals)


def fu_a(nal: bytes, fragment_size: int) -> list[bytes]:
    """Fragment like a camera would, with fragments of `fragment_size` NAL bytes."""
    indicator = bytes([(nal[0] & 0xE0) | 28])
    body = nal[1:]
    starts = range(0, len(body), fragment_size)
    packets = []
    for start in starts:
        header = nal[0] & 0x1F
        header |= 0x80 if start == 0 else 0
        header |= 0x40 if start + fragment_size >= len(body) else 0
        packets.append(
            indicator + bytes([header]) + body[start : start + fragment_size]
        )
    return packets


def nal_units(payloads: list[bytes]) -> list[bytes]:
    """Depacketize our output with an implementation of our own (RFC 6184 §5.6-5.8)."""
    nals: list[bytes] = []
    fragments: list[bytes] | None = None
    for payload in payloads:
        nal_type = payload[0] & 0x1F
        if nal_type == 24:
            offset = 1
            while offset < len(payload):
                size = int.from_bytes(payload[offset : offset + 2], "big")
                nals.append(payload[offset + 2 : offset + 2 + size])
                offset += 2 + size
        elif nal_type == 28:
            if payload[1] & 0x80:
                assert fragments is None, "FU-A start inside a FU-A"
                fragments = [bytes([(payload[0] & 0xE0) | (payload[1] & 0x1F)])]
            assert fragments is not None, "FU-A without its start"
            fragments.append(payload[2:])
            if payload[1] & 0x40:
                nals.append(b"".join(fragments))
                fragments = None
        else:
            nals.append(payload)
    assert fragments is None, "FU-A without its end"
    return nals


def push_all(
    repacketizer: H264Repacketizer, packets: list[bytes], timestamp: int = 0
) -> list[H264Payload]:
    """Push one access unit, marker on its last packet."""
    out: list[H264Payload] = []
    for index, packet in enumerate(packets):
        out += repacketizer.push(packet, timestamp, marker=index == len(packets) - 1)
    return out


def test_single_nal_unit_passes_through_unchanged():
    repacketizer = H264Repacketizer()
    nal = slice_(500)
    assert repacketizer.push(nal, 0, marker=True) == [(nal, True, False)]
    assert repacketizer.dropped_packets == 0


def test_stap_a_is_split_into_its_nal_units():
    first, second = slice_(100, 1), slice_(200, 2)
    out = H264Repacketizer().push(stap_a(first, second), 0, marker=True)
    assert out == [(first, False, False), (second, True, False)]


def test_large_fu_a_nal_is_reassembled_and_refragmented_within_max_payload():
    nal = idr(60_000)
    out = push_all(H264Repacketizer(SPROP), fu_a(nal, 8000))
    parameter_sets, *fragments = out
    assert nal_units([parameter_sets.payload]) == [SPS, PPS]
    assert all(len(p.payload) <= MAX_PAYLOAD_BYTES for p in out)
    assert all(p.payload[0] & 0x1F == 28 for p in fragments)
    assert [p.payload[1] & 0xC0 for p in fragments] == (
        [0x80] + [0x00] * (len(fragments) - 2) + [0x40]
    )
    assert nal_units([p.payload for p in fragments]) == [nal]
    assert [p.marker for p in out] == [False] * (len(out) - 1) + [True]


def test_oversized_single_nal_packet_from_tcp_interleaved_camera_is_fragmented():
    nal = slice_(64_000)
    out = H264Repacketizer(max_payload=1000).push(nal, 0, marker=True)
    assert all(len(p.payload) <= 1000 for p in out)
    assert nal_units([p.payload for p in out]) == [nal]


def test_sprop_parameter_sets_precede_an_idr_that_lacks_them_in_one_stap_a():
    nal = idr(300)
    out = H264Repacketizer(SPROP).push(nal, 0, marker=True)
    assert len(out) == 2
    assert out[0].payload == stap_a(SPS, PPS)  # NRI 3 = max of SPS and PPS, §5.7.1
    assert out[0].keyframe and not out[0].marker
    assert out[1] == (nal, True, False)


def test_stap_a_nri_is_the_highest_nri_of_its_nal_units():
    low_sps, low_pps = bytes([0x27]) + SPS[1:], bytes([0x48]) + PPS[1:]  # NRI 1, NRI 2
    out = H264Repacketizer().push(stap_a(low_sps, low_pps, idr(10)), 0, marker=True)
    assert out[0].payload[0] == 0x40 | 24


def test_parameter_sets_are_sent_before_every_idr():
    repacketizer = H264Repacketizer(SPROP)
    for timestamp in (0, 3000, 6000):
        out = repacketizer.push(idr(100), timestamp, marker=True)
        assert nal_units([p.payload for p in out]) == [SPS, PPS, idr(100)]
        assert [p.keyframe for p in out] == [True, False]


def test_in_band_parameter_sets_in_the_same_access_unit_are_not_duplicated():
    repacketizer = H264Repacketizer(SPROP)
    for packets in ([SPS, PPS, idr(100)], [stap_a(SPS, PPS, idr(100))]):
        out = push_all(repacketizer, packets, timestamp=len(packets))
        assert nal_units([p.payload for p in out]) == [SPS, PPS, idr(100)]
        assert out[0].keyframe and out[-1].marker


def test_in_band_parameter_sets_replace_those_of_the_sdp():
    repacketizer = H264Repacketizer(SPROP)
    push_all(repacketizer, [OTHER_SPS, slice_(50)])
    out = repacketizer.push(idr(100), 3000, marker=True)
    assert nal_units([p.payload for p in out]) == [OTHER_SPS, PPS, idr(100)]


def test_parameter_sets_not_before_an_idr_are_forwarded_with_the_next_slice():
    out = push_all(H264Repacketizer(SPROP), [PPS, slice_(50)])
    assert [(p.payload, p.marker, p.keyframe) for p in out] == [
        (PPS, False, False),
        (slice_(50), True, False),
    ]


def test_multi_slice_idr_gets_parameter_sets_once():
    first, second = idr(100, 1), idr(100, 2)
    out = push_all(H264Repacketizer(SPROP), [first, second])
    assert nal_units([p.payload for p in out]) == [SPS, PPS, first, second]
    assert [p.keyframe for p in out] == [True, False, False]


def test_parameter_sets_too_large_to_aggregate_go_as_single_nal_units():
    out = H264Repacketizer(SPROP, max_payload=10).push(idr(5), 0, marker=True)
    assert [p.payload for p in out] == [SPS, PPS, idr(5)]
    assert [p.keyframe for p in out] == [True, False, False]


def test_idr_without_known_parameter_sets_is_forwarded_but_not_a_keyframe():
    repacketizer = H264Repacketizer()
    assert not repacketizer.parameter_sets_known
    assert repacketizer.push(idr(100), 0, marker=True) == [(idr(100), True, False)]


def test_marker_is_only_on_the_last_packet_of_the_access_unit():
    repacketizer = H264Repacketizer(SPROP)
    nal = idr(5000)
    out = push_all(repacketizer, [*fu_a(nal, 1400), slice_(10)])
    assert [p.marker for p in out] == [False] * (len(out) - 1) + [True]
    out = repacketizer.push(slice_(2000), 3000, marker=False)
    assert not any(p.marker for p in out)


def test_aud_and_sei_are_dropped_without_counting_as_errors():
    repacketizer = H264Repacketizer()
    assert push_all(repacketizer, [AUD, SEI]) == []
    out = repacketizer.push(stap_a(AUD, SEI, slice_(20)), 0, marker=True)
    assert out == [(slice_(20), True, False)]
    assert repacketizer.dropped_packets == 0


def test_loss_inside_a_fu_a_drops_that_nal_unit_only():
    repacketizer = H264Repacketizer()
    start, _lost, end = fu_a(slice_(3000), 1000)
    assert repacketizer.push(start, 0, marker=False) == []
    # `_lost` never arrives: the caller saw a sequence gap.
    assert repacketizer.push(end, 0, marker=False, lost=True) == []
    assert repacketizer.dropped_packets == 2  # the partial NAL unit and the orphan end
    out = repacketizer.push(slice_(30), 0, marker=True)
    assert out == [(slice_(30), True, False)]


def test_fu_a_without_its_start_is_dropped():
    repacketizer = H264Repacketizer()
    _, middle, end = fu_a(slice_(3000), 1000)
    assert repacketizer.push(middle, 0, marker=False) == []
    assert repacketizer.push(end, 0, marker=True) == []
    assert repacketizer.dropped_packets == 2


def test_new_fu_a_start_or_timestamp_drops_the_partial_nal_unit():
    repacketizer = H264Repacketizer()
    first = fu_a(slice_(3000, 1), 1000)
    second = fu_a(slice_(3000, 2), 1000)
    repacketizer.push(first[0], 0, marker=False)
    out = push_all(repacketizer, second)
    assert nal_units([p.payload for p in out]) == [slice_(3000, 2)]
    repacketizer.push(first[0], 0, marker=False)
    out = push_all(repacketizer, second[1:], timestamp=3000)
    assert out == []
    assert repacketizer.dropped_packets == 4


def test_reset_drops_a_partial_fu_a():
    repacketizer = H264Repacketizer()
    start, _, end = fu_a(slice_(3000), 1000)
    repacketizer.push(start, 0, marker=False)
    repacketizer.reset()
    assert repacketizer.push(end, 0, marker=True) == []


@pytest.mark.parametrize("nal_type", [25, 26, 27, 29, 0, 30, 31])
def test_unsupported_and_undefined_packet_types_are_dropped_and_counted(nal_type):
    repacketizer = H264Repacketizer(SPROP)
    assert repacketizer.push(bytes([0x60 | nal_type, 1, 2, 3, 4]), 0, marker=True) == []
    assert repacketizer.dropped_packets == 1


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        bytes([0x78]),  # STAP-A without NAL units
        bytes([0x78, 0x00]),  # truncated size field
        bytes([0x78, 0x00, 0x10, 0x41]),  # size beyond the packet
        bytes([0x78, 0x00, 0x00, 0x00, 0x01, 0x41]),  # zero size
        bytes([0x7C]),  # FU-A without FU header
        bytes([0x7C, 0x45, 0x00]),  # FU-A end without start
        bytes([0xE1, 0x00]),  # forbidden bit set
        stap_a(bytes([0x00, 0x01])),  # type 0 inside a STAP-A
    ],
)
def test_malformed_payloads_are_dropped_and_counted(payload):
    repacketizer = H264Repacketizer(SPROP)
    assert repacketizer.push(payload, 0, marker=True) == []
    assert repacketizer.dropped_packets == 1


def test_bad_sprop_entries_are_ignored():
    assert parse_sprop_parameter_sets("!!!,,%%") == []
    assert not H264Repacketizer("!!!,notbase64$").parameter_sets_known
    unpadded = (
        base64.b64encode(SPS).decode().rstrip("=") + ", " + "@@," + SPROP.split(",")[1]
    )
    repacketizer = H264Repacketizer(unpadded)
    assert repacketizer.parameter_sets_known
    out = repacketizer.push(idr(10), 0, marker=True)
    assert nal_units([p.payload for p in out]) == [SPS, PPS, idr(10)]


def test_max_payload_too_small_for_fu_a_is_refused():
    with pytest.raises(ValueError, match="max_payload"):
        H264Repacketizer(max_payload=2)


@settings(max_examples=300, deadline=None)
@given(
    packets=st.lists(st.tuples(st.binary(max_size=3000), st.booleans(), st.booleans())),
    max_payload=st.integers(3, 1500),
    sprop=st.text(max_size=40),
)
def test_random_input_never_raises_and_output_fits_max_payload(
    packets, max_payload, sprop
):
    repacketizer = H264Repacketizer(sprop, max_payload=max_payload)
    for timestamp, (payload, marker, lost) in enumerate(packets):
        for out in repacketizer.push(payload, timestamp // 3, marker, lost=lost):
            assert 0 < len(out.payload) <= max_payload


@settings(max_examples=200, deadline=None)
@given(
    sizes=st.lists(st.integers(2, 5000), min_size=1, max_size=6),
    fragment_size=st.integers(1, 2000),
    max_payload=st.integers(3, 1500),
)
def test_slices_survive_any_camera_packetization(sizes, fragment_size, max_payload):
    nals = [slice_(size, index) for index, size in enumerate(sizes)]
    packets = [p for nal in nals for p in fu_a(nal, fragment_size)]
    out = push_all(H264Repacketizer(max_payload=max_payload), packets)
    assert nal_units([p.payload for p in out]) == nals
    assert all(len(p.payload) <= max_payload for p in out)


def encode_annex_b_frames(count: int) -> list[bytes]:
    """Encode `count` 320x240 frames with x264 (baseline, zerolatency), one IDR every 5."""
    try:
        import av
        import numpy
    except ImportError as error:  # pragma: no cover - CI installs them
        raise ImportError(
            "the decode test needs av and numpy: pip install av numpy"
        ) from error
    encoder = av.CodecContext.create("libx264", "w")
    encoder.width, encoder.height, encoder.pix_fmt = 320, 240, "yuv420p"
    encoder.time_base = fractions.Fraction(1, 30)
    encoder.options = {"tune": "zerolatency", "profile": "baseline", "g": "5"}
    access_units = []
    for index in range(count):
        image = numpy.zeros((240, 320, 3), dtype=numpy.uint8)
        image[:, :, 0] = (numpy.arange(320) * 4 + index * 9) % 256
        image[:, :, 1] = (numpy.arange(240)[:, None] * 3 + index * 5) % 256
        frame = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(
            format="yuv420p"
        )
        frame.pts = index
        access_units += [bytes(packet) for packet in encoder.encode(frame)]
    access_units += [bytes(packet) for packet in encoder.encode(None)]
    return access_units


def split_annex_b(access_unit: bytes) -> list[bytes]:
    # A NAL unit never ends with a zero byte, so the extra 0 of a 4-byte start code goes.
    return [nal.rstrip(b"\x00") for nal in access_unit.split(b"\x00\x00\x01")[1:]]


def test_sprop_only_camera_stream_decodes_after_repacketization():
    import av
    from aiortc.codecs.h264 import h264_depayload

    access_units = [split_annex_b(au) for au in encode_annex_b_frames(12)]
    assert len(access_units) == 12
    in_band = [nal for au in access_units for nal in au if nal[0] & 0x1F in (7, 8)]
    sprop = ",".join(base64.b64encode(nal).decode() for nal in in_band[:2])
    repacketizer = H264Repacketizer(sprop)
    decoder = av.CodecContext.create("h264", "r")
    frames = []
    keyframes = 0
    for index, nals in enumerate(access_units):
        # The camera: SPS/PPS only in the SDP, one single-NAL packet per NAL unit.
        nals = [nal for nal in nals if nal[0] & 0x1F not in (7, 8)]
        out = push_all(repacketizer, nals, timestamp=index * 3000)
        assert all(len(p.payload) <= MAX_PAYLOAD_BYTES for p in out)
        assert [p.marker for p in out] == [False] * (len(out) - 1) + [True]
        keyframes += out[0].keyframe
        annex_b = b"".join(h264_depayload(p.payload) for p in out)
        frames += decoder.decode(av.Packet(annex_b))
    frames += decoder.decode(None)
    assert keyframes == 3  # frames 0, 5 and 10
    assert repacketizer.dropped_packets == 0
    assert len(frames) == 12
    assert all((frame.width, frame.height) == (320, 240) for frame in frames)
