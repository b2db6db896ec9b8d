"""What viewers actually see: getStats summaries their pages report over `/ws`.

A viewer page sends `{"type": "quality", "stream": id, "session": <WHEP session id>,
"width", "height", "fps", "freezes", "jitter_buffer_ms", "loss_percent",
"candidate": "host|srflx|prflx|relay", "tcp": bool}` every few seconds. We keep the
last one on the viewer (admin API) and fold each into Prometheus histograms.
"""

from __future__ import annotations

import math
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram

CANDIDATE_TYPES = ("host", "srflx", "prflx", "relay")
NUMBERS = {  # field: (lowest, highest) a real browser can report
    "width": (0, 16384),
    "height": (0, 16384),
    "fps": (0, 240),
    "freezes": (0, 1_000_000),
    "jitter_buffer_ms": (0, 60_000),
    "loss_percent": (0, 100),
}


def clean_report(raw: dict[str, Any]) -> dict[str, Any] | None:
    """The report's fields, checked and clamped; None when it is not a report."""
    report: dict[str, Any] = {}
    for name, (low, high) in NUMBERS.items():
        value = raw.get(name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        # Huge ints overflow isfinite(); nothing a browser reports is that big.
        if isinstance(value, int) and abs(value) > 10**12:
            return None
        if not math.isfinite(value):
            return None
        report[name] = min(max(value, low), high)
    candidate = raw.get("candidate")
    report["candidate"] = candidate if candidate in CANDIDATE_TYPES else "unknown"
    report["tcp"] = raw.get("tcp") is True
    return report


class ViewerQuality:
    """Prometheus histograms of what viewers report (bounded labels only)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.fps = Histogram(
            "broadcast_viewer_fps",
            "Frames per second viewers render",
            buckets=(1, 5, 10, 15, 20, 25, 30, 50, 60),
            registry=registry,
        )
        self.height = Histogram(
            "broadcast_viewer_frame_height_pixels",
            "Height of the picture viewers receive",
            buckets=(180, 240, 360, 480, 540, 720, 1080, 1440, 2160),
            registry=registry,
        )
        self.jitter_buffer = Histogram(
            "broadcast_viewer_jitter_buffer_seconds",
            "Viewers' jitter-buffer delay",
            buckets=(0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1, 2),
            registry=registry,
        )
        self.loss = Histogram(
            "broadcast_viewer_loss_ratio",
            "Packet loss viewers see",
            buckets=(0, 0.001, 0.01, 0.02, 0.05, 0.1, 0.2),
            registry=registry,
        )
        self.reports = Counter(
            "broadcast_viewer_quality_reports",
            "Quality reports from viewer pages, by ICE candidate type",
            ["candidate", "transport"],
            registry=registry,
        )

    def observe(self, report: dict[str, Any]) -> None:
        self.fps.observe(report["fps"])
        self.height.observe(report["height"])
        self.jitter_buffer.observe(report["jitter_buffer_ms"] / 1000)
        self.loss.observe(report["loss_percent"] / 100)
        transport = "tcp" if report["tcp"] else "udp"
        self.reports.labels(report["candidate"], transport).inc()
