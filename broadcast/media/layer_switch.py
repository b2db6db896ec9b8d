"""LayerSwitch: a simulcast viewer's video, a layer at a time (auto, or as it chooses).

Each layer is a SourceTrack of its own, with its SSRC, sequence numbers, RTP
timestamps and (VP8) picture ids. The viewer was answered one SSRC and must see one
stream, so a switch happens only at a keyframe of the new layer (nothing before it
could be decoded), and from there that layer's packets are rewritten to go on where
the old one stopped: sequence numbers by one, timestamps by the time between the two
layers' clocks (their sender reports, so audio stays in sync), picture ids by one.
Until its first switch a viewer gets its layer's packets as they are (nothing is
shifted yet), so it is fanned out with that layer's other viewers, batched; from its
first switch on it is sent one packet at a time, as ICE-TCP viewers are.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from broadcast.media import vp8
from broadcast.media.history import VIDEO_HISTORY_PACKETS
from broadcast.media.layer_choice import SEVERE_LOSS, LayerChoice
from broadcast.media.source_track import SourceTrack
from broadcast.media.transport_protocol import NativeTarget
from broadcast.media.udp_mux import FanOutTarget, MediaSocket
from broadcast.media.viewer_track import MAX_RETRANSMITS_PER_S, ViewerTrack

logger = logging.getLogger(__name__)

# How often the layers' rates and the viewer's NACKs are measured, and the choice made.
TICK_S = 0.5
# The target's keyframe waits at most this long (or this many packets) for the end of
# the frame being sent (its last packet may be lost).
HOLD_MAX_S = 0.1
HOLD_MAX_PACKETS = 300
# Heavy loss decides before the tick: once this long into it, with this many sent.
EARLY_S = 0.2
EARLY_PACKETS = 20
# Packets sent again, at most this share of those sent (and RETRANSMIT_FLOOR a second).
# On a link too narrow for the layer, answering every NACK (twice) is what keeps it
# full: the loss that made the viewer switch down would go on after the switch.
RETRANSMIT_SHARE = 0.25
RETRANSMIT_FLOOR = 10.0
# For REPORT_SETTLE_S after a switch, though: the new layer's keyframe meets the queue
# the layer left filled, and until what it lost there is sent again, the picture stays
# frozen (with the floor alone, up to a second more).
SWITCH_REPAIR_PER_S = 60.0
# A receiver report this soon after a switch still covers the layer left.
REPORT_SETTLE_S = 1.0
# A layer silent this long has stopped (at a low frame rate a tick may pass without
# a packet of a small layer).
STOPPED_S = 1.5
SEQ_TS_SSRC = struct.Struct("!HII")


@dataclass
class _Segment:
    """What is sent from one layer since a switch: how its numbers are shifted."""

    layer: int
    # Switched to (not the layer started on, whose numbers are its own): the first
    # sequence number sent from it (None: not yet) and how many since. Until the
    # history has forgotten what came before it, a number before it is the layer
    # left's: a NACK of it is not looked up here, a late packet of it not sent.
    switched: bool = False
    first_seq: int | None = None
    sent: int = 0
    seq_shift: int = 0
    ts_shift: int = 0
    picture_shift: int = 0
    tl0_shift: int = 0


class _LayerInput:
    """The switch as one layer's viewer (a `TrackViewer` of that SourceTrack)."""

    def __init__(self, switch: LayerSwitch, layer: int) -> None:
        self._switch = switch
        self._layer = layer
        self.joined_at = self.asked_at = time.monotonic()

    @property
    def waiting_for_keyframe(self) -> bool:
        """Only the layer it starts on waits (and gets the cached GOP)."""
        return self._layer == self._switch.layer and self._switch.waiting_for_keyframe

    def send(self, packet: bytes, keyframe: bool) -> None:
        self._switch.take(self._layer, packet, keyframe)

    def fan_out_target(self) -> tuple[MediaSocket, FanOutTarget] | None:
        if self._layer != self._switch.layer:
            return None
        return self._switch.fan_out_target()

    def fanned_from(self, packets: int, octets: int) -> None:
        self._switch.fanned_from(packets, octets)

    def fan_out_left(self) -> None:
        self._switch.fan_out_left()


