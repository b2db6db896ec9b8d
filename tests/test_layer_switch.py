"""An auto viewer's LayerSwitch over real SourceTracks, packet by packet: what it
sends, with which numbers, and which NACKs it answers, around switches."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator

import pytest
from aiortc import RTCRtpCodecParameters
from aiortc.rtp import RtpPacket

from broadcast.events import StreamEvents
from broadcast.media.layer_choice import LayerChoice
from broadcast.media.layer_switch import LayerSwitch
from broadcast.media.source_track import SourceTrack
from broadcast.stream import Stream

VP8 = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96)
KEYFRAME = b"\x10\x00"  # descriptor with S set, partition 0; P bit clear
DELTA = b"\x10\x01"


class Layer:
    """One simulcast layer: a SourceTrack fed numbered packets."""

    def __init__(self, ssrc: int) -> None:
        self.track = SourceTrack("video", VP8)
        self._ssrc = ssrc
        self.seq = 1000 * ssrc

    def send(
        self, payload: bytes = DELTA, seq: int | None = None, ends_frame: bool = True
    ) -> None:
        """One packet, a whole frame unless `ends_frame` is false."""
        if seq is None:
            self.seq += 1
            seq = self.seq
        self.track.forward(
            RtpPacket(
                payload_type=96,
                sequence_number=seq & 0xFFFF,
                timestamp=(seq * 3000) & 0xFFFFFFFF,
                ssrc=self._ssrc,
                payload=payload,
                marker=int(ends_frame),
            )
        )


def numbers(packets: list[bytes]) -> list[int]:
    return [struct.unpack_from("!H", p, 2)[0] for p in packets]


def three_layers(
    count: int = 3, start: int = 0
) -> tuple[LayerSwitch, list[Layer], list[bytes]]:
    """A viewer over `count` layers, on `start` (not attached yet), and what it sent."""
    layers = [Layer(n + 1) for n in range(count)]
    sent: list[bytes] = []
    viewer = LayerSwitch([layer.track for layer in layers], start, sent.append, 96)
    return viewer, layers, sent


@pytest.fixture
async def switch() -> AsyncIterator[tuple[LayerSwitch, list[Layer], list[bytes]]]:
    """A viewer on the first of two layers, past its keyframe."""
    viewer, layers, sent = three_layers(2, 0)
    viewer.attach()
    layers[0].send(KEYFRAME)
    layers[0].send()
    yield viewer, layers, sent
    viewer.detach()


async def test_nacks_are_answered_long_after_a_switch(switch):
    viewer, layers, sent = switch
    viewer.switch_to(1)
    layers[1].send(KEYFRAME)
    assert viewer.layer == 1
    for _ in range(40_000):  # past half the sequence space since the switch
        layers[1].send()
    last = numbers(sent)[-1]
    sent.clear()
    viewer.retransmit([(last - 5) & 0xFFFF])
    assert numbers(sent[:1]) == [(last - 5) & 0xFFFF], "a NACK of a recent packet"


async def test_a_late_packet_of_the_new_layer_is_not_sent_with_a_used_number(switch):
    viewer, layers, sent = switch
    viewer.switch_to(1)
    keyframe_seq = layers[1].seq + 1
    layers[1].send(KEYFRAME)
    layers[1].send()
    before = len(sent)
    layers[1].send(DELTA, seq=keyframe_seq - 1)  # reordered: from before the switch
    assert len(sent) == before
    viewer.retransmit([numbers(sent)[before - 3]])  # a number of the layer left
    assert len(sent) == before, "a NACK of the layer left answered from the new one"


async def test_a_down_switch_called_off_resumes_at_a_keyframe(switch):
    viewer, layers, sent = switch
    last = numbers(sent)[-1]
    viewer.switch_to(1)  # going down: the current layer is held back meanwhile
    layers[0].send()
    viewer.retransmit([last])
    assert numbers(sent)[-1] == last and len(sent) == 2, "sent while draining"
    viewer.switch_to(0)  # called off: what was held back is gone
    layers[0].send()
    assert len(sent) == 2, "a delta frame whose reference was held back"
    layers[0].send(KEYFRAME)
    layers[0].send()
    assert numbers(sent)[2:] == [(last + 1) & 0xFFFF, (last + 2) & 0xFFFF]
    assert viewer.layer == 0 and viewer.target is None


def test_going_down_skips_a_layer_the_publisher_stopped():
    choice = LayerChoice(0.0)
    choice.loss(0.5, 100_000, 1.0)
    # The middle layer fits what got through; the smallest has stopped.
    assert choice.choose(0, [2_000_000, 25_000, 0], 1.0) == 1
    choice.loss(0.5, 100_000, 2.0)
    assert choice.choose(1, [2_000_000, 25_000, 0], 2.0) == 1, "to a stopped layer"


def test_the_hold_stays_doubled_after_a_probe_that_held_a_while():
    choice = LayerChoice(0.0)
    choice.loss(0.5, 1_000_000, 0.5)
    assert choice.choose(0, [2_000_000, 500_000], 0.5) == 1
    assert choice.choose(1, [2_000_000, 500_000], 8.5) == 0  # up after 8 s
    choice.loss(0.5, 2_000_000, 9.0)  # failed at once: the hold doubles to 16 s
    assert choice.choose(0, [2_000_000, 500_000], 9.0) == 1
    assert choice.choose(1, [2_000_000, 500_000], 24.0) == 1
    assert choice.choose(1, [2_000_000, 500_000], 25.0) == 0
    assert choice.choose(0, [2_000_000, 500_000], 34.0) == 0  # held 9 s
    choice.loss(0.5, 2_000_000, 35.0)  # the link fills only after a while
    assert choice.choose(0, [2_000_000, 500_000], 35.0) == 1
    assert choice.choose(1, [2_000_000, 500_000], 44.0) == 1, "back to an 8 s hold"
    assert choice.choose(1, [2_000_000, 500_000], 51.5) == 0


async def test_heavy_loss_moves_down_before_the_tick(switch):
    viewer, layers, sent = switch
    for _ in range(40):
        layers[0].send()
        layers[1].send()
    await asyncio.sleep(0.25)  # into the tick (every 0.5 s), past EARLY_S
    viewer.retransmit(numbers(sent)[-15:])  # 15 of 42: heavy loss
    assert viewer.target == 1, "the choice waited for the tick"


def test_heavy_loss_goes_down_far_enough_at_once():
    """At its onset heavy loss is underestimated (NACKs come after it): 35 % seen of
    1.2 Mbit/s must not pick a 450 kbit/s layer for a link that carried 400."""
    choice = LayerChoice(0.0)
    choice.loss(0.35, 1_200_000, 1.0)
    assert choice.choose(0, [1_200_000, 450_000, 130_000], 1.0) == 2


async def test_a_viewer_starting_on_a_paused_layer_moves_to_one_that_runs():
    """The largest layer is paused when the viewer joins (a browser drops it when its
    uplink narrows): it must not wait for it for good."""
    viewer, layers, sent = three_layers(2, 0)
    viewer.attach()
    try:
        layers[1].send(KEYFRAME)
        for _ in range(8):  # 2 s of the small layer only
            await asyncio.sleep(0.25)
            layers[1].send()
        assert viewer.target == 1, "waiting for the paused layer"
        layers[1].send(KEYFRAME)
        layers[1].send()
        assert viewer.layer == 1 and len(sent) == 2
    finally:
        viewer.detach()


def test_layers_keep_the_publishers_order_until_every_size_is_known():
    """The smallest layer's keyframe often comes first: sorted on what is known, it
    went before a larger one still unknown, and auto viewers started on it."""
    stream = Stream("s", 10.0, lambda _: None, StreamEvents())
    high, medium, low = (Layer(n).track for n in (1, 2, 3))
    stream.layers = {"h": high, "m": medium, "l": low}
    low.resolution = (320, 180)
    assert stream.video_layers() == [high, medium, low]
    high.resolution, medium.resolution = (1280, 720), (640, 360)
    stream.layers = {"l": low, "h": high, "m": medium}
    assert stream.video_layers() == [high, medium, low]


async def test_nacks_of_the_layer_left_are_no_loss_of_the_new_one():
    """NACKed while a down switch drained, they were counted against the new layer's
    first packets: a second step down at once."""
    viewer, layers, sent = three_layers()
    viewer.attach()
    try:
        layers[0].send(KEYFRAME)
        for _ in range(30):
            for layer in layers:
                layer.send()
        await asyncio.sleep(0.55)  # a tick: every layer runs, no loss
        old = numbers(sent)[-15:]
        viewer.switch_to(1)
        viewer.retransmit(old)  # what the old layer lost meanwhile
        layers[1].send(KEYFRAME)
        for _ in range(24):
            layers[1].send()
        assert viewer.layer == 1
        await asyncio.sleep(0.25)
        viewer.retransmit([numbers(sent)[-3]])  # 1 of 25 new-layer packets lost
        assert viewer.target is None, f"stepped down again to {viewer.target}"
    finally:
        viewer.detach()


async def test_a_burst_nacked_after_the_tick_does_not_decide_early():
    """12 packets lost late in one sample, NACKed just after the tick, and one more
    0.2 s on: the tick (13 of ~75) would not go down, nor may the early choice."""
    viewer, layers, sent = three_layers(2)
    viewer.attach()
    try:
        layers[0].send(KEYFRAME)
        for _ in range(50):
            layers[0].send()
            layers[1].send()
        await asyncio.sleep(0.55)
        viewer.retransmit(numbers(sent)[-12:])
        for _ in range(22):
            layers[0].send()
            layers[1].send()
        await asyncio.sleep(0.22)
        viewer.retransmit([numbers(sent)[-2]])
        assert viewer.target is None
    finally:
        viewer.detach()


async def test_a_quality_chosen_before_the_viewer_connects_sends_each_packet_once():
    viewer, layers, sent = three_layers(2)
    viewer.pin(1)  # PATCH {"quality": "low"} while ICE still connects
    layers[1].send(KEYFRAME)
    assert viewer.layer == 1
    viewer.attach()
    layers[1].send()
    assert len(sent) == 2, "each packet once"
    viewer.detach()
    assert not layers[1].track.viewers, "left on the layer after it closed"


async def test_a_switch_waits_for_the_end_of_the_frame_being_sent():
    """A frame of the current layer cut short by the switch would reach the viewer
    numbered as if whole: the target's keyframe waits for its last packet."""
    viewer, layers, sent = three_layers(2, 1)
    viewer.attach()
    try:
        layers[1].send(KEYFRAME)
        viewer.switch_to(0)  # up: the current layer goes on meanwhile
        layers[1].send(DELTA, ends_frame=False)  # a frame begins
        layers[0].send(KEYFRAME)  # the target's keyframe, meanwhile
        assert viewer.layer == 1, "switched in the middle of a frame"
        layers[1].send(b"\x00\x01")  # the frame's last packet
        assert viewer.layer == 0
        assert [p[1] & 0x80 for p in sent] == [0x80, 0, 0x80, 0x80]
        assert numbers(sent) == [(numbers(sent)[0] + n) & 0xFFFF for n in range(4)]
    finally:
        viewer.detach()
