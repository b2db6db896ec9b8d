"""Browser tests share one set-up: Chromium with a fake 720p camera."""

from __future__ import annotations

import pytest

from tests.e2e.camera import NATIVE, write_y4m
from tests.e2e.chromium import launch_chromium


@pytest.fixture
async def chromium(tmp_path):  # type: ignore[no-untyped-def]
    camera = write_y4m(tmp_path / "camera.y4m", *NATIVE)
    async with launch_chromium(
        extra_args=[f"--use-file-for-fake-video-capture={camera}"]
    ) as browser:
        yield browser
