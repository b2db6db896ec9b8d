"""`broadcast serve` on 127.0.0.1 for a benchmark: a subprocess, as in production."""

from __future__ import annotations

import asyncio
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp

from bench.fanout import free_port


@asynccontextmanager
async def serving(cameras: str, workers: int | None) -> AsyncIterator[str]:
    """Run `broadcast serve` on 127.0.0.1; yield its origin."""
    media = "" if workers is None else f"<media><workers>{workers}</workers></media>"
    port = free_port()
    with tempfile.NamedTemporaryFile("w", suffix=".xml") as config:
        config.write(
            f"""<flashphoner><server><bind>127.0.0.1</bind>
            <http_port>{port}</http_port></server><auth><admin_key>k</admin_key></auth>
            {media}{cameras}</flashphoner>"""
        )
        config.flush()
        server = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "broadcast", "serve", "--config", config.name,
            "--log-level", "warning",
        )  # fmt: skip
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.terminate()
            await server.wait()


async def wait_http(origin: str) -> None:
    async with aiohttp.ClientSession() as http:
        for _ in range(200):
            try:
                async with http.get(origin + "/healthz") as response:
                    if response.status < 500:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    raise RuntimeError(f"the server at {origin} never answered")
