"""RTCP: NACKs answered from history, keyframe requests merged, feedback upstream."""

from __future__ import annotations

import asyncio
import threading

from aiortc.rtp import RtpPacket

from broadcast.web_keys import REGISTRY
from tests.peers import publish, wait_for, watch


def drop_every(n: int, ssrcs: set[int] | None = None):
    """A drop rule losing the first copy of every n-th packet (of `ssrcs` only)."""
    dropped: set[int] = set()

    def drop(data: bytes) -> bool:
        packet = RtpPacket.parse(data)
        seq = packet.sequence_number
        wanted = ssrcs is None or packet.ssrc in ssrcs
        if wanted and seq % n == 0 and seq not in dropped:
            dropped.add(seq)
            return True
        return False

    drop.dropped = dropped  # type: ignore[attr-defined]
    return drop


async def test_nack_is_answered_for_the_lossy_viewer_only(server, http):
    publisher = await publish(http, str(server.make_url("/whip/n")), audio=None)
    await publisher.wait_connected()
    stream = server.app[REGISTRY].get("n")
    lossy_rule = drop_every(7)
    lossy = await watch(http, str(server.make_url("/whep/n")), ("video",), lossy_rule)
    clean = await watch(http, str(server.make_url("/whep/n")), ("video",))
    await asyncio.gather(lossy.wait_connected(), clean.wait_connected())
    await wait_for(lambda: len(lossy_rule.dropped) >= 10, message="nothing dropped")
    await asyncio.sleep(1.0)

    received = {p.sequence_number for ps in lossy.received.packets.values() for p in ps}
    repaired = lossy_rule.dropped & received
    assert len(repaired) >= len(lossy_rule.dropped) - 3, "NACKed packets not resent"
    clean_seqs = [
        p.sequence_number for ps in clean.received.packets.values() for p in ps
    ]
    assert len(clean_seqs) == len(set(clean_seqs)), "the clean viewer got duplicates"
    lossy_track, clean_track = (
        next(v for v in stream.viewers if v.transport is t).tracks[0]
        for t in _transports(stream, lossy, clean)
    )
    assert lossy_track.retransmitted >= len(repaired)
    assert clean_track.retransmitted == 0
    await asyncio.gather(lossy.close(), clean.close(), publisher.close())


async def test_a_lost_retransmission_is_sent_again_without_a_second_nack(server, http):
    # aiortc's receiver NACKs a packet once, and again only at its next gap; its
    # jitter buffer holds every later frame until the packet comes. A retransmission
    # lost in turn froze such a viewer until its next loss (0.3-2 s at 5 % loss).
    publisher = await publish(
        http, str(server.make_url("/whip/r")), video="video/H264", audio=None
    )
    await publisher.wait_connected()
    arrivals: dict[int, int] = {}
    target: list[int] = []

    def drop(data: bytes) -> bool:
        seq = RtpPacket.parse(data).sequence_number
        arrivals[seq] = arrivals.get(seq, 0) + 1
        if not target and len(arrivals) == 30:  # once the viewer is under way
            target.append(seq)
        return bool(target) and seq == target[0] and arrivals[seq] <= 2

    lossy = await watch(http, str(server.make_url("/whep/r")), ("video",), drop)
    clean = await watch(http, str(server.make_url("/whep/r")), ("video",))
    await asyncio.gather(lossy.wait_connected(), clean.wait_connected())
    await wait_for(lambda: arrivals.get(target[0] if target else -1, 0) >= 2)
    await asyncio.sleep(1.5)
    received = {p.sequence_number for ps in lossy.received.packets.values() for p in ps}
    assert target[0] in received, "the packet whose retransmission was lost is missing"
    frames = len(lossy.frames["video"]), len(clean.frames["video"])
    print(f"decoded frames lossy / clean: {frames[0]} / {frames[1]}")
    assert frames[0] >= frames[1] - 3, "the lossy viewer froze"
    await asyncio.gather(lossy.close(), clean.close(), publisher.close())


