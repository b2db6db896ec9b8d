"""The main process's side of its workers: start them, give them viewers, feed them.

With `workers = N` the main process is the first of N: it keeps HTTP, publishers and
streams, and carries viewers like any worker. Each new viewer goes to the process with
the fewest. A worker's viewer is a `RemoteViewer` here (in its stream, its session URL,
the admin API and metrics) over a `RemoteTransport` that asks the worker for ICE and
DTLS; the worker's copies of the tracks are fed by a tap on each `SourceTrack`. A
worker tells its viewers what happened there through `WorkerViewer`: workers/remote.py
imports this module, not the other way round.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import socket
import sys
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import Any, Protocol

from broadcast.config import Config
from broadcast.limits import ADMISSION_MAX_LAG_S
from broadcast.media.source_track import GOP_CACHE_PACKETS, SourceTrack
from broadcast.workers.channel import (
    PACKET_HEADER,
    ControlChannel,
    RemoteError,
    socket_pairs,
)

logger = logging.getLogger(__name__)

START_TIMEOUT_S = 30.0
RESTART_DELAY_S = 1.0
MAX_BACKLOG_PACKETS = GOP_CACHE_PACKETS + 1000
STABLE_AFTER_S = 60.0  # a worker that ran this long before dying was not crash-looping
STOP_TIMEOUT_S = 5.0


class WorkerViewer(Protocol):
    """A viewer carried by a worker, as that worker tells it what happened there."""

    async def close(self, reason: str, cause: str) -> None: ...

    def transport_state(self, state: str) -> None:
        """Its transport's state in the worker."""

    def joined(self, seconds: float) -> None:
        """Its first keyframe came `seconds` after it connected."""

    def switched_layer(self, layer: str, up: bool) -> None:
        """It went to another simulcast layer (quality=auto)."""

    def take_stats(self, stats: dict[str, Any]) -> None:
        """Its counters and quality inputs, sent every second and at its end."""

    def gone_there(self) -> None:
        """The worker closed it, or exited: closing it need not tell the worker."""


class WorkerProcess:
    """One worker: its process, its two sockets, its viewers and the tracks it taps."""

    def __init__(self, index: int, pool: WorkerPool) -> None:
        self.index = index
        self.pool = pool
        self.process: asyncio.subprocess.Process | None = None
        self.control: ControlChannel | None = None
        self.packets: socket.socket | None = None
        self.viewers: dict[str, WorkerViewer] = {}
        self.media_addresses: list[tuple[str, int]] = []
        self._numbers: dict[SourceTrack, int] = {}  # what the worker calls them
        self._taps: dict[
            SourceTrack, tuple[Callable[[bytes], None], Callable[[int, int], None]]
        ] = {}
        self._users: dict[SourceTrack, int] = {}  # viewers here, fed or not yet
        self.packets_dropped = 0
        self.loop_lag_s = 0.0
        self.counts: dict[str, int] = {}  # what its shared sockets dropped, so far
        self._backlog: deque[bytes] = deque()  # packets its socket could not take yet
        self.started_at = time.monotonic()
        self.stopped = False
        self._closing: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        return f"WorkerProcess({self.index})"

    async def start(self, config: Config) -> None:
        (control, packets), (their_control, their_packets) = socket_pairs()
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "broadcast.workers",
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
        try:
            self.media_addresses = await self.control.call(
                "start",
                timeout=START_TIMEOUT_S,
                config=dataclasses.replace(config, media_port=port),
                index=self.index,
                log_level=logging.getLogger().getEffectiveLevel(),
            )
        except (OSError, RemoteError, TimeoutError) as exc:
            raise OSError(f"worker {self.index} did not start: {exc}") from None

    # --- from the worker -----------------------------------------------------------

    def _call(self, method: str, arguments: dict[str, Any]) -> Any:
        raise ValueError(f"no such call: {method}")

    def _notice(self, method: str, arguments: dict[str, Any]) -> None:
        if method == "pli":
            for track, number in self._numbers.items():
                if number == arguments["track"]:
                    track.keyframes.request()
            return
        if method == "load":
            self.loop_lag_s = arguments["loop_lag_s"]
            self.counts = arguments["counts"]
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
            viewer.transport_state(arguments["state"])
        elif method == "joined":
            viewer.joined(arguments["seconds"])
        elif method == "layer":
            viewer.switched_layer(arguments["layer"], arguments["up"])
        elif method == "closed":
            viewer.take_stats(arguments["stats"])
            viewer.gone_there()
            self._close(viewer, arguments["reason"], arguments["cause"] or "transport")

    def _lost(self) -> None:
        if self.stopped:
            return
        logger.error("%r exited: its %d viewers are dropped", self, len(self.viewers))
        for viewer in list(self.viewers.values()):
            viewer.gone_there()
            self._close(viewer, "its worker process exited", "error")
        self.pool.lost(self)

    def _close(self, viewer: WorkerViewer, reason: str, cause: str) -> None:
        task = asyncio.get_running_loop().create_task(viewer.close(reason, cause))
        self._closing.add(task)  # held until done: the loop keeps only weak references
        task.add_done_callback(self._closing.discard)

    # --- packets to the worker -------------------------------------------------------

    def take(self, track: SourceTrack) -> int:
        """A viewer here will watch `track`: its number in this worker's packets.

        The number holds until the last such viewer is `release`d, so a viewer joining
        as another leaves never holds a copy of the track nobody feeds.
        """
        if track not in self._numbers:
            self._numbers[track] = next(self.pool.track_numbers)
            self._users[track] = 0
        self._users[track] += 1
        return self._numbers[track]

    def feed(self, track: SourceTrack) -> None:
        """Send `track`'s packets here (its GOP first): a viewer's copy is ready."""
        if track in self._taps or track not in self._numbers:
            return
        number = self._numbers[track]
        header = PACKET_HEADER.pack(number)
        control = self.control
        assert control is not None

        def tap(data: bytes) -> None:
            self._send_packet(header + data)

        def clock_tap(ntp: int, rtp: int) -> None:
            control.tell("clock", track=number, ntp=ntp, rtp=rtp)

        self._taps[track] = (tap, clock_tap)
        for packet in track.gop:
            tap(packet)
        track.taps.append(tap)
        track.clock_taps.append(clock_tap)

    def _send_packet(self, message: bytes) -> None:
        """To the worker, in order. What its socket cannot take yet (a GOP handed
        over at once is up to 2,000 packets) waits here, up to a bound: past it the
        worker is behind, and loses packets rather than the main process memory."""
        if self._backlog:
            if len(self._backlog) < MAX_BACKLOG_PACKETS:
                self._backlog.append(message)
            else:
                self.packets_dropped += 1
            return
        assert self.packets is not None
        try:
            self.packets.send(message)
        except BlockingIOError:
            self._backlog.append(message)
            asyncio.get_running_loop().add_writer(self.packets, self._drain)
        except OSError:  # the worker is gone; its loss is on the way
            self.packets_dropped += 1

    def _drain(self) -> None:
        assert self.packets is not None
        while self._backlog:
            try:
                self.packets.send(self._backlog[0])
            except BlockingIOError:
                return
            except OSError:
                self.packets_dropped += 1
            self._backlog.popleft()
        asyncio.get_running_loop().remove_writer(self.packets)

    def release(self, track: SourceTrack) -> None:
        """A viewer of `track` here is gone; after the last, no more packets."""
        if track not in self._users:
            return
        self._users[track] -= 1
        if self._users[track] > 0:
            return
        del self._users[track]
        number = self._numbers.pop(track)
        if track in self._taps:
            tap, clock_tap = self._taps.pop(track)
            track.taps.remove(tap)
            track.clock_taps.remove(clock_tap)
        if self.control is not None:
            self.control.tell("forget_track", track=number)

    async def stop(self) -> None:
        """Ask the worker to end (its viewers with it), then make sure it did."""
        if self.stopped:
            return
        self.stopped = True
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
            asyncio.get_running_loop().remove_writer(self.packets)
            self.packets.close()


