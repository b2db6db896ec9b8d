"""`broadcast loadtest`: join many light viewers (viewer.py) to a stream on this
machine, measure what they receive over a window, and what it costs.

Media flows between real sockets, so the target must be on this machine.
"""

from __future__ import annotations

import asyncio
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
from aiortc import RTCCertificate

from broadcast.loadtest.report import LoadtestResult, ServerLoad, Spread
from broadcast.loadtest.server_usage import process_cpu_s, process_rss_bytes
from broadcast.loadtest.viewer import JoinFailed, LatencySamples, Viewer

MAX_VIEWERS = 2000
MAX_DURATION_S = 3600.0
LOOPBACK_HOSTS = {"127.0.0.1": "127.0.0.1", "localhost": "127.0.0.1", "::1": "::1"}


class LoadtestError(Exception):
    """The load test cannot run: the stream is unknown, the server unreachable..."""


def loopback_address(url: str) -> str:
    """The local address to gather ICE on for `url`; ValueError unless it is loopback."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.path.strip("/"):
        raise ValueError("must be a WHEP URL such as http://127.0.0.1:8080/whep/<id>")
    address = LOOPBACK_HOSTS.get(parts.hostname or "")
    if address is None:
        raise ValueError(
            "must point at this machine (127.0.0.1, ::1 or localhost): a load test"
            " sends real media to every viewer"
        )
    return address


def _own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _raise_open_files_limit(viewers: int) -> None:
    """A viewer holds a UDP socket and an HTTP connection: lift the soft limit if needed."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 3 * viewers + 100
    if soft != resource.RLIM_INFINITY and soft < wanted:
        limit = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))


async def run_loadtest(
    url: str,
    viewers: int,
    duration_s: float,
    *,
    ramp_s: float = 0.0,
    settle_s: float = 2.0,
    connect_timeout_s: float = 10.0,
    server_pid: int | None = None,
    latency_samples: int = 0,
    loss_percent: float = 0.0,
) -> LoadtestResult:
    """Join `viewers` over `ramp_s`, wait `settle_s`, measure `duration_s`, leave.

    The first viewer joins alone: if the server refuses it (unknown stream, wrong URL)
    the run stops with LoadtestError before the others try. `latency_samples` keeps up
    to that many (payload digest, arrival time) pairs of video packets received in the
    window, for a publisher that logged its send times (bench/fanout.py).
    """
    address = loopback_address(url)
    if not 1 <= viewers <= MAX_VIEWERS:
        raise ValueError(f"viewers must be 1-{MAX_VIEWERS}")
    if not 0 < duration_s <= MAX_DURATION_S:
        raise ValueError(f"duration must be above 0, at most {MAX_DURATION_S:g} s")
    if not 0 <= loss_percent < 100:
        raise ValueError("loss must be 0-100 %, below 100")
    for name, value in (("ramp", ramp_s), ("settle", settle_s)):
        if not 0 <= value <= MAX_DURATION_S:
            raise ValueError(f"{name} must be 0-{MAX_DURATION_S:g} s")
    if server_pid is not None and not Path(f"/proc/{server_pid}/stat").exists():
        raise LoadtestError(f"there is no process {server_pid} to watch")
    _raise_open_files_limit(viewers)
    certificate = RTCCertificate.generateCertificate()
    shared = LatencySamples(max_samples=latency_samples)
    crowd = [
        Viewer(url, address, certificate, shared, loss_percent / 100)
        for _ in range(viewers)
    ]
    failures: dict[str, int] = {}

    async def join(viewer: Viewer, delay: float) -> None:
        await asyncio.sleep(delay)
        deadline = time.monotonic() + connect_timeout_s
        try:
            await asyncio.wait_for(viewer.join(http, deadline), connect_timeout_s)
        except JoinFailed as error:
            failures[error.reason] = failures.get(error.reason, 0) + 1
            raise
        except TimeoutError:
            reason = f"connect timeout ({viewer.phase})"
            failures[reason] = failures.get(reason, 0) + 1
            raise JoinFailed(
                reason, f"not connected in {connect_timeout_s:g} s"
            ) from None
        except Exception as error:  # counted, then gather() keeps it from the others
            reason = f"{type(error).__name__}: {error}"
            failures[reason] = failures.get(reason, 0) + 1
            raise

    async with aiohttp.ClientSession() as http:
        try:
            try:
                await join(crowd[0], 0)
            except JoinFailed as error:
                raise LoadtestError(f"{url}: {error}") from None
            step = ramp_s / max(viewers - 1, 1)
            await asyncio.gather(
                *(join(v, i * step) for i, v in enumerate(crowd[1:], 1)),
                return_exceptions=True,
            )
            await asyncio.sleep(settle_s)
            window = await _Window.measure(crowd, duration_s, server_pid, shared)
        finally:
            deleted = sum(await asyncio.gather(*(v.close(http) for v in crowd)))
    result = window.result(url, crowd, failures, deleted, shared.samples)
    if loss_percent:
        totals = [v.recovery_totals() for v in crowd]
        result.recovery = {k: sum(t[k] for t in totals) for k in totals[0]}
    return result


