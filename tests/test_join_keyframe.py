"""A joining viewer's first keyframe is asked for when it offers, not once it connects."""

from __future__ import annotations

import asyncio
import time

from broadcast.media.keyframe_requests import KEYFRAME_MIN_INTERVAL_S
from broadcast.media.source_track import (
    GOP_FALLBACK_S,
    JOIN_GOP_MAX_AGE_S,
    PLI_ANSWERS_TO_TRUST,
    SourceTrack,
)
from broadcast.media.viewer_track import ViewerTrack
from broadcast.web_keys import REGISTRY
from tests.peers import publish, wait_for, watch
from tests.test_media_units import VP8, packet

KEY, DELTA = b"\x10\x00", b"\x10\x01"


def sequence_numbers(sent: list[bytes]) -> list[int]:
    return [int.from_bytes(p[2:4], "big") for p in sent]


def ignore(packet: bytes) -> None:
    """A viewer's packets that the test does not look at."""


def asking_source() -> tuple[SourceTrack, list[float]]:
    source = SourceTrack("video", VP8)
    plis: list[float] = []

    def ask() -> bool:
        plis.append(time.monotonic())
        return True

    source.request_pli = ask
    return source, plis


async def test_a_keyframe_that_came_while_the_viewer_connected_is_where_it_starts():
    source, plis = asking_source()
    source.forward(packet(0, KEY))  # the GOP before this viewer offered
    source.forward(packet(1, DELTA))
    sent: list[bytes] = []
    viewer = ViewerTrack(source, sent.append, 96)
    source.expect_viewer(viewer)  # its offer
    assert len(plis) == 1
    source.forward(packet(2, KEY))  # the answer, while ICE and DTLS run
    source.forward(packet(3, DELTA))
    source.add_viewer(viewer)  # connected
    assert sequence_numbers(sent) == [2, 3]
    assert len(plis) == 1 and not source.keyframes.pending, "asked twice"


async def test_a_viewer_that_connects_before_its_keyframe_waits_without_asking_again():
    source, plis = asking_source()
    source.forward(packet(0, KEY))
    sent: list[bytes] = []
    viewer = ViewerTrack(source, sent.append, 96)
    source.expect_viewer(viewer)
    source.add_viewer(viewer)
    assert sent == [] and viewer.waiting_for_keyframe
    assert len(plis) == 1 and not source.keyframes.pending, "asked twice"
    source.forward(packet(1, KEY))
    assert sequence_numbers(sent) == [1]


async def test_an_old_gop_arriving_after_the_offer_is_not_a_fresh_start():
    # A worker's copy of a track receives the main process's GOP after the viewer
    # there offered: seconds of video that are not the keyframe it asked for.
    source, _ = asking_source()
    sent: list[bytes] = []
    viewer = ViewerTrack(source, sent.append, 96)
    source.expect_viewer(viewer)
    source.forward(packet(0, KEY))
    for seq in range(1, 90):  # 3 s of GOP at once
        source.forward(packet(seq, DELTA))
    source.add_viewer(viewer)
    assert sent == [] and viewer.waiting_for_keyframe


async def test_a_viewer_slow_to_connect_asks_afresh_rather_than_start_seconds_behind():
    source, plis = asking_source()
    sent: list[bytes] = []
    viewer = ViewerTrack(source, sent.append, 96)
    source.expect_viewer(viewer)
    viewer.asked_at -= 5  # it offered 5 s ago (TURN, ICE-TCP), its keyframe came since
    source.forward(packet(0, KEY))
    for seq in range(1, 60):  # 2 s of video since that keyframe
        source.forward(packet(seq, DELTA))
    source.add_viewer(viewer)
    assert sent == [] and viewer.waiting_for_keyframe
    assert len(plis) == 2 or source.keyframes.pending, "no fresh keyframe asked for"
    source.forward(packet(60, KEY))
    assert sequence_numbers(sent) == [60]


