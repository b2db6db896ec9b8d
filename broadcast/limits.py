"""Admission: how fast one client may open sessions, and when the server says no."""

from __future__ import annotations

import ipaddress
import time

from aiohttp import web

from broadcast.errors import ClientError, ServiceUnavailable

# Tracked clients at most: beyond this the longest-idle ones are forgotten.
MAX_TRACKED_CLIENTS = 10_000
# An event loop this late already delays every viewer's packets: take no new viewers.
ADMISSION_MAX_LAG_S = 0.25


class TooManyRequests(ClientError):
    status = 429


class SessionRateLimit:
    """A token bucket per client address for session creation (WHIP and WHEP POSTs)."""

    def __init__(self, per_minute: int) -> None:
        # A page retrying after errors opens a few a second: allow a third of the
        # minute's share at once, then a steady rate.
        self._burst = max(1.0, per_minute / 3)
        self._per_s = per_minute / 60
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, client: str) -> None:
        """Count one session for `client`, or raise 429 when it has used its share."""
        if self._per_s <= 0:
            return
        now = time.monotonic()
        tokens, at = self._buckets.pop(client, (self._burst, now))
        tokens = min(self._burst, tokens + (now - at) * self._per_s)
        if len(self._buckets) >= MAX_TRACKED_CLIENTS:
            del self._buckets[next(iter(self._buckets))]  # the least recently seen
        if tokens < 1:
            self._buckets[client] = (tokens, now)
            raise TooManyRequests(
                "too_many_requests",
                "Too many sessions from your address; wait a second.",
                {"Retry-After": "1"},
            )
        self._buckets[client] = (tokens - 1, now)


def client_address(request: web.Request) -> str:
    """Who to count a session against: the address, or its /64 for IPv6, where one
    subscriber holds a whole /64 and could otherwise take a fresh address per request."""
    remote = request.remote or ""
    try:
        address = ipaddress.ip_address(remote)
    except ValueError:
        return remote
    if address.version == 6 and not address.ipv4_mapped:
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address.ipv4_mapped or address) if address.version == 6 else remote


def check_event_loop(lag_s: float) -> None:
    """Refuse a new viewer while the server is behind, rather than slow everyone."""
    if lag_s > ADMISSION_MAX_LAG_S:
        raise ServiceUnavailable(
            "server_busy",
            "The server is at capacity right now; try again in a few seconds.",
            {"Retry-After": "5"},
        )
