"""Every benchmark in bench/ starts, runs a few seconds with its smallest settings and
prints its result: a benchmark nobody can run (the soak wrote its config template
unformatted for weeks) measures nothing."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.peers import MovingPicture

BENCH = Path(__file__).resolve().parent.parent / "bench"
RUN_TIMEOUT_S = 100

# Each runnable script: its smallest run and a line its result prints.
SMOKE_RUNS = {
    # 30 s (the shortest it takes) is enough for the publisher's sequence numbers and
    # timestamps to wrap; 20 % loss so that 2 viewers send NACKs and PLIs.
    "soak.py": (
        ["--minutes", "0.5", "--viewers", "2", "--sample-s", "5", "--loss", "20"],
        r"all criteria pass",
    ),
    "fanout.py": (
        ["--steps", "0,1", "--duration", "1", "--settle", "0", "--clip-s", "2"],
        r"µs/pkt-viewer, MediaRelay ÷ broadcast\n\s+1\s+[\d.]+x",
    ),
    "camera.py": (
        ["--duration", "1", "--width", "320", "--height", "240", "--audio", "pcma"],
        r"camera 320x240 H\.264 \+ pcma: server CPU [\d.]+ % of a core",
    ),
    "lossy_viewer.py": (
        ["--trials", "1", "--seconds", "1", "--codecs", "H264"],
        r"H264 at 5 % loss: lossy viewer decoded [\d.]+ % of a clean viewer's frames",
    ),
    # Two edges (one is killed); 1 and 2 viewers via the origin.
    "cluster.py": (
        "--edges 2 --viewers 1,2 --duration 1 --settle 0 --clip-s 2 --decoders 1"
        " --redirects 10 --kills 1".split(),
        r"origin CPU per edge: -?[\d.]+ % of a core(.|\n)*"
        r"origin CPU per joined viewer: -?[\d.]+ % of a core(.|\n)*"
        r"first decoded frame p50 \d+ ms(.|\n)*"
        r"re-route after SIGKILL: p50 [\d.]+ s",
    ),
    "recording.py": (
        ["--steps", "0,1", "--duration", "1", "--settle", "0", "--clip-s", "2"],
        r"recording one 720p H\.264 stream: -?[\d.]+ % of a core(.|\n)*"
        r"file \S+\.mp4: [\d.]+ s of [\d.]+ s recorded",
    ),
    "simulcast.py": (
        ["--viewers", "1", "--duration", "1", "--settle", "0"],
        r"high x +1: cpu +[\d.]+ %(.|\n)*auto x +1: cpu +[\d.]+ %, +[\d.]+ pkt/s, +"
        r"[\d.]+ µs/pkt-viewer",
    ),
    "page_open.py": (
        ["--openings", "1"],
        r"browser presenter: page open -> first frame p50 \d+ ms(.|\n)*"
        r"camera: page open -> first frame p50 \d+ ms",
    ),
}
# Runnable, but started by another benchmark rather than by hand.
STARTED_BY = {"mediarelay_server.py": "fanout.py"}


def test_every_runnable_benchmark_has_a_smoke_run() -> None:
    runnable = {
        path.name
        for path in BENCH.glob("*.py")
        if 'if __name__ == "__main__":' in path.read_text()
    }
    assert runnable - set(STARTED_BY) == set(SMOKE_RUNS), (
        "give each runnable script in bench/ a smoke run in SMOKE_RUNS"
    )


@pytest.mark.parametrize("script", sorted(SMOKE_RUNS))
def test_benchmark_runs_and_prints_its_result(script: str) -> None:
    arguments, result = SMOKE_RUNS[script]
    started = time.monotonic()
    try:
        run = subprocess.run(
            [sys.executable, str(BENCH / script), *arguments],
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired as expired:
        tail = _text(expired.stdout) + _text(expired.stderr)
        pytest.fail(f"{script} still running after {RUN_TIMEOUT_S} s:\n{tail[-3000:]}")
    print(f"{script}: {time.monotonic() - started:.1f} s")
    output = run.stdout + run.stderr
    assert run.returncode == 0, f"{script} exited {run.returncode}:\n{output[-3000:]}"
    assert re.search(result, run.stdout), (
        f"{script} printed no result:\n{output[-3000:]}"
    )


def _text(output: str | bytes | None) -> str:
    """TimeoutExpired keeps bytes even when the run asked for text."""
    if isinstance(output, bytes):
        return output.decode(errors="replace")
    return output or ""


async def test_soak_publisher_draws_frames_past_the_36th_minute() -> None:
    """The soak's picture ran into a uint16 overflow at frame 65,536: aiortc's sender
    task died with it and the viewers got audio only for the rest of the soak."""
    picture = MovingPicture()
    frames = 65_535
    picture._start = time.time() - frames / 30  # frame 65,536 is due now
    picture._pts = frames * 3000
    frame = await asyncio.wait_for(picture.recv(), 5)
    assert frame.pts == 65_536 * 3000
