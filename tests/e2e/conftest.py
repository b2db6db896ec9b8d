"""Browser tests share one set-up: Chromium with a fake 720p camera."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import pytest_asyncio

from tests.e2e.camera import NATIVE, write_y4m
from tests.e2e.chromium import launch_chromium

if TYPE_CHECKING:
    from playwright.async_api import Browser


@contextlib.asynccontextmanager
async def camera_chromium(directory: Path) -> AsyncIterator[Browser]:
    """Chromium whose fake camera plays a native-size picture written in `directory`."""
    camera = write_y4m(directory / "camera.y4m", *NATIVE)
    async with launch_chromium(
        extra_args=[f"--use-file-for-fake-video-capture={camera}"]
    ) as browser:
        yield browser


@pytest.fixture
async def chromium(tmp_path):
    async with camera_chromium(tmp_path) as browser:
        yield browser


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def module_chromium(tmp_path_factory):
    """One browser for a whole module (its tests run in the module's event loop):
    starting Chromium costs about a second."""
    async with camera_chromium(tmp_path_factory.mktemp("camera")) as browser:
        yield browser