def _transports(stream, *peers):
    """The server-side transports of these viewer peers, matched by session URL."""
    by_id = {v.id: v.transport for v in stream.viewers}
    return [by_id[peer.location.rsplit("/", 1)[1]] for peer in peers]


async def test_publisher_loss_is_nacked_upstream_and_repaired(server, http):
    publisher = await publish(http, str(server.make_url("/whip/u")), audio=None)
    # Lose the first copy of every 11th packet between publisher and server.
    rule = drop_every(11, {publisher.ssrc_of("video")})
    for transceiver in publisher.pc.getTransceivers():
        transport = transceiver.sender.transport
        send = transport._send_rtp

        async def lossy_send(data: bytes, send=send) -> None:
            if data[1] & 0x7F not in range(72, 77) and rule(data):
                return
            await send(data)

        transport._send_rtp = lossy_send
    await publisher.wait_connected()
    viewer = await watch(http, str(server.make_url("/whep/u")), ("video",))
    await viewer.wait_connected()
    await wait_for(lambda: len(rule.dropped) >= 10, message="nothing dropped")
    await asyncio.sleep(1.0)
    received = {
        p.sequence_number for ps in viewer.received.packets.values() for p in ps
    }
    first = min(received)
    lost_after_join = {s for s in rule.dropped if s > first + 5}
    assert lost_after_join and lost_after_join <= received, "upstream gaps not repaired"
    await asyncio.gather(viewer.close(), publisher.close())


async def test_joins_and_plis_are_merged_into_one_upstream_pli_per_second(server, http):
    publisher = await publish(http, str(server.make_url("/whip/p")), audio=None)
    await publisher.wait_connected()
    track = server.app[REGISTRY].get("p").tracks["video"]
    await wait_for(lambda: track.packets_in > 30)
    viewers = await asyncio.gather(
        *(watch(http, str(server.make_url("/whep/p")), ("video",)) for _ in range(6))
    )
    await asyncio.gather(*(v.wait_connected() for v in viewers))
    await wait_for(lambda: all(v.frames.get("video") for v in viewers))
    # Six joins within a fraction of a second: one PLI now, at most one a second later.
    assert 1 <= track.keyframes.sent <= 2
    await asyncio.gather(*(v.close() for v in viewers), publisher.close())


async def test_no_decoder_thread_runs_for_relayed_media(server, http):
    publisher = await publish(http, str(server.make_url("/whip/d")))
    await publisher.wait_connected()
    stream = server.app[REGISTRY].get("d")
    await wait_for(lambda: all(t.packets_in > 20 for t in stream.tracks.values()))
    decoders = [t.name for t in threading.enumerate() if "decoder" in t.name]
    assert decoders == []
    await publisher.close()


async def test_publisher_gets_receiver_reports_and_remb(server, http):
    publisher = await publish(http, str(server.make_url("/whip/r")))
    seen: list[object] = []
    for transceiver in publisher.pc.getTransceivers():
        sender = transceiver.sender
        handle = sender._handle_rtcp_packet

        async def record(packet, handle=handle):
            seen.append(packet)
            await handle(packet)

        sender._handle_rtcp_packet = record
    await publisher.wait_connected()
    await wait_for(
        lambda: {type(p).__name__ for p in seen} >= {"RtcpRrPacket", "RtcpPsfbPacket"},
        timeout=5,
        message=f"no RR/REMB: {seen}",
    )
    remb = [p for p in seen if type(p).__name__ == "RtcpPsfbPacket" and p.fmt == 15]
    assert remb, "no REMB"
    await publisher.close()


async def test_viewer_gets_sender_reports(server, http):
    publisher = await publish(http, str(server.make_url("/whip/sr")))
    await publisher.wait_connected()
    viewer = await watch(http, str(server.make_url("/whep/sr")))
    await viewer.wait_connected()

    async def has_remote_outbound() -> bool:
        stats = await viewer.pc.getStats()
        return any(s.type == "remote-outbound-rtp" for s in stats.values())

    for _ in range(60):
        if await has_remote_outbound():
            break
        await asyncio.sleep(0.1)
    assert await has_remote_outbound(), "no sender report reached the viewer"
    await asyncio.gather(viewer.close(), publisher.close())
