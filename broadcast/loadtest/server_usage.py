"""CPU time and memory of a server and its worker processes, from /proc (Linux).

What `broadcast loadtest --server-pid` and the benchmarks charge to the server: with
`workers` it is several processes, the one started and its children.
"""

from __future__ import annotations

import os
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str]:
    """/proc/<pid>/stat from the state field on (the name may hold spaces)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def server_processes(pid: int) -> list[int]:
    """`pid` and its children: a server with `workers` is all of its processes."""
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int(_stat_fields(int(entry.name))[1]) == pid:
                    children.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue  # it exited meanwhile
    return [pid, *children]


def process_cpu_s(pid: int) -> float:
    """User + system CPU time of a server's processes, all threads."""
    total = 0.0
    for member in server_processes(pid):
        try:
            fields = _stat_fields(member)
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return total


def process_rss_bytes(pid: int) -> int:
    """Resident memory of a server's processes."""
    total = 0
    for member in server_processes(pid):
        try:
            lines = Path(f"/proc/{member}/status").read_text().splitlines()
        except OSError:
            continue
        total += sum(
            int(ln.split()[1]) * 1024 for ln in lines if ln.startswith("VmRSS:")
        )
    return total
