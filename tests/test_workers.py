"""workers = 2: a stream's viewers are spread over two processes, and every viewer on
either one gets every packet the publisher sent."""

from __future__ import annotations

import asyncio
import re

import aiohttp

from broadcast.config import RtspCamera, RtspOptions
from broadcast.web_keys import MEDIA, REGISTRY, WORKERS
from broadcast.workers import pool
from broadcast.workers.remote import RemoteViewer
from tests.camera_sim import start_camera
from tests.peers import Peer, publish, wait_for, watch
from tests.test_lifecycle import video_packets

VIEWERS = 4


def candidate_ports(sdp: str) -> set[int]:
    return {int(p) for p in re.findall(r"a=candidate:\S+ 1 udp \d+ \S+ (\d+)", sdp)}


def sequence_numbers(peer: Peer, ssrc: int | None = None) -> dict[int, set[int]]:
    """Sequence numbers by SSRC (one SSRC per track, as sent or as received)."""
    log = peer.sent if ssrc is not None else peer.received
    return {
        s: {p.sequence_number for p in packets} for s, packets in log.packets.items()
    }


async def test_viewers_on_both_processes_get_every_packet(make_server, http):
    server = await make_server(workers=2)
    registry = server.app[REGISTRY]
    (worker,) = server.app[WORKERS].workers
    publisher = await publish(http, str(server.make_url("/whip/w")))
    await publisher.wait_connected()
    viewers = [
        await watch(http, str(server.make_url("/whep/w"))) for _ in range(VIEWERS)
    ]
    await asyncio.gather(*(v.wait_connected() for v in viewers))

    stream = registry.get("w")
    remote = [v for v in stream.viewers if isinstance(v, RemoteViewer)]
    assert len(remote) == VIEWERS // 2, "the worker carries half the viewers"
    main_port = server.app[MEDIA].media_sockets[0].address[1]
    worker_port = worker.media_addresses[0][1]
    assert {
        port
        for viewer in viewers
        for port in candidate_ports(viewer.pc.remoteDescription.sdp)
    } == {main_port, worker_port}

    await wait_for(
        lambda: all(len(v.frames.get("video", [])) >= 10 for v in viewers),
        timeout=20,
        message="a viewer decoded no video",
    )
    # Every packet sent from now on for a while must reach every viewer (gaps are
    # NACKed and retransmitted, from either process's history).
    sent_before = {
        ssrc: max(p.sequence_number for p in packets)
        for ssrc, packets in publisher.sent.packets.items()
    }
    await asyncio.sleep(2)
    window = {
        ssrc: {
            p.sequence_number
            for p in packets
            if sent_before[ssrc] < p.sequence_number <= sent_before[ssrc] + 60
        }
        for ssrc, packets in publisher.sent.packets.items()
    }
    assert all(len(numbers) == 60 for numbers in window.values()), window

    def every_viewer_has_the_window() -> bool:
        for viewer in viewers:
            received = set().union(
                *(
                    {p.sequence_number for p in packets}
                    for packets in viewer.received.packets.values()
                )
            )
            if any(not numbers <= received for numbers in window.values()):
                return False
        return True

    await wait_for(
        every_viewer_has_the_window,
        timeout=10,
        message="a viewer is missing packets of the window",
    )
    for viewer in remote:
        assert viewer.counters()["rtp_packets_sent"] > 0, "the worker reports counts"
    async with http.get(server.make_url("/metrics")) as response:
        text = await response.text()
    for process in ("0", "1"):
        assert f'broadcast_process_viewers{{process="{process}"}} 2.0' in text
    assert "broadcast_viewers_waiting_for_keyframe 0.0" in text
    await asyncio.gather(publisher.close(), *(v.close() for v in viewers))


