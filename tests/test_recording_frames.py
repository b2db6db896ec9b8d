"""FrameAssembler: our rewritten RTP packets back into whole frames, in order, with
late packets waited for, and nothing after a lost packet until the next keyframe."""

from __future__ import annotations

import struct

from broadcast.recording.frames import MAX_PENDING_FRAMES, FrameAssembler

SSRC = 0x1234


def vp8_packet(
    seq: int, ts: int, *, first: bool, key: bool, marker: bool, body: bytes
) -> bytes:
    """RFC 7741: a one-byte descriptor (S when it opens the frame), then the frame's
    bytes; the VP8 header's P bit (0: keyframe) is the first payload byte's bit 0."""
    descriptor = bytes([0x10 if first else 0x00])
    payload = (bytes([0x00 if key else 0x01]) if first else b"") + body
    header = struct.pack(
        "!BBHII",
        0x80,
        (0x80 if marker else 0) | 96,
        seq & 0xFFFF,
        ts & 0xFFFFFFFF,
        SSRC,
    )
    return header + descriptor + payload


def frame(seq: int, ts: int, key: bool, parts: int = 2) -> list[bytes]:
    """A frame of `parts` packets from `seq`, each carrying b"<ts>:<n>"."""
    return [
        vp8_packet(
            seq + n, ts, first=n == 0, key=key, marker=n == parts - 1,
            body=f"{ts}:{n};".encode(),
        )
        for n in range(parts)
    ]  # fmt: skip


def push_all(assembler: FrameAssembler, packets: list[bytes]) -> list:
    return [f for packet in packets for f in assembler.push(packet, 0.0)]


def test_frames_in_order_come_out_whole():
    assembler = FrameAssembler("video/VP8", video=True)
    frames = push_all(assembler, frame(100, 3000, True) + frame(102, 6000, False))
    assert [(f.timestamp, f.keyframe) for f in frames] == [(3000, True), (6000, False)]
    assert frames[0].data == b"\x003000:0;3000:1;"  # descriptors off, bytes joined


def test_a_late_packet_is_waited_for_even_across_frames():
    assembler = FrameAssembler("video/VP8", video=True)
    key, delta, after = (
        frame(10, 0, True),
        frame(12, 3000, False),
        frame(14, 6000, False),
    )
    # The next frame's first packet comes before the delta frame.
    frames = push_all(assembler, [*key, after[0], *delta, after[1]])
    assert [f.timestamp for f in frames] == [0, 3000, 6000]
    assert assembler.dropped == 0


def test_nothing_after_a_loss_until_the_next_keyframe():
    assembler = FrameAssembler("video/VP8", video=True)
    packets = frame(0, 0, True)
    seq, ts = 2, 3000
    lost = frame(seq, ts, False)
    packets.append(lost[1])  # its first packet never comes
    for _ in range(MAX_PENDING_FRAMES + 2):
        seq, ts = seq + 2, ts + 3000
        packets += frame(seq, ts, False)
    seq, ts = seq + 2, ts + 3000
    packets += frame(seq, ts, True)
    frames = push_all(assembler, packets)
    assert [f.keyframe for f in frames] == [True, True]
    assert frames[1].timestamp == ts
    assert assembler.dropped == MAX_PENDING_FRAMES + 3  # the lost one and those after


def test_sequence_numbers_and_timestamps_wrap():
    assembler = FrameAssembler("video/VP8", video=True)
    packets = frame(65534, 0xFFFFF000, True, parts=3) + frame(1, 0x00000BB8, False)
    frames = push_all(assembler, packets)
    assert [f.timestamp for f in frames] == [0xFFFFF000, 0xBB8]


def test_a_recording_starts_at_a_keyframe_not_mid_frame():
    assembler = FrameAssembler("video/VP8", video=True)
    delta = frame(5, 0, False)
    frames = push_all(
        assembler, [delta[1], *frame(7, 3000, False), *frame(9, 6000, True)]
    )
    assert [f.timestamp for f in frames] == [6000]


def test_audio_packets_are_frames_and_late_ones_are_dropped():
    assembler = FrameAssembler("audio/opus", video=False)

    def opus(seq: int, ts: int) -> bytes:
        return struct.pack("!BBHII", 0x80, 111, seq, ts, SSRC) + b"opus%d" % seq

    frames = push_all(assembler, [opus(1, 960), opus(3, 2880), opus(2, 1920)])
    assert [f.timestamp for f in frames] == [960, 2880]  # the late one would go back
