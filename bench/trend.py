"""What a long run leaks: RSS, fds and asyncio tasks sampled with their time, and
their slope per hour after a warm-up (least squares), for each of a server's processes.

A camera stream runs for weeks: a growth too small to see in one sample (a few KiB a
minute) is what adds up, and only a fitted slope over hours shows it.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from broadcast.loadtest.server_usage import server_processes

SECONDS_PER_HOUR = 3600.0


def process_usage(pid: int) -> dict[str, int]:
    """RSS (bytes) and open fds of one process, from /proc; {} if it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text().splitlines()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return {}
    rss = sum(int(ln.split()[1]) * 1024 for ln in status if ln.startswith("VmRSS:"))
    return {"rss_bytes": rss, "fds": fds}


@dataclass
class Trend:
    """Samples of a server (its pid and its worker children), kept and written as
    JSON lines (`path`) so that a run cut short still leaves its data."""

    pid: int
    path: Path | None = None
    samples: list[dict[str, Any]] = field(default_factory=list)
    _file: TextIO | None = None

    def sample(self, t_s: float, tasks: float) -> dict[str, Any]:
        """Record the server's processes now; `tasks` is the main process's count
        (from its /metrics: workers do not report theirs)."""
        processes = {}
        for member in server_processes(self.pid):
            usage = process_usage(member)
            if usage:
                processes[str(member)] = usage
        sample = {
            "t_s": round(t_s, 1),
            "unix_time": round(time.time(), 1),
            "rss_bytes": sum(p["rss_bytes"] for p in processes.values()),
            "fds": sum(p["fds"] for p in processes.values()),
            "tasks": int(tasks),
            "processes": processes,
        }
        self.samples.append(sample)
        if self.path is not None:
            if self._file is None:
                self._file = self.path.open("w")
            self._file.write(json.dumps(sample) + "\n")
            self._file.flush()
        return sample

    def close(self) -> None:
        if self._file is not None:
            self._file.close()

    def slopes(self, warm_up_s: float) -> dict[str, float]:
        """Growth per hour of total RSS (MiB), fds and tasks after `warm_up_s`, and
        of each process's RSS and fds (by pid); {} with fewer than 3 samples."""
        later = [s for s in self.samples if s["t_s"] >= warm_up_s]
        if len(later) < 3:
            return {}
        hours = [s["t_s"] / SECONDS_PER_HOUR for s in later]
        series: dict[str, list[float]] = {
            "rss_mib": [s["rss_bytes"] / 2**20 for s in later],
            "fds": [s["fds"] for s in later],
            "tasks": [s["tasks"] for s in later],
        }
        pids = set.intersection(*(set(s["processes"]) for s in later))
        for pid in sorted(pids):
            series[f"rss_mib[{pid}]"] = [
                s["processes"][pid]["rss_bytes"] / 2**20 for s in later
            ]
            series[f"fds[{pid}]"] = [s["processes"][pid]["fds"] for s in later]
        return {
            name: statistics.linear_regression(hours, values).slope
            if len(set(values)) > 1
            else 0.0
            for name, values in series.items()
        }

    def report(self, warm_up_s: float) -> str:
        slopes = self.slopes(warm_up_s)
        if not slopes:
            return "slopes: too few samples after the warm-up"
        later = [s for s in self.samples if s["t_s"] >= warm_up_s]
        first, last = later[0], later[-1]
        head = (
            f"slopes per hour (least squares, {len(later)} samples from"
            f" {first['t_s']:.0f} s to {last['t_s']:.0f} s, server processes"
            f" {', '.join(last['processes'])}):"
        )
        body = [
            f"  {name:<20} {value:+10.3f}/h"
            f"  ({self._value(first, name)} -> {self._value(last, name)})"
            for name, value in slopes.items()
        ]
        return "\n".join([head, *body])

    @staticmethod
    def _value(sample: dict[str, Any], name: str) -> str:
        if "[" in name:
            key, pid = name.rstrip("]").split("[")
            usage = sample["processes"].get(pid)
            if usage is None:
                return "-"
            value = usage["rss_bytes"] / 2**20 if key == "rss_mib" else usage["fds"]
        else:
            value = sample["rss_bytes"] / 2**20 if name == "rss_mib" else sample[name]
        return f"{value:.1f}" if isinstance(value, float) else str(value)