async def test_a_viewer_joining_once_the_cached_gop_is_too_old_is_asked_for_at_once():
    # Viewers opening a link a second apart: the PLI interval must not hold back the
    # keyframe of a viewer that may not start from the cache (page-open p95 +270 ms).
    source, plis = asking_source()
    first = ViewerTrack(source, ignore, 96)
    source.expect_viewer(first)
    source.forward(packet(0, KEY))  # its answer
    for seq in range(1, 20):  # then 0.6 s of video
        source.forward(packet(seq, DELTA))
    await asyncio.sleep(JOIN_GOP_MAX_AGE_S + 0.02)
    second = ViewerTrack(source, ignore, 96)
    source.expect_viewer(second)
    assert len(plis) == 2, "the second viewer's keyframe waits out the PLI interval"


async def ignored_once(source: SourceTrack) -> None:
    """A first viewer's PLI goes unanswered: it starts from the cached GOP; then the
    publisher's next keyframe of its own comes."""
    source.forward(packet(0, KEY))
    first = ViewerTrack(source, ignore, 96)
    source.expect_viewer(first)
    source.add_viewer(first)
    await asyncio.sleep(GOP_FALLBACK_S + 0.05)
    assert not first.waiting_for_keyframe, "it did not fall back to the GOP"
    source.forward(packet(1, KEY))


async def pli_then_keyframe(source: SourceTrack, seq: int) -> None:
    """A viewer offers (a PLI goes out) and a keyframe comes at once after it."""
    await asyncio.sleep(KEYFRAME_MIN_INTERVAL_S + 0.02)
    source.expect_viewer(ViewerTrack(source, ignore, 96))
    source.forward(packet(seq, KEY))


async def test_a_keyframe_that_follows_a_pli_by_chance_does_not_make_joiners_wait():
    # A looped clip with its own GOP: some of its keyframes land just after a PLI.
    source, plis = asking_source()
    await ignored_once(source)
    await pli_then_keyframe(source, 2)
    assert len(plis) == 2
    sent: list[bytes] = []
    joiner = ViewerTrack(source, sent.append, 96)
    source.expect_viewer(joiner)
    source.add_viewer(joiner)
    assert sequence_numbers(sent) == [2], "a joiner waits on a publisher ignoring PLIs"


async def test_a_publisher_that_answers_plis_in_a_row_is_believed_again():
    source, plis = asking_source()
    await ignored_once(source)
    for seq in range(2, PLI_ANSWERS_TO_TRUST + 2):
        await pli_then_keyframe(source, seq)
    assert len(plis) == 1 + PLI_ANSWERS_TO_TRUST
    await asyncio.sleep(KEYFRAME_MIN_INTERVAL_S + 0.02)
    sent: list[bytes] = []
    joiner = ViewerTrack(source, sent.append, 96)
    source.expect_viewer(joiner)
    source.add_viewer(joiner)
    assert sent == [] and joiner.waiting_for_keyframe, "not asked for a fresh keyframe"
    source.forward(packet(9, KEY))
    assert sequence_numbers(sent) == [9]


async def test_one_viewer_flooding_plis_cannot_set_the_publishers_keyframe_rate():
    source, plis = asking_source()
    viewer = ViewerTrack(source, ignore, 96)
    source.forward(packet(0, KEY))
    started = time.monotonic()
    while time.monotonic() - started < 1.6:
        viewer.request_keyframe()  # a PLI every 10 ms
        await asyncio.sleep(0.01)
    assert len(plis) == 2, f"{len(plis)} keyframes asked for in 1.6 s"


async def test_the_server_asks_the_publisher_for_a_keyframe_before_a_viewer_connects(
    server, http
):
    publisher = await publish(http, str(server.make_url("/whip/join")), audio=None)
    await publisher.wait_connected()
    stream = server.app[REGISTRY].get("join")
    video = stream.tracks["video"]
    await wait_for(lambda: video.packets_in > 0, message="no video from the publisher")
    # past the PLI interval: the join's request goes out at once
    await asyncio.sleep(KEYFRAME_MIN_INTERVAL_S + 0.1)
    viewer = await watch(http, str(server.make_url("/whep/join")), kinds=("video",))
    (session,) = stream.viewers
    await viewer.wait_connected()
    await wait_for(lambda: session.connected_at is not None)
    asked = video.keyframes.last_sent
    print(
        f"PLI {1000 * (session.connected_at - asked):.0f} ms before the viewer connected"
    )
    assert asked < session.connected_at
    await wait_for(lambda: "video" in viewer.first_frame_at, message="no picture")
    await viewer.close()
    await publisher.close()