class LayerSwitch(ViewerTrack):
    """One viewer's video over all of a stream's layers (best first), on one."""

    def __init__(
        self,
        layers: Sequence[SourceTrack],
        start: int,
        send_rtp: Callable[[bytes], None],
        payload_type: int,
        native_target: Callable[[], NativeTarget | None] = lambda: None,
        spare_copies: Callable[[], bool] = lambda: True,
        on_switch: Callable[[int, int], None] = lambda old, new: None,
        pinned: bool = False,
    ) -> None:
        """`pinned`: the viewer chose `start` (high, medium, low) and stays on it
        while the publisher sends it (else on the nearest that runs) until it
        chooses again (`pin`); else the layer follows its network."""
        super().__init__(
            layers[start],
            send_rtp,
            payload_type,
            native_target,
            lambda: spare_copies() and not self.choice.lossy and not self.settling,
        )
        self.layers = list(layers)
        self.layer = start
        self.target: int | None = None
        self.choice = LayerChoice(time.monotonic())
        self.preferred: int | None = start if pinned else None
        self._on_switch = on_switch
        self._ssrc = layers[start].ssrc
        self._inputs = [_LayerInput(self, i) for i in range(len(layers))]
        self._segment = _Segment(start)
        self._vp8 = layers[start].codec.mimeType.lower() == "video/vp8"
        self._last_seq = self._last_ts = 0
        self._last_at = 0.0
        self._last_picture: int | None = None
        self._last_tl0: int | None = None
        self._rate_samples = [(layer.bytes_in, time.monotonic()) for layer in layers]
        self.rates_bps = [0] * len(layers)
        self.sent_bps = 0
        self._sent_sample = (0, 0, time.monotonic())  # packets, octets, when
        self._nacked: set[int] = set()  # this tick's, of the current layer's packets
        # The previous tick's: loss is measured over two as well, since a NACK comes a
        # round trip (and the receiver's wait for reordering) after what it names.
        self._before: tuple[set[int], int] = (set(), 0)
        self._timer: asyncio.TimerHandle | None = None
        self._draining = False  # going down: the current layer is not sent meanwhile
        self._switched = False  # once: its packets are rewritten, one by one
        self._frame_open = False  # the last packet sent did not end its frame
        self._held: list[bytes] = []  # the target's keyframe on, till that frame ends
        self._held_at = 0.0
        self._switched_at = 0.0

    @property
    def settling(self) -> bool:
        """Just switched: the link may still be full of the layer left."""
        return time.monotonic() - self._switched_at < REPORT_SETTLE_S

    @property
    def auto(self) -> bool:
        """Whether its layer follows its network (else the viewer chose one)."""
        return self.preferred is None

    @property
    def ssrc(self) -> int:
        return self._ssrc

    def expect(self) -> None:
        self.source.expect_viewer(self._inputs[self.layer])

    def attach(self) -> None:
        """It takes the layer it watches, and another only while switching to it."""
        self.joined_at = time.monotonic()
        if self._inputs[self.layer] not in self.source.viewers:  # (a switch before)
            self.source.add_viewer(self._inputs[self.layer])
        self._timer = asyncio.get_running_loop().call_later(TICK_S, self._tick)

    def detach(self) -> None:
        for layer, viewer in zip(self.layers, self._inputs, strict=True):
            layer.remove_viewer(viewer)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def retarget(self) -> None:
        self.source.retarget(self._inputs[self.layer])

    def fan_out_target(self) -> tuple[MediaSocket, FanOutTarget] | None:
        return None if self._switched else super().fan_out_target()

    def _leave_fan_out(self) -> None:
        """Its first switch: from now on its packets pass `take`, one by one."""
        self._switched = True
        if self._fanned_from is None:
            return
        self.fan_out_left()
        newest = self.source.newest
        if newest is not None:  # the last packet the fan-out sent it
            self._last_seq, self._last_ts = newest
            self._last_at = time.monotonic()
            packet = self.source.history.get(self._last_seq)
            self._frame_open = packet is not None and not packet[1] & 0x80
            if self._vp8 and packet is not None:
                self._last_picture, self._last_tl0 = vp8.picture_ids(packet)
        self.source.retarget(self._inputs[self.layer])

    def clock_now(self) -> tuple[int, int]:
        ntp, rtp = self.source.clock_now()
        return ntp, (rtp + self._segment.ts_shift) & 0xFFFFFFFF

    def switch_to(self, layer: int) -> None:
        """Go to `layer` at its next keyframe (asked for now).

        Going down, nothing more of the current layer is sent meanwhile: the link
        is losing most of it anyway, and what is queued on it would hold up the
        keyframe that ends the freeze. A switch called off after that resumes the
        current layer at its next keyframe: what was held back is gone."""
        previous = self.target
        held_back = previous is not None and self._draining
        self._held = []
        if previous not in (None, self.layer, layer):
            self.layers[previous].remove_viewer(self._inputs[previous])
        self.target = None
        self._draining = False
        if layer == self.layer and not held_back:
            return  # called off, the current layer sent all along
        if not self._switched:
            self._leave_fan_out()
        if layer != self.layer and previous != layer:
            self.layers[layer].add_viewer(self._inputs[layer])
        self._draining = held_back or layer >= self.layer
        self.target = layer
        self.layers[layer].keyframes.request()

    def pin(self, layer: int | None) -> None:
        """The viewer chose `layer` (at its next keyframe), or auto again (`None`):
        the choice starts afresh from the layer it is on."""
        self.choice = LayerChoice(time.monotonic())
        self.preferred = layer
        self.retransmit_rate = float(MAX_RETRANSMITS_PER_S)
        if layer is not None:
            self.switch_to(self._nearest_running(layer))

    def _nearest_running(self, layer: int) -> int:
        """`layer` if the publisher sends it, else the next smaller one that it
        sends, else the next larger (a browser stops its largest when its uplink
        narrows, and may pause others)."""
        rates, count = self.rates_bps, len(self.layers)
        order = [layer, *range(layer + 1, count), *range(layer - 1, -1, -1)]
        return next((i for i in order if rates[i] > 0), layer)

    def receiver_report(self, fraction_lost: float) -> None:
        """The loss the viewer's receiver report gives (0-1): not while a switch is
        pending or just done, when it tells of the layer left (a second step down)."""
        if self.target is None and not self.settling:
            self.choice.loss(fraction_lost, self.sent_bps, time.monotonic())

    def retransmit(self, sequence_numbers: Iterable[int]) -> None:
        """A NACK: answered, and counted as loss of the layer being watched."""
        wanted = [seq & 0xFFFF for seq in sequence_numbers]
        segment = self._segment
        first = segment.first_seq
        if first is not None and segment.sent < VIDEO_HISTORY_PACKETS:
            since = (self._last_seq - first) & 0xFFFF
            wanted = [s for s in wanted if ((s - first) & 0xFFFF) <= since]
        self._nacked.update(wanted)
        if not self._draining:  # nor while the link drains for a keyframe
            super().retransmit(wanted)
        if self.target is None and not self.waiting_for_keyframe and self.auto:
            self._decide_early()

    def _decide_early(self) -> None:
        """Heavy loss already this tick: the choice made now, not up to 0.5 s on (a
        link that narrowed freezes the picture until the smaller layer comes)."""
        packets, _, at = self._sent_sample
        sent = self.packets_sent - packets
        nacked_before, sent_before = self._before
        if (
            sent >= EARLY_PACKETS
            and time.monotonic() - at >= EARLY_S
            and len(self._nacked) > SEVERE_LOSS * sent
            # (NACKs of a burst late in the last sample are no loss of this one)
            and len(self._nacked | nacked_before) > SEVERE_LOSS * (sent + sent_before)
            and self._timer is not None
        ):
            self._timer.cancel()
            self._tick()

    def _tick(self) -> None:
        """Every TICK_S: measure the layers and the viewer's loss, choose."""
        self._timer = asyncio.get_running_loop().call_later(TICK_S, self._tick)
        now = time.monotonic()
        for index, layer in enumerate(self.layers):
            octets, at = self._rate_samples[index]
            if layer.bytes_in == octets and now - at < STOPPED_S:
                continue  # silent a moment: its last rate stands
            self.rates_bps[index] = int((layer.bytes_in - octets) * 8 / (now - at))
            self._rate_samples[index] = (layer.bytes_in, now)
        packets, octets, at = self._sent_sample
        sent = self.packets_sent - packets
        if self.auto:  # (else its own choice: answered as any viewer is)
            self.retransmit_rate = max(
                SWITCH_REPAIR_PER_S if self.settling else RETRANSMIT_FLOOR,
                RETRANSMIT_SHARE * sent / (now - at),
            )
        self.sent_bps = int((self.octets_sent - octets) * 8 / (now - at))
        self._sent_sample = (self.packets_sent, self.octets_sent, now)
        nacked, self._nacked = self._nacked, set()
        pending = self.target
        if self.waiting_for_keyframe or pending is not None:
            self._before = (set(), 0)
            if pending is not None and self.rates_bps[pending] > 0:
                self.layers[pending].keyframes.request()  # still waiting for it
                return
            if pending is not None and pending != self.layer:
                self.switch_to(self.layer)  # the publisher stopped it meanwhile
                return
            if self.rates_bps[self.layer] > 0 or now - self.joined_at < STOPPED_S:
                return  # waiting for a keyframe of the layer it is on, which runs
            # The layer it starts on or resumes stopped: one that runs, below.
        if self.preferred is not None:  # the viewer's choice, while it is sent
            wanted = self._nearest_running(self.preferred)
            if wanted != self.layer:
                self.switch_to(wanted)
            return
        if sent:
            nacked_before, sent_before = self._before
            self._before = (nacked, sent)
            lost = max(
                len(nacked) / sent, len(nacked | nacked_before) / (sent + sent_before)
            )
            self.choice.loss(min(1.0, lost), self.sent_bps, now)
        wanted = self.choice.choose(self.layer, self.rates_bps, now)
        if wanted != self.layer:
            logger.debug(
                "layer %d -> %d (%s), layers at %s bit/s",
                self.layer,
                wanted,
                self.choice.reason,
                self.rates_bps,
            )
            self.switch_to(wanted)

    def take(self, layer: int, packet: bytes, keyframe: bool) -> None:
        """A packet of one of the layers: sent if it is the one being watched.

        Going up, the switch happens at the end of a frame of the current layer:
        the target's keyframe waits (a few ms) while the frame being sent is
        finished, else the viewer would get a frame cut short, numbered as if whole
        (decoders without a marker check, aiortc's, fail on it). Going down, the
        current layer stopped at once (finishing its frame, a keyframe of the large
        layer, say, would cross the narrow link before the small layer's: seconds).
        """
        if layer == self.target and (keyframe or self._held):
            if not self._held:
                self._held_at = time.monotonic()
            self._held.append(packet)
            if (
                not self._frame_open
                or self._draining
                or len(self._held) > HOLD_MAX_PACKETS
                or time.monotonic() - self._held_at > HOLD_MAX_S
            ):
                self._switch_held()
            return
        self._forward(layer, packet, keyframe)

    def _switch_held(self) -> None:
        held, self._held = self._held, []
        assert self.target is not None
        self._switch(self.target, held[0])
        for index, packet in enumerate(held):
            self._forward(self.layer, packet, index == 0)

    def _forward(self, layer: int, packet: bytes, keyframe: bool) -> None:
        if layer != self.layer or self._draining:
            return
        if self.waiting_for_keyframe:
            if not keyframe:
                return
            self.waiting_for_keyframe = False
            self.first_keyframe_at = time.monotonic()
        segment = self._segment
        out = self._rewritten(packet, segment)
        seq, ts = SEQ_TS_SSRC.unpack_from(out, 2)[:2]
        if segment.switched and segment.sent < VIDEO_HISTORY_PACKETS:
            if segment.first_seq is None:
                segment.first_seq = seq
            elif ((seq - segment.first_seq) & 0xFFFF) >= 0x8000:
                return  # late, from before the keyframe: its number was used
            segment.sent += 1
        if ((seq - self._last_seq) & 0xFFFF) < 0x8000 or self._last_at == 0.0:
            self._last_seq, self._last_ts = seq, ts
            self._last_at = time.monotonic()
            if self._vp8:
                ids = vp8.picture_ids(out)
                self._last_picture = ids.picture_id
                self._last_tl0 = ids.tl0_index
        self._send_rtp(out)
        self._packets_sent += 1
        self._octets_sent += len(out) - 12
        self._frame_open = not out[1] & 0x80  # (the marker ends a frame)
        if self._held and not self._frame_open:
            self._switch_held()

    def _copy_of(self, seq: int) -> bytes | None:
        """A NACKed packet of the layer being watched (those of a layer left are of
        no use: the viewer starts again at the keyframe it was switched at; sent
        again, they would only crowd the link that made it switch)."""
        segment = self._segment
        packet = self.source.history.get((seq - segment.seq_shift) & 0xFFFF)
        return None if packet is None else self._rewritten(packet, segment)

    def _rewritten(self, packet: bytes, segment: _Segment) -> bytes:
        data = bytearray(packet)
        seq, ts, _ = SEQ_TS_SSRC.unpack_from(data, 2)
        SEQ_TS_SSRC.pack_into(
            data,
            2,
            (seq + segment.seq_shift) & 0xFFFF,
            (ts + segment.ts_shift) & 0xFFFFFFFF,
            self._ssrc,
        )
        if self._rewrite_payload_type:
            data[1] = (data[1] & 0x80) | self.payload_type
        if self._vp8 and (segment.picture_shift or segment.tl0_shift):
            vp8.shift_picture_ids(data, segment.picture_shift, segment.tl0_shift)
        return bytes(data)

    def _switch(self, layer: int, packet: bytes) -> None:
        """Continue with `layer` from its keyframe `packet` on."""
        seq, ts, _ = SEQ_TS_SSRC.unpack_from(packet, 2)
        segment = _Segment(
            layer,
            switched=True,
            seq_shift=(self._last_seq + 1 - seq) & 0xFFFF,
            ts_shift=self._timestamp_shift(layer, ts),
        )
        if self._vp8:
            ids = vp8.picture_ids(packet)
            if ids.picture_id is not None and self._last_picture is not None:
                segment.picture_shift = self._last_picture + 1 - ids.picture_id
            if ids.tl0_index is not None and self._last_tl0 is not None:
                segment.tl0_shift = self._last_tl0 + 1 - ids.tl0_index
        self._segment = segment
        old, self.layer, self.target = self.layer, layer, None
        self._draining = False
        self._switched_at = time.monotonic()
        # What is NACKed and sent from here on is the new layer's loss, not the old's.
        self._nacked, self._before = set(), (set(), 0)
        self._sent_sample = (self.packets_sent, self.octets_sent, self._switched_at)
        self.retransmit_rate = max(self.retransmit_rate, SWITCH_REPAIR_PER_S)
        self._budget = self.retransmit_rate
        if old != layer:  # (else it resumes its layer, a switch called off)
            self.layers[old].remove_viewer(self._inputs[old])
            self.source = self.layers[layer]
            self._on_switch(old, layer)

    def _timestamp_shift(self, layer: int, ts: int) -> int:
        """What to add to `layer`'s timestamps so that they continue ours.

        Both layers' clocks read now (from their sender reports) say where the new
        layer's timeline is against ours; a keyframe not after the last frame sent, or
        implausibly far on, is placed by the time since that frame instead."""
        clock_rate = self.source.clock_rate
        ours = self.clock_now()[1]
        theirs = self.layers[layer].clock_now()[1]
        shift = (ours - theirs) & 0xFFFFFFFF
        ahead = (ts + shift - self._last_ts) & 0xFFFFFFFF
        if ahead == 0 or ahead > clock_rate:
            elapsed = max(time.monotonic() - self._last_at, 0.001)
            wanted = self._last_ts + max(1, int(elapsed * clock_rate))
            shift = (wanted - ts) & 0xFFFFFFFF
        return shift
