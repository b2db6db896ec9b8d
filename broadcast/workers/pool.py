"""The main process's side of its workers: start them, give them viewers, feed them.

With `workers = N` the main process is the first of N: it keeps HTTP, publishers and
streams, and carries viewers like any worker. Each new viewer goes to the process with
the fewest. A worker's viewer is a `RemoteViewer` here (in its stream, its session URL,
the admin API and metrics) over a `RemoteTransport` that asks the worker for ICE and
DTLS; the worker's copies of the tracks are fed by a tap on each `SourceTrack`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import os
import socket
import sys
from collections.abc import Callable, Sequence
from typing import Any, cast

from aiortc import RTCDtlsFingerprint, RTCIceCandidate, RTCIceParameters

from broadcast.config import Config
from broadcast.media.source_track import SourceTrack
from broadcast.media.transport import SecureTransport
from broadcast.stream import Stream
from broadcast.viewer import Viewer
from broadcast.workers.channel import (
    PACKET_HEADER,
    ControlChannel,
    RemoteError,
    socket_pairs,
)

logger = logging.getLogger(__name__)

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 5.0


def worker_count(config: Config) -> int:
    """Processes carrying viewers: `workers`, or one per core when it is 0."""
    return config.workers or os.cpu_count() or 1


class WorkerProcess:
    """One worker: its process, its two sockets, its viewers and the tracks it taps."""

    def __init__(self, index: int, pool: WorkerPool) -> None:
        self.index = index
        self.pool = pool
        self.process: asyncio.subprocess.Process | None = None
        self.control: ControlChannel | None = None
        self.packets: socket.socket | None = None
        self.viewers: dict[str, RemoteViewer] = {}
        self.media_addresses: list[tuple[str, int]] = []
        self._numbers: dict[SourceTrack, int] = {}  # what the worker calls them
        self._taps: dict[SourceTrack, Callable[[bytes], None]] = {}
        self._tap_users: dict[SourceTrack, int] = {}
        self.packets_dropped = 0

    def __repr__(self) -> str:
        return f"WorkerProcess({self.index})"

    async def start(self, config: Config) -> None:
        (control, packets), (their_control, their_packets) = socket_pairs()
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "broadcast.workers.worker",
            str(their_control.fileno()),
            str(their_packets.fileno()),
            pass_fds=(their_control.fileno(), their_packets.fileno()),
        )
        their_control.close()
        their_packets.close()
        packets.setblocking(False)
        self.packets = packets
        self.control = ControlChannel(control, self._call, self._notice, self._lost)
        port = config.media_port + self.index if config.media_port else 0
        self.media_addresses = await asyncio.wait_for(
            self.control.call(
                "start",
                config=dataclasses.replace(config, media_port=port),
                index=self.index,
                log_level=logging.getLogger().getEffectiveLevel(),
            ),
            START_TIMEOUT_S,
        )

    # --- from the worker -----------------------------------------------------------

    def _call(self, method: str, arguments: dict[str, Any]) -> Any:
        raise ValueError(f"no such call: {method}")

    def _notice(self, method: str, arguments: dict[str, Any]) -> None:
        if method == "pli":
            for track, number in self._numbers.items():
                if number == arguments["track"]:
                    track.keyframes.request()
            return
        if method == "stats":
            for session, stats in arguments["viewers"].items():
                viewer = self.viewers.get(session)
                if viewer is not None:
                    viewer.take_stats(stats)
            return
        viewer = self.viewers.get(arguments["session"])
        if viewer is None:
            return
        if method == "state":
            viewer.remote.state_changed(arguments["state"])
        elif method == "joined":
            viewer.on_join(arguments["seconds"])
        elif method == "closed":
            viewer.remote.closed_there = True
            asyncio.get_running_loop().create_task(
                viewer.close(arguments["reason"], arguments["cause"] or "transport")
            )

    def _lost(self) -> None:
        logger.error("%r exited: its %d viewers are dropped", self, len(self.viewers))
        for viewer in list(self.viewers.values()):
            viewer.remote.closed_there = True
            asyncio.get_running_loop().create_task(
                viewer.close("its worker process exited", "error")
            )
        self.pool.lost(self)

    # --- packets to the worker -------------------------------------------------------

    def number(self, track: SourceTrack) -> int:
        """The number of `track` in this worker's packets."""
        if track not in self._numbers:
            self._numbers[track] = next(self.pool.track_numbers)
        return self._numbers[track]

    def subscribe(self, track: SourceTrack) -> None:
        """Feed `track` to this worker (its GOP first, for the joining viewer)."""
        if track in self._taps:
            self._tap_users[track] += 1
            return
        header = PACKET_HEADER.pack(self.number(track))
        sock = self.packets
        assert sock is not None

        def tap(data: bytes) -> None:
            try:
                sock.send(header + data)
            except OSError:  # full (the worker is behind), or gone
                self.packets_dropped += 1

        self._taps[track] = tap
        self._tap_users[track] = 1
        for packet in track.gop:
            tap(packet)
        track.taps.append(tap)

    def unsubscribe(self, track: SourceTrack) -> None:
        """One viewer fewer on `track`; the last one stops the packets."""
        if track not in self._tap_users:
            return
        self._tap_users[track] -= 1
        if self._tap_users[track] > 0:
            return
        tap = self._taps.pop(track)
        del self._tap_users[track]
        if tap in track.taps:
            track.taps.remove(tap)
        number = self._numbers.pop(track)
        if self.control is not None:
            self.control.tell("forget_track", track=number)

    async def stop(self) -> None:
        if self.control is not None:
            self.control.tell("stop")
        if self.process is not None:
            try:
                await asyncio.wait_for(self.process.wait(), STOP_TIMEOUT_S)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        if self.control is not None:
            self.control.close()
        if self.packets is not None:
            self.packets.close()


