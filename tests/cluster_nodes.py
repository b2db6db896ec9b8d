"""Server processes for the tests: real `broadcast serve` processes on 127.0.0.1.

Each node is a process of its own with its own HTTP and media ports, joined to the
test's Redis (as origin and edges are on separate machines), or alone: a server a test
may SIGKILL, or start inside a namespace of its own (`prefix`).
"""

from __future__ import annotations

import asyncio
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from tests.test_server import free_port

ADMIN_KEY = "cluster-admin-key"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


@dataclass
class Node:
    """One `broadcast serve` process of the cluster."""

    name: str
    role: str
    http_port: int
    process: asyncio.subprocess.Process
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def kill(self) -> None:
        """SIGKILL: the machine is gone, nothing is cleaned up."""
        if self.process.returncode is None:
            self.process.kill()

    async def stop(self) -> None:
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), 15)
            except TimeoutError:
                self.process.kill()
        await self.process.wait()

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


async def start_node(
    directory: Path,
    redis_url: str | None,
    name: str,
    role: str = "both",
    *,
    workers: int = 1,
    settings: str = "",
    prefix: tuple[str, ...] = (),
) -> Node:
    """Start a node (a cluster's when `redis_url` is given) and wait until it answers
    `/healthz`; `prefix` runs it through a command (`unshare -m ...`)."""
    http_port, media_port = free_port(), free_port()
    config = directory / f"{name}.xml"
    config.write_text(
        f"""<flashphoner><server><bind>127.0.0.1</bind>
        <http_port>{http_port}</http_port></server>
        <media><media_port>{media_port}</media_port><workers>{workers}</workers>
        </media><auth><admin_key>{ADMIN_KEY}</admin_key></auth>
        {settings}</flashphoner>"""
    )
    log = directory / f"{name}.log"
    url = f"http://127.0.0.1:{http_port}"
    cluster = (
        ("--cluster", redis_url, "--node-url", url, "--node-id", name, "--role", role)
        if redis_url is not None
        else ()
    )
    with log.open("wb") as output:
        process = await asyncio.create_subprocess_exec(
            *prefix,
            sys.executable,
            "-m",
            "broadcast",
            "serve",
            "--config",
            str(config),
            *cluster,
            stdout=output,
            stderr=output,
        )
    node = Node(name, role, http_port, process, log)
    async with aiohttp.ClientSession() as http:
        for _ in range(200):
            if process.returncode is not None:
                raise AssertionError(f"{name} exited:\n{node.log_text()}")
            try:
                async with http.get(f"{url}/healthz") as response:
                    if response.status == 200:
                        return node
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.1)
    node.kill()
    raise AssertionError(f"{name} never answered:\n{node.log_text()}")
