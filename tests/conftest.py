"""Fixtures: a real server on 127.0.0.1 and an HTTP client for it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import aioice.ice
import pytest
from aiohttp.test_utils import TestServer

from broadcast.app import create_app
from broadcast.config import Config

# BROADCAST_LOG_SCAN=1: the whole suite at DEBUG, its log searched for secrets.
pytest_plugins = ["tests.log_scan"]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "network: needs the package index (run outside the namespace)"
    )


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Test peers (aiortc) gather on 127.0.0.1 only, like the server."""
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda **_: ["127.0.0.1"])


@pytest.fixture
async def make_server() -> AsyncIterator[Callable[..., Awaitable[TestServer]]]:
    """Start servers with `Config(host="127.0.0.1", **overrides)`."""
    servers: list[TestServer] = []

    async def start(**overrides: object) -> TestServer:
        # Each test server shares one free UDP media port, as `broadcast serve` does 8081.
        options = {"media_port": 0, "workers": 1, **overrides}
        config = Config(host="127.0.0.1", **options)  # type: ignore[arg-type]
        server = TestServer(create_app(config), host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.close()


@pytest.fixture
async def server(make_server: Callable[..., Awaitable[TestServer]]) -> TestServer:
    return await make_server()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session
