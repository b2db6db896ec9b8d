"""A worker process: the media of some viewers, on a core of its own.

The main process keeps HTTP, the publishers and every stream; a worker holds the ICE,
DTLS and SRTP of the viewers it is given and a copy of each track they watch, fed with
the packets the main process rewrote (each packet crosses once per worker, whatever the
number of viewers here). It answers NACKs from its own history, starts joining viewers
from its own GOP, and passes keyframe requests up. Run by the main process only:
`python -m broadcast.workers CONTROL_FD PACKETS_FD`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
import time
from typing import Any

from aiortc import RTCRtpCodecParameters

from broadcast.config import Config
from broadcast.logs import configure_logging
from broadcast.media.host import MediaHost
from broadcast.media.source_track import RTP_HEADER, SourceTrack
from broadcast.memory import release_while
from broadcast.viewer import Viewer
from broadcast.workers.channel import PACKET_HEADER, ControlChannel

logger = logging.getLogger(__name__)

STATS_INTERVAL_S = 1.0
# ~100 bytes a viewer: a message stays far below a control socket's buffer.
STATS_PER_MESSAGE = 500
RECEIVE_BATCH = 256  # datagrams read per wake-up, so control messages get their turn


class Worker:
    """What a worker holds: its media sockets, track copies and viewers."""

    def __init__(self, control: socket.socket, packets: socket.socket) -> None:
        self.control = ControlChannel(control, self._call, self._notice, self._lost)
        self._packets = packets
        self._packets.setblocking(False)
        self.media: MediaHost | None = None
        self.tracks: dict[int, SourceTrack] = {}
        self.viewers: dict[str, Viewer] = {}
        self.stopped = asyncio.get_running_loop().create_future()
        self.viewers_ended = 0
        self._tasks: list[asyncio.Task[None]] = []

    # --- from the main process ---------------------------------------------------

    async def _call(self, method: str, arguments: dict[str, Any]) -> Any:
        if method == "start":
            return await self._start(**arguments)
        if method == "open_viewer":
            return await self._open_viewer(**arguments)
        if method == "add_candidate":
            viewer = self.viewers.get(arguments["session"])
            if viewer is not None:  # else it closed: its news is on the way
                await viewer.transport.add_remote_candidate(arguments["candidate"])
            return None
        if method == "restart_ice":
            viewer = self.viewers.get(arguments.pop("session"))
            if viewer is None:
                raise ConnectionError("the viewer has closed")
            await viewer.transport.restart_ice(**arguments)
            return viewer.transport.local_ice
        if method == "set_quality":
            viewer = self.viewers.get(arguments["session"])
            if viewer is None:
                raise ConnectionError("the viewer has closed")
            await viewer.set_quality(arguments["quality"])
            return None
        if method == "close_viewer":
            viewer = self.viewers.get(arguments["session"])
            if viewer is not None:
                await viewer.close(arguments["reason"], arguments["cause"])
            return None
        raise ValueError(f"no such call: {method}")

    def _notice(self, method: str, arguments: dict[str, Any]) -> None:
        if method == "start_viewer":
            viewer = self.viewers.get(arguments.pop("session"))
            if viewer is not None:
                viewer.transport.start(**arguments)
        elif method == "clock":
            track = self.tracks.get(arguments["track"])
            if track is not None:
                track.take_sender_report(arguments["ntp"], arguments["rtp"])
        elif method == "forget_track":  # its last viewer here has left
            track = self.tracks.pop(arguments["track"], None)
            if track is not None:
                track.close()
        elif method == "stop":
            self._lost()

    def _lost(self) -> None:
        if not self.stopped.done():
            self.stopped.set_result(None)

    async def _start(self, config: Config, index: int, log_level: int) -> list[Any]:
        configure_logging(config)  # to the same stderr, secrets redacted the same way
        logging.getLogger().setLevel(log_level)
        self.media = MediaHost(config)
        await self.media.open()
        loop = asyncio.get_running_loop()
        loop.add_reader(self._packets, self._packets_ready)
        self._tasks = [
            loop.create_task(self._report()),
            loop.create_task(release_while(lambda: self.viewers_ended)),
        ]
        logger.info("worker %d ready (pid %d)", index, os.getpid())
        return [m.address for m in self.media.media_sockets]

    async def _open_viewer(
        self,
        session: str,
        stream_id: str,
        tracks: dict[str, tuple[int, RTCRtpCodecParameters, int, bool]],
        layers: list[tuple[str, int, RTCRtpCodecParameters, int, bool]],
        payload_types: dict[str, int],
        remote_ufrag: str,
        cname: str,
        pinned: bool,
    ) -> dict[str, Any]:
        """A viewer's transport and tracks here; what the answer needs of them."""
        media = self.media
        assert media is not None, "start first"
        copies = {
            kind: self._track(number, kind, codec, ssrc, answers_pli)
            for kind, (number, codec, ssrc, answers_pli) in tracks.items()
        }
        transport = media.transport(f"whep {stream_id}")
        viewer = Viewer(
            stream_id,
            copies,
            transport,
            remote_ufrag,
            payload_types,
            cname,
            on_join=lambda seconds: self.control.tell(
                "joined", session=session, seconds=seconds
            ),
            layers=[
                (rid, self._track(number, "video", codec, ssrc, answers_pli))
                for rid, number, codec, ssrc, answers_pli in layers
            ],
            on_layer_switch=lambda up: self.control.tell(
                "layer", session=session, layer=viewer.layer, up=up
            ),
            pinned=pinned,
        )
        viewer.id = session  # one name in both processes' logs
        self.viewers[session] = viewer
        transport.on_state(
            lambda state: self.control.tell("state", session=session, state=state)
        )
        viewer.on_close.append(lambda _: self._viewer_closed(session))
        await transport.gather()
        return {
            "ice": transport.local_ice,
            "candidates": transport.local_candidates,
            "fingerprints": transport.local_fingerprints,
        }

    def _track(
        self,
        number: int,
        kind: str,
        codec: RTCRtpCodecParameters,
        ssrc: int,
        answers_pli: bool,
    ) -> SourceTrack:
        track = self.tracks.get(number)
        if track is None:
            track = SourceTrack(kind, codec, answers_pli)
            track.ssrc = ssrc
            track.request_pli = lambda: self._request_pli(number)
            self.tracks[number] = track
        return track

    def _request_pli(self, number: int) -> bool:
        self.control.tell("pli", track=number)
        return True

    def _viewer_closed(self, session: str) -> None:
        viewer = self.viewers.pop(session, None)
        if viewer is not None:
            self.control.tell(
                "closed",
                session=session,
                reason=viewer.close_reason,
                cause=viewer.close_cause,
                stats=viewer_stats(viewer),  # its last counts, for the totals
            )
        self.viewers_ended += 1

    # --- packets -----------------------------------------------------------------

    def _packets_ready(self) -> None:
        recv = self._packets.recv
        tracks = self.tracks
        for _ in range(RECEIVE_BATCH):
            try:
                message = recv(4096)
            except BlockingIOError:
                return
            except OSError:
                self._lost()
                return
            (number,) = PACKET_HEADER.unpack_from(message)
            track = tracks.get(number)
            if track is not None:
                data = message[PACKET_HEADER.size :]
                _, _, seq, ts, _ = RTP_HEADER.unpack_from(data)
                track.relay(data, seq, ts)

    async def _report(self) -> None:
        """Each viewer's counts and quality, for the main process's API and metrics."""
        while not self.stopped.done():
            started = time.monotonic()
            await asyncio.sleep(STATS_INTERVAL_S)
            # How late the loop woke us: the main process sends no new viewer to a
            # worker that is behind (admission control, as for its own loop).
            lag = max(0.0, time.monotonic() - started - STATS_INTERVAL_S)
            counts = dict(self.media.counts()) if self.media else {}
            self.control.tell("load", loop_lag_s=lag, counts=counts)
            sessions = list(self.viewers)
            for first in range(0, len(sessions), STATS_PER_MESSAGE):
                chunk = sessions[first : first + STATS_PER_MESSAGE]
                stats = {s: viewer_stats(self.viewers[s]) for s in chunk}
                self.control.tell("stats", viewers=stats)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        asyncio.get_running_loop().remove_reader(self._packets)
        await asyncio.gather(
            *(
                v.close("worker stopping", "shutdown")
                for v in list(self.viewers.values())
            )
        )
        if self.media is not None:
            self.media.close()
        self.control.close()


def viewer_stats(viewer: Viewer) -> dict[str, Any]:
    """What the main process shows of a viewer it does not carry."""
    return {
        "counters": viewer.counters(),
        "address": viewer.transport.remote_address,
        "fraction_lost": viewer.fraction_lost,
        "rtt_s": viewer.rtt_s,
        "bitrate_out_bps": viewer.bitrate_out_bps,
        "retransmissions": viewer.retransmissions,
        "tracks_waiting": viewer.tracks_waiting,
        "estimate_bps": viewer.estimate_bps,
    }


async def run(control_fd: int, packets_fd: int) -> None:
    control = socket.socket(fileno=control_fd)
    packets = socket.socket(fileno=packets_fd)
    worker = Worker(control, packets)
    await worker.stopped
    await worker.close()


def main() -> None:
    # Ctrl-C and systemd's stop signal reach every process of the server: the main
    # process ends its workers in order (their viewers first); a worker whose main
    # process is gone sees its control socket close and ends too.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    control_fd, packets_fd = (int(arg) for arg in sys.argv[1:3])
    asyncio.run(run(control_fd, packets_fd))
