"""Merge keyframe requests (viewer joins, PLI, FIR) into one upstream PLI per interval."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

# Two PLIs per second per track at most: each one costs the publisher a large frame.
# No longer than the age of a GOP a joining viewer may start from (source_track's
# JOIN_GOP_MAX_AGE_S): else viewers a second apart wait out the interval for their
# keyframe (page open -> first frame p95 525 -> 341 ms for a browser presenter).
KEYFRAME_MIN_INTERVAL_S = 0.5


class KeyframeRequester:
    """Throttle keyframe requests of one source track; a request is never lost, only merged."""

    def __init__(self, send_pli: Callable[[], bool]) -> None:
        self._send_pli = send_pli
        self._last_sent = -KEYFRAME_MIN_INTERVAL_S
        self._timer: asyncio.TimerHandle | None = None
        self.pending = False
        self.sent = 0

    @property
    def last_sent(self) -> float:
        """When the last PLI went out (monotonic seconds; negative: never)."""
        return self._last_sent

    def request(self) -> None:
        """Ask for a keyframe now, or as soon as the interval allows."""
        self.pending = True
        if self._timer is not None:
            return
        wait = self._last_sent + KEYFRAME_MIN_INTERVAL_S - time.monotonic()
        if wait <= 0:
            self._fire()
        else:
            self._timer = asyncio.get_running_loop().call_later(wait, self._fire)

    def _fire(self) -> None:
        self._timer = None
        if self._send_pli():
            self._last_sent = time.monotonic()
            self.pending = False
            self.sent += 1

    def request_now(self) -> None:
        """Ask at once, whatever the interval: a new publisher has not been asked yet."""
        self._last_sent = -KEYFRAME_MIN_INTERVAL_S
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.request()

    def retry(self) -> None:
        """Send a request that could not be sent (no publisher yet) as soon as it can."""
        if self.pending:
            self.request_now()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