class WorkerPool:
    """The worker processes of a server; empty with `workers = 1`."""

    def __init__(self) -> None:
        self.workers: list[WorkerProcess] = []
        self.track_numbers = itertools.count(1)
        self._reaping: set[asyncio.Task[None]] = set()

    async def start(self, config: Config) -> None:
        count = worker_count(config)
        self.workers = [WorkerProcess(index, self) for index in range(1, count)]
        try:
            await asyncio.gather(*(w.start(config) for w in self.workers))
        except BaseException:
            await self.stop()
            raise
        for worker in self.workers:
            logger.info(
                "worker %d carries viewers on %s",
                worker.index,
                ", ".join(
                    f"{host} port {port}" for host, port in worker.media_addresses
                ),
            )

    def choose(self, local_viewers: int) -> WorkerProcess | None:
        """The process with the fewest viewers (None: this one)."""
        best: WorkerProcess | None = None
        fewest = local_viewers
        for worker in self.workers:
            if len(worker.viewers) < fewest:
                best, fewest = worker, len(worker.viewers)
        return best

    def lost(self, worker: WorkerProcess) -> None:
        """`worker` exited by itself: no more viewers for it; reap it."""
        if worker in self.workers:
            self.workers.remove(worker)
            self._reaping.add(asyncio.get_running_loop().create_task(worker.stop()))

    async def stop(self) -> None:
        await asyncio.gather(*(w.stop() for w in self.workers), *self._reaping)
        self.workers = []


