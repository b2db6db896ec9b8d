"""Recording when things go wrong, with real `broadcast serve` processes: a server
killed with SIGKILL leaves a file that plays up to within 2 s of the kill, and a disk
that fills (a tiny tmpfs in a mount namespace of the server's own) fails the recording
with a reason while viewers keep watching and the server keeps answering."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import pytest

from tests.cluster_nodes import ADMIN, start_node
from tests.peers import publish, wait_for, watch
from tests.test_recording import read_file

# How much of a recording a SIGKILL may cost (the bound): fragments of 1 s.
MAX_LOST_S = 2.0


def recording_settings(directory: Path) -> str:
    return f"<recording><auto>true</auto><dir>{directory}</dir></recording>"


@pytest.mark.parametrize(
    ("codec", "extension"), [("video/VP8", "webm"), ("video/H264", "mp4")]
)
async def test_sigkill_leaves_a_file_that_plays_to_near_the_kill(
    tmp_path, codec, extension
):
    directory = tmp_path / "recordings"
    node = await start_node(
        tmp_path, None, "solo", settings=recording_settings(directory)
    )
    async with aiohttp.ClientSession() as http:
        publisher = await publish(http, f"{node.url}/whip/s", video=codec)
        try:
            await wait_for(
                lambda: any(directory.glob(f"s-*.{extension}")),
                timeout=15,
                message="no recording started",
            )
            started = time.monotonic()
            await asyncio.sleep(6)
            node.kill()
            recorded_s = time.monotonic() - started
            await node.process.wait()
        finally:
            await publisher.pc.close()
            await node.stop()
    (path,) = directory.glob(f"s-*.{extension}")
    found = read_file(path)
    print(f"SIGKILL after {recorded_s:.2f} s: {found['duration']:.2f} s kept")
    assert found["duration"] >= recorded_s - MAX_LOST_S, (found, recorded_s)
    assert found["keyframe_first"] and found["monotonic"] and found["audio"]
    assert found["decoded"] >= (recorded_s - MAX_LOST_S) * 20


async def stream_info(http, node) -> dict:
    async with http.get(f"{node.url}/api/streams/s", headers=ADMIN) as response:
        return await response.json()


async def test_a_full_disk_fails_the_recording_and_nothing_else(tmp_path):
    directory = tmp_path / "recordings"
    directory.mkdir()
    # The server sees a 300 KB tmpfs at `directory`; nobody else does.
    tiny_disk = (
        "unshare",
        "-m",
        "--",
        "sh",
        "-c",
        'mount -t tmpfs -o size=300k tmpfs "$0" && exec "$@"',
        str(directory),
    )
    node = await start_node(
        tmp_path, None, "solo", settings=recording_settings(directory), prefix=tiny_disk
    )
    async with aiohttp.ClientSession() as http:
        publisher = await publish(http, f"{node.url}/whip/s")
        viewer = await watch(http, f"{node.url}/whep/s")
        try:
            await wait_for(lambda: len(viewer.frames.get("video", [])) > 10, timeout=15)
            recording: dict = {}

            async def failed() -> bool:
                recording.update((await stream_info(http, node))["recording"] or {})
                return recording.get("state") == "failed"

            for _ in range(600):
                if await failed():
                    break
                await asyncio.sleep(0.1)
            assert recording == {**recording, "state": "failed", "reason": "disk full"}
            frames_at_failure = len(viewer.frames["video"])
            await asyncio.sleep(2)
            assert len(viewer.frames["video"]) >= frames_at_failure + 30
            async with http.get(f"{node.url}/healthz") as response:
                assert response.status == 200
            async with http.get(f"{node.url}/metrics", headers=ADMIN) as response:
                metrics = await response.text()
            assert 'broadcast_recording_files_total{event="failed"} 1.0' in metrics
            assert (await stream_info(http, node))["state"] == "live"
            # The file, as far as it got, is in the server's view of the directory.
            in_namespace = Path(f"/proc/{node.process.pid}/root") / str(
                directory
            ).lstrip("/")
            (path,) = in_namespace.glob("s-*.webm")
            assert read_file(path)["duration"] > 1
        finally:
            await publisher.pc.close()
            await viewer.pc.close()
            await node.stop()
    assert "disk full" in node.log_text()