async def test_a_worker_viewer_ends_by_delete_and_with_its_stream(make_server, http):
    server = await make_server(workers=2)
    registry = server.app[REGISTRY]
    (worker,) = server.app[WORKERS].workers
    publisher = await publish(http, str(server.make_url("/whip/d")), video=None)
    await publisher.wait_connected()
    viewers = [
        await watch(http, str(server.make_url("/whep/d")), kinds=("audio",))
        for _ in range(4)
    ]
    await asyncio.gather(*(v.wait_connected() for v in viewers))
    assert len(worker.viewers) == 2
    on_worker = [v for v in viewers if v.location.split("/")[-1] in worker.viewers]
    async with http.delete(str(server.make_url(on_worker[0].location))) as response:
        assert response.status == 200
    await wait_for(lambda: len(worker.viewers) == 1, message="DELETE did not end it")
    await wait_for(
        lambda: (
            on_worker[0].pc.connectionState in ("closed", "failed")
            or registry.get("d").viewers.__len__() == 3
        ),
        message="the stream still counts it",
    )
    assert len(registry.get("d").viewers) == 3
    async with http.delete(str(server.make_url(publisher.location))) as response:
        assert response.status == 200
    await wait_for(lambda: not worker.viewers, message="the stream's end left one")
    await asyncio.gather(*(v.close() for v in viewers))


async def test_a_worker_that_dies_takes_only_its_viewers_and_is_replaced(
    make_server, http
):
    server = await make_server(workers=2)
    registry = server.app[REGISTRY]
    (worker,) = server.app[WORKERS].workers
    publisher = await publish(http, str(server.make_url("/whip/k")), video=None)
    await publisher.wait_connected()
    viewers = [
        await watch(http, str(server.make_url("/whep/k")), kinds=("audio",))
        for _ in range(2)
    ]
    await asyncio.gather(*(v.wait_connected() for v in viewers))
    worker.process.kill()
    await wait_for(
        lambda: len(registry.get("k").viewers) == 1, message="its viewer was kept"
    )
    survivor = next(v for v in viewers if v.pc.connectionState == "connected")
    before = len(survivor.received.packets.get(next(iter(survivor.received.packets))))
    await wait_for(
        lambda: server.app[WORKERS].workers, timeout=15, message="no new worker"
    )
    (replacement,) = server.app[WORKERS].workers
    assert replacement.process.pid != worker.process.pid
    late = await watch(http, str(server.make_url("/whep/k")), kinds=("audio",))
    await late.wait_connected()
    assert len(replacement.viewers) == 1, "the new worker takes the next viewer"
    await wait_for(lambda: late.received.packets, message="no audio from the new one")
    assert sum(map(len, survivor.received.packets.values())) > before
    await asyncio.gather(publisher.close(), late.close(), *(v.close() for v in viewers))


async def test_workers_stop_with_the_server(make_server):
    server = await make_server(workers=3)
    processes = [w.process for w in server.app[WORKERS].workers]
    assert len(processes) == 2
    await server.close()
    for process in processes:
        assert process.returncode is not None, "a worker outlived the server"


async def test_http_still_answers_while_workers_start(make_server):
    server = await make_server(workers=2)
    async with (
        aiohttp.ClientSession() as http,
        http.get(server.make_url("/healthz")) as r,
    ):
        assert r.status == 200


async def test_a_worker_that_is_behind_gets_no_new_viewer(
    make_server, http, monkeypatch
):
    """Admission control per process: any lag at all counts as behind here."""
    monkeypatch.setattr(pool, "ADMISSION_MAX_LAG_S", -1.0)
    server = await make_server(workers=2)
    (worker,) = server.app[WORKERS].workers
    publisher = await publish(http, str(server.make_url("/whip/b")), video=None)
    await publisher.wait_connected()
    viewers = [
        await watch(http, str(server.make_url("/whep/b")), kinds=("audio",))
        for _ in range(3)
    ]
    await asyncio.gather(*(v.wait_connected() for v in viewers))
    assert worker.viewers == {}, "a worker that is behind was given viewers"
    await asyncio.gather(publisher.close(), *(v.close() for v in viewers))