@dataclass
class _Window:
    """Counters at the start and the end of the measured window."""

    start: float
    end: float
    before: list[tuple[int, int, int, int, int]]
    after: list[tuple[int, int, int, int, int]]
    cpu_s: float
    server_pid: int | None
    server_cpu_s: float

    @classmethod
    async def measure(
        cls,
        crowd: list[Viewer],
        duration_s: float,
        server_pid: int | None,
        shared: LatencySamples,
    ) -> _Window:
        def server_cpu() -> float:
            return process_cpu_s(server_pid) if server_pid is not None else 0.0

        before = [v.totals() for v in crowd]
        cpu, server, start = _own_cpu_s(), server_cpu(), time.monotonic()
        shared.sampling = True
        await asyncio.sleep(duration_s)
        shared.sampling = False
        window = cls(
            start,
            time.monotonic(),
            before,
            [v.totals() for v in crowd],
            _own_cpu_s() - cpu,
            server_pid,
            server_cpu() - server,
        )
        return window

    def result(
        self,
        url: str,
        crowd: list[Viewer],
        failures: dict[str, int],
        deleted: int,
        samples: list[tuple[str, float]],
    ) -> LoadtestResult:
        seconds = self.end - self.start
        deltas = [
            [b - a for a, b in zip(first, last, strict=True)]
            for first, last in zip(self.before, self.after, strict=True)
        ]
        packets, size, expected, frames = (sum(d[i] for d in deltas) for i in range(4))
        connected = [v for v in crowd if v.connected]
        with_video = sum(1 for d in deltas if d[4])
        keyframe_ms = [
            1000 * (v.keyframe_at - v.posted_at)
            for v in connected
            if v.keyframe_at is not None and v.posted_at is not None
        ]

        def jitter(kind: str) -> Spread:
            return Spread.of(
                [
                    t.jitter_ms
                    for v in connected
                    for t in v.tracks.values()
                    if t.kind == kind
                ]
            )

        server = None
        if self.server_pid is not None:
            server = ServerLoad(
                pid=self.server_pid,
                cpu_s=self.server_cpu_s,
                cpu_percent=100 * self.server_cpu_s / seconds,
                rss_bytes=process_rss_bytes(self.server_pid),
                us_per_packet_viewer=1e6 * self.server_cpu_s / packets
                if packets
                else None,
            )
        return LoadtestResult(
            url=url,
            viewers=len(crowd),
            connected=len(connected),
            failed=len(crowd) - len(connected),
            failures=failures,
            window_s=seconds,
            window_start=self.start,
            packets=packets,
            bytes=size,
            packets_per_s=packets / seconds,
            bytes_per_s=size / seconds,
            viewers_with_media=sum(1 for d in deltas if d[0]),
            video_fps_per_viewer=frames / seconds / with_video if with_video else 0.0,
            loss_percent=100 * max(expected - packets, 0) / expected
            if expected
            else 0.0,
            keyframes=len(keyframe_ms),
            join_to_keyframe_ms=Spread.of(keyframe_ms),
            video_jitter_ms=jitter("video"),
            audio_jitter_ms=jitter("audio"),
            integrity_checked=sum(v.checked for v in crowd),
            integrity_failures=sum(v.integrity_failures for v in crowd),
            rtcp_packets=sum(v.rtcp_packets for v in crowd),
            deleted=deleted,
            cpu_s=self.cpu_s,
            cpu_percent=100 * self.cpu_s / seconds,
            us_per_packet=1e6 * self.cpu_s / packets if packets else None,
            server=server,
            samples=samples,
        )
