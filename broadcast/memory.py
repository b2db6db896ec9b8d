"""Give the memory of ended sessions back to the system.

Each WebRTC session allocates OpenSSL (DTLS) and libsrtp state in C, held by aiortc
objects in reference cycles: it is freed only when the cyclic garbage collector runs,
and then glibc keeps the freed pages in its heap. Viewers joining and vanishing grew RSS
by ~15 MB per 100 viewers, nearly all of it garbage or free heap, so a long-running
server only ever grew. After sessions end we collect cycles and `malloc_trim(0)` (glibc;
elsewhere only the collection). A full collection takes a few milliseconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import logging
import time
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from broadcast.web_keys import REGISTRY

logger = logging.getLogger(__name__)

# At most one trim per interval, and only after sessions ended: it walks the heap.
TRIM_INTERVAL_S = 10.0


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


async def release_while(sessions_ended: Callable[[], int]) -> None:
    """Every TRIM_INTERVAL_S, release memory if `sessions_ended()` has grown."""
    trim = _malloc_trim()
    trimmed_at = 0
    while True:
        await asyncio.sleep(TRIM_INTERVAL_S)
        ended = sessions_ended()
        if ended != trimmed_at:
            trimmed_at = ended
            started = time.perf_counter()
            gc.collect()
            if trim is not None:
                trim(0)
            logger.debug(
                "memory of ended sessions released in %.1f ms",
                1000 * (time.perf_counter() - started),
            )


async def trim_after_sessions_end(app: web.Application) -> AsyncIterator[None]:
    """aiohttp cleanup context: release memory after sessions have ended."""
    registry = app[REGISTRY]
    task = asyncio.create_task(release_while(registry.sessions_ended.total))
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
