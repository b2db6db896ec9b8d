"""Limits that admission (`signaling/admission.py`) applies: how fast one client may
open sessions, and how late the event loop may run before we take no new viewer."""

from __future__ import annotations

import ipaddress
import time
from typing import TYPE_CHECKING

from aiohttp import web

from broadcast.errors import ClientError, ServiceUnavailable

if TYPE_CHECKING:
    from broadcast.session import Session

# Tracked clients at most: beyond this the longest-idle ones are forgotten.
MAX_TRACKED_CLIENTS = 10_000
# An event loop this late already delays every viewer's packets: take no new viewers.
ADMISSION_MAX_LAG_S = 0.25
# Close causes of a session that never connected that cost its client a share of the
# rate limit: ICE or DTLS failed, or the client ended it (POST then DELETE costs us
# gathering, a worker call and a keyframe request, and gives nobody a picture). Not
# the stream ending or the server stopping.
NEVER_CONNECTED = frozenset({"transport", "timeout", "client"})


class TooManyRequests(ClientError):
    status = 429


class SessionRateLimit:
    """Flood protection per client address, charged for what costs the server without
    giving anyone a picture: publish attempts, refused requests (bad offers, unknown
    streams) and sessions that never connect.

    A viewer whose session connects costs nothing, so an audience behind one address
    (an office NAT, a school, a load test) is never refused for being many; at most a
    minute's share of sessions may be still connecting at once from one address.
    """

    def __init__(self, per_minute: int) -> None:
        # A page retrying after errors opens a few a second: allow a third of the
        # minute's share at once, then a steady rate.
        self._burst = max(1.0, per_minute / 3)
        self._per_s = per_minute / 60
        self._max_connecting = per_minute
        self._buckets: dict[str, tuple[float, float]] = {}
        self._connecting: dict[str, set[Session]] = {}

    def check(self, client: str) -> None:
        """Raise 429 if `client` has used its share; charge nothing."""
        if self._tokens(client) < 1:
            raise _too_many()

    def charge(self, client: str) -> None:
        """Count one refused request or failed session against `client`."""
        if self._per_s > 0:
            self._buckets[client] = (
                max(0.0, self._tokens(client) - 1),
                time.monotonic(),
            )

    def take(self, client: str) -> None:
        """Count one attempt (a publish, a probe), or raise 429 past the share."""
        self.check(client)
        self.charge(client)

    def check_connecting(self, client: str) -> None:
        """Raise 429 if `client` already has its share of sessions still connecting."""
        sessions = self._connecting.get(client)
        if sessions is None or self._per_s <= 0:
            return
        sessions -= {s for s in sessions if s.closed or s.connected_at is not None}
        if len(sessions) >= self._max_connecting:
            raise _too_many()

    def connecting(self, client: str, session: Session) -> None:
        """Follow `session` until it connects; charge `client` if it never does."""
        if self._per_s <= 0:
            return
        self._connecting.setdefault(client, set()).add(session)

        def closed(session: Session) -> None:
            sessions = self._connecting.get(client, set())
            sessions.discard(session)
            if not sessions:
                self._connecting.pop(client, None)
            if session.connected_at is None and session.close_cause in NEVER_CONNECTED:
                self.charge(client)

        session.on_close.append(closed)

    def _tokens(self, client: str) -> float:
        """What `client` has left now; its bucket moves to the most recently seen."""
        if self._per_s <= 0:
            return self._burst
        now = time.monotonic()
        tokens, at = self._buckets.pop(client, (self._burst, now))
        if len(self._buckets) >= MAX_TRACKED_CLIENTS:
            del self._buckets[next(iter(self._buckets))]  # the least recently seen
        tokens = min(self._burst, tokens + (now - at) * self._per_s)
        self._buckets[client] = (tokens, now)
        return tokens


def _too_many() -> TooManyRequests:
    return TooManyRequests(
        "too_many_requests",
        "Too many attempts from your address; wait a second and try again.",
        {"Retry-After": "1"},
    )


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
