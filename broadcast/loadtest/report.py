"""What `broadcast loadtest` reports: the result of a run, as JSON and for people."""

from __future__ import annotations

import dataclasses
import json
import statistics
from dataclasses import dataclass, field


@dataclass
class Spread:
    """Percentiles of a measurement over viewers (or streams), None without values."""

    p50: float | None = None
    p95: float | None = None
    p99: float | None = None
    max: float | None = None
    count: int = 0

    @classmethod
    def of(cls, values: list[float]) -> Spread:
        if not values:
            return cls()
        if len(values) == 1:
            return cls(values[0], values[0], values[0], values[0], 1)
        cuts = statistics.quantiles(values, n=100, method="inclusive")
        return cls(cuts[49], cuts[94], cuts[98], max(values), len(values))


@dataclass
class ServerLoad:
    """A server process watched over the window (`--server-pid`)."""

    pid: int
    cpu_s: float
    cpu_percent: float
    rss_bytes: int
    us_per_packet_viewer: float | None


@dataclass
class LoadtestResult:
    """What the viewers received over the measured window, and what it cost."""

    url: str
    viewers: int
    connected: int
    failed: int
    failures: dict[str, int]
    window_s: float
    window_start: float  # time.monotonic() of this process: latency matching
    packets: int
    bytes: int
    packets_per_s: float
    bytes_per_s: float
    viewers_with_media: int
    video_fps_per_viewer: float
    loss_percent: float
    keyframes: int
    join_to_keyframe_ms: Spread
    video_jitter_ms: Spread
    audio_jitter_ms: Spread
    integrity_checked: int
    integrity_failures: int
    rtcp_packets: int
    deleted: int
    cpu_s: float
    cpu_percent: float
    us_per_packet: float | None
    server: ServerLoad | None = None
    samples: list[tuple[str, float]] = field(default_factory=list)
    # With loss_percent: what was dropped, NACKed, recovered (whole run, all viewers).
    recovery: dict[str, int] | None = None

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def format_result(result: LoadtestResult) -> str:
    """The report for people."""
    r = result
    per_viewer = r.packets_per_s / r.connected if r.connected else 0.0
    k, vj, aj = r.join_to_keyframe_ms, r.video_jitter_ms, r.audio_jitter_ms
    failures = "".join(
        f"\n  {count} x {reason}" for reason, count in r.failures.items()
    )
    lines = [
        f"viewers            {r.connected} connected, {r.failed} failed{failures}",
        f"window             {r.window_s:.1f} s, {r.viewers_with_media} viewers got media",
        f"received           {r.packets_per_s:,.0f} packets/s ({per_viewer:.0f} per viewer),"
        f" {8 * r.bytes_per_s / 1e6:.1f} Mbit/s, {r.video_fps_per_viewer:.1f} video frames/s"
        " per viewer",
        f"loss               {r.loss_percent:.2f} %",
        f"join to keyframe   p50 {_ms(k.p50)}, p95 {_ms(k.p95)}, max {_ms(k.max)}"
        f" ({r.keyframes} of {r.connected} viewers saw one)",
        f"jitter             video p50 {_ms(vj.p50)}, p95 {_ms(vj.p95)};"
        f" audio p50 {_ms(aj.p50)}, p95 {_ms(aj.p95)}",
        f"integrity          {r.integrity_failures} failures in {r.integrity_checked:,}"
        " decrypted packets",
        f"sessions deleted   {r.deleted} of {r.viewers}",
        f"load generator     {r.cpu_percent:.0f} % of a core, "
        + ("-" if r.us_per_packet is None else f"{r.us_per_packet:.1f} µs per packet"),
    ]
    if r.recovery is not None:
        c = r.recovery
        lines.insert(
            4,
            f"simulated loss     {c['dropped']:,} dropped; {c['nacks_sent']:,} NACKs"
            f" for {c['nacked']:,} packets, {c['recovered']:,} recovered,"
            f" {c['given_up']:,} given up, {c['plis_sent']} PLIs",
        )
    if r.server is not None:
        s = r.server
        lines.append(
            f"server (pid {s.pid})  {s.cpu_percent:.0f} % of a core,"
            f" RSS {s.rss_bytes / 2**20:.0f} MiB, "
            + (
                "-"
                if s.us_per_packet_viewer is None
                else f"{s.us_per_packet_viewer:.1f} µs/pkt-viewer"
            )
        )
    return "\n".join(lines)