async def test_a_worker_answers_its_viewers_nacks_from_its_own_history(
    make_server, http
):
    """One video packet in 10 is lost on the way to the worker's viewer: the worker
    retransmits it (the main process's history is not consulted)."""
    server = await make_server(workers=2)
    registry = server.app[REGISTRY]
    (worker,) = server.app[WORKERS].workers
    publisher = await publish(http, str(server.make_url("/whip/n")))
    await publisher.wait_connected()
    local = await watch(http, str(server.make_url("/whep/n")))
    lost: list[int] = []
    arrived = [0]

    def drop(data: bytes) -> bool:
        """Lose packets once the viewer is under way (a packet lost before the first
        that arrives is one the receiver cannot know it missed)."""
        arrived[0] += 1
        seq = int.from_bytes(data[2:4], "big")
        if arrived[0] > 50 and seq % 10 == 3 and seq not in lost:
            lost.append(seq)  # once: its retransmission gets through
            return True
        return False

    viewer = await watch(
        http, str(server.make_url("/whep/n")), kinds=("video",), drop=drop
    )
    await asyncio.gather(local.wait_connected(), viewer.wait_connected())
    (remote,) = worker.viewers.values()
    await wait_for(lambda: len(lost) >= 5, timeout=20, message="nothing was lost")
    stream = registry.get("n")
    await wait_for(
        lambda: (
            set(lost[:5]) <= {p.sequence_number for p in video_packets(viewer, stream)}
        ),
        timeout=10,
        message="a lost packet was never retransmitted",
    )
    await wait_for(
        lambda: remote.counters().get("retransmissions", 0) >= 5,
        message="the worker did not report its retransmissions",
    )
    await asyncio.gather(publisher.close(), local.close(), viewer.close())


async def test_a_camera_viewer_on_a_worker_starts_from_the_gop_at_once(
    make_server, http
):
    """A camera cannot answer a PLI: the worker's copy of the track is handed the GOP
    when its viewer's transport opens, and starts the viewer from it on connecting."""
    async with start_camera() as cam:
        server = await make_server(
            workers=2,
            cameras=(RtspCamera("cam", cam.url, RtspOptions(always_on=True)),),
        )
        registry = server.app[REGISTRY]
        (worker,) = server.app[WORKERS].workers
        stream = registry.get("cam")
        await wait_for(lambda: "video" in stream.tracks and stream.tracks["video"].gop)
        keyframe = stream.tracks["video"].gop[0]
        await wait_for(lambda: stream.tracks["video"].gop[0] != keyframe)
        await asyncio.sleep(0.1)  # just past a keyframe: the next is ~0.9 s away
        viewers = [
            await watch(http, str(server.make_url("/whep/cam")), ("video",))
            for _ in range(2)
        ]
        await asyncio.gather(*(v.wait_connected() for v in viewers))
        assert len(worker.viewers) == 1
        await wait_for(
            lambda: all(v.frames.get("video") for v in viewers),
            timeout=5,
            message="a camera viewer got no picture",
        )
        for viewer in viewers:
            assert viewer.first_frame_at["video"] - viewer.connected_at < 0.4
        await asyncio.gather(*(v.close() for v in viewers))


async def test_trickle_reaches_a_worker_viewer(make_server, http):
    """PATCH on a worker's viewer session: the candidate goes to the worker (204), and
    an ICE restart without its new password is refused as for any viewer (restarts
    themselves: tests/test_ice_restart.py)."""
    server = await make_server(workers=2)
    (worker,) = server.app[WORKERS].workers
    publisher = await publish(http, str(server.make_url("/whip/t")), video=None)
    await publisher.wait_connected()
    viewers = [
        await watch(http, str(server.make_url("/whep/t")), kinds=("audio",))
        for _ in range(2)
    ]
    (remote,) = [v for v in viewers if v.location.split("/")[-1] in worker.viewers]
    ufrag = remote.pc.localDescription.sdp.split("a=ice-ufrag:")[1].split()[0]
    url = server.make_url(remote.location)
    headers = {"Content-Type": "application/trickle-ice-sdpfrag"}
    fragment = (
        "a=ice-ufrag:{}\r\na=mid:0\r\n"
        "a=candidate:1 1 udp 2130706431 127.0.0.1 9 typ host\r\n"
    )
    async with http.patch(url, data=fragment.format(ufrag), headers=headers) as r:
        assert r.status == 204
    async with http.patch(url, data=fragment.format("other"), headers=headers) as r:
        assert r.status == 400
    await remote.wait_connected()
    await asyncio.gather(publisher.close(), *(v.close() for v in viewers))