class RemoteTransport:
    """A viewer's ICE + DTLS transport that lives in a worker; the same interface
    as `SecureTransport` for what the main process does with it."""

    def __init__(self, worker: WorkerProcess) -> None:
        self.worker = worker
        self.session_id = ""
        self.open_arguments: dict[str, Any] = {}
        self.local_ice = RTCIceParameters()
        self.local_candidates: list[RTCIceCandidate] = []
        self.local_fingerprints: list[RTCDtlsFingerprint] = []
        self.state = "new"
        self.closed = False
        self.closed_there = False  # the worker closed it: nothing to tell
        self.failed_packets = 0
        self.foreign_packets = 0
        self.remote_address: tuple[str, int] | None = None
        self._on_state: Callable[[str], None] = lambda state: None
        # The worker holds the viewer's tracks now: their packets may flow.
        self.opened: Callable[[], None] = lambda: None

    def on_packets(
        self, rtp: Callable[[bytes], None], rtcp: Callable[[bytes], None]
    ) -> None:
        """Media and RTCP from this viewer stay in the worker."""

    def on_state(self, handler: Callable[[str], None]) -> None:
        self._on_state = handler

    def state_changed(self, state: str) -> None:
        self.state = state
        self._on_state(state)

    async def gather(self) -> None:
        control = self.worker.control
        assert control is not None
        local = await control.call(
            "open_viewer", session=self.session_id, **self.open_arguments
        )
        self.local_ice = local["ice"]
        self.local_candidates = local["candidates"]
        self.local_fingerprints = local["fingerprints"]
        self.opened()

    def start(
        self,
        remote_ice: RTCIceParameters,
        remote_candidates: Sequence[RTCIceCandidate],
        remote_fingerprints: Sequence[RTCDtlsFingerprint],
        candidates_complete: bool,
        dtls_role: str,
    ) -> None:
        if self.worker.control is not None:
            self.worker.control.tell(
                "start_viewer",
                session=self.session_id,
                remote_ice=remote_ice,
                remote_candidates=list(remote_candidates),
                remote_fingerprints=list(remote_fingerprints),
                candidates_complete=candidates_complete,
                dtls_role=dtls_role,
            )

    async def add_remote_candidate(self, candidate: RTCIceCandidate | None) -> None:
        if self.worker.control is not None:
            await self.worker.control.call(
                "add_candidate", session=self.session_id, candidate=candidate
            )

    def send_rtp(self, data: bytes) -> None:
        """Never called: the worker sends this viewer's media."""

    def send_rtcp(self, data: bytes) -> None:
        """Never called: the worker sends this viewer's reports."""

    def fan_out_target(self) -> None:
        return None

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        control = self.worker.control
        if not self.closed_there and control is not None and not control.closed:
            try:
                await control.call(
                    "close_viewer", session=self.session_id, reason="", cause=""
                )
            except (ConnectionError, RemoteError):
                logger.debug("%r: the worker could not close a viewer", self.worker)


class RemoteViewer(Viewer):
    """A viewer carried by a worker: here, its place in the stream and its numbers."""

    def __init__(
        self,
        worker: WorkerProcess,
        stream: Stream,
        transport: RemoteTransport,
        remote_ufrag: str,
        payload_types: dict[str, int],
        cname: str,
        on_join: Callable[[float], None],
    ) -> None:
        super().__init__(
            stream, cast(SecureTransport, transport), remote_ufrag, payload_types, cname
        )
        self.remote = transport
        self.worker = worker
        self.on_join = on_join
        self._remote_counters: dict[str, int] = {}
        self._subscribed = False
        transport.session_id = self.id
        transport.open_arguments = {
            "stream_id": stream.id,
            "tracks": {
                t.source.kind: (
                    worker.number(t.source),
                    t.source.codec,
                    t.source.ssrc,
                    t.source._can_answer_pli,
                )
                for t in self.tracks
            },
            "payload_types": payload_types,
            "remote_ufrag": remote_ufrag,
            "cname": cname,
        }
        transport.opened = self._subscribe
        worker.viewers[self.id] = self

    def _subscribe(self) -> None:
        if not self.closed and not self._subscribed:
            self._subscribed = True
            for track in self.tracks:
                self.worker.subscribe(track.source)

    def connected(self) -> None:
        """The worker's copy of the viewer is connected; it adds itself there."""

    def rtcp_report(self) -> bytes:
        return b""  # the worker reports to this viewer

    def take_stats(self, stats: dict[str, Any]) -> None:
        self._remote_counters = stats["counters"]
        self.remote.remote_address = stats["address"]
        self.fraction_lost = stats["fraction_lost"]
        self.rtt_s = stats["rtt_s"]
        self.bitrate_out_bps = stats["bitrate_out_bps"]
        for track, (waiting, retransmitted, _, _) in zip(
            self.tracks, stats["tracks"], strict=False
        ):
            track.waiting_for_keyframe = waiting
            track.retransmitted = retransmitted

    def counters(self) -> dict[str, int]:
        return dict(self._remote_counters)

    def detach(self) -> None:
        if self._subscribed:
            for track in self.tracks:
                self.worker.unsubscribe(track.source)
        self.worker.viewers.pop(self.id, None)
        self.stream.remove_viewer(self)