class WorkerPool:
    """The worker processes of a server; empty with `workers = 1`."""

    def __init__(self) -> None:
        self.workers: list[WorkerProcess] = []
        self.track_numbers = itertools.count(1)
        self._config: Config | None = None  # None: stopped
        self._replacing: set[asyncio.Task[None]] = set()
        self._restarts: Counter[int] = Counter()
        self._ended: Counter[str] = Counter()  # counts of workers gone

    async def start(self, config: Config) -> None:
        self._config = config
        self.workers = [
            WorkerProcess(index, self) for index in range(1, config.processes)
        ]
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

    def local_viewers(self, viewers: int) -> int:
        """Of a server's `viewers` (every stream's), those its main process carries:
        the pool knows its workers' viewers, the registry the streams'."""
        return viewers - sum(len(w.viewers) for w in self.workers)

    def choose(self, viewers: int) -> WorkerProcess | None:
        """For a new viewer of a server carrying `viewers`, the process with the
        fewest viewers (None: this one), of those that are keeping up."""
        best: WorkerProcess | None = None
        fewest = self.local_viewers(viewers)
        for worker in self.workers:
            if worker.loop_lag_s > ADMISSION_MAX_LAG_S:
                continue
            if len(worker.viewers) < fewest:
                best, fewest = worker, len(worker.viewers)
        return best

    def counts(self) -> Counter[str]:
        """What the workers' sockets dropped, those gone included (counters only
        go up)."""
        totals = Counter(self._ended)
        for worker in self.workers:
            totals.update(worker.counts)
            totals["packets_dropped"] += worker.packets_dropped
        return totals

    def lost(self, worker: WorkerProcess) -> None:
        """`worker` exited by itself: no more viewers for it; start another."""
        if self._config is not None and worker in self.workers:
            self.workers.remove(worker)
            self._ended.update(worker.counts)
            self._ended["packets_dropped"] += worker.packets_dropped
            if time.monotonic() - worker.started_at > STABLE_AFTER_S:
                self._restarts[worker.index] = 0  # it had been fine: retry at once
            task = asyncio.get_running_loop().create_task(self._replace(worker))
            self._replacing.add(task)
            task.add_done_callback(self._replacing.discard)

    async def _replace(self, worker: WorkerProcess) -> None:
        """Start a worker in `worker`'s place, until one starts or the server stops.

        A worker that keeps dying (a bad build, no memory) is retried ever more slowly.
        """
        await worker.stop()
        while self._config is not None:
            restarts = self._restarts[worker.index] = self._restarts[worker.index] + 1
            await asyncio.sleep(RESTART_DELAY_S * 2 ** min(restarts - 1, 6))
            if self._config is None:
                return
            replacement = WorkerProcess(worker.index, self)
            try:
                await replacement.start(self._config)
            except OSError as exc:
                logger.error("worker %d could not restart: %s", worker.index, exc)
                await replacement.stop()
                continue
            except asyncio.CancelledError:  # the server is stopping
                await replacement.stop()
                raise
            if self._config is None:  # the server stopped meanwhile
                await replacement.stop()
                return
            self.workers.append(replacement)
            logger.info("worker %d restarted (restart %d)", worker.index, restarts)
            return

    async def stop(self) -> None:
        self._config = None
        for task in self._replacing:
            task.cancel()
        await asyncio.gather(*self._replacing, return_exceptions=True)
        await asyncio.gather(*(w.stop() for w in self.workers))
        self.workers = []
