"""Admission: whether a WHIP publish, a WHEP watch or a connectivity probe may go ahead.

One decision in one place, asked once per request (`async with admission.watch(request)
as admitted:`), with its checks in the order clients see: who asks (the per-address
rate, stream id; a publisher's key before its offer, a viewer's token after it, so that
timing does not tell a private stream from a missing one), the offer, then what the
server can take (the stream, event-loop lag, capacity, the client's sessions still
connecting: 429 there comes before a 400 for no codec in common). The offer is read
here, between the two, so that from the checks on the server's state to the session
joining nothing awaits but an on-demand camera starting, after which they run again.
A refusal is a domain error (`errors.py`) that the HTTP layer answers.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from aiohttp import web

from broadcast.auth import check_publish_key, may_view, view_token
from broadcast.errors import ClientError, Conflict, NotFound, ServiceUnavailable
from broadcast.limits import SessionRateLimit, check_event_loop, client_address
from broadcast.registry import StreamRegistry, check_stream_id, new_stream_id
from broadcast.session import Session
from broadcast.signaling.http import SDP_TYPE, read_body
from broadcast.signaling.sdp import Offer, parse_offer
from broadcast.source import SourceUnavailable
from broadcast.stream import ENDED, Stream

S = TypeVar("S", bound=Stream | None)


@dataclass(frozen=True)
class Admitted(Generic[S]):
    """A request let through: who asked, for which stream, with which offer."""

    client: str
    stream_id: str
    offer: Offer
    stream: S  # the watched stream; a publisher's, if it already exists
    rate: SessionRateLimit = field(repr=False)

    def follow(self, session: Session) -> None:
        """Charge the client for `session` if it never connects."""
        self.rate.connecting(self.client, session)


class Admission:
    """The one place that says yes or no to a new session, and counts what it cost."""

    def __init__(self, registry: StreamRegistry, loop_lag_s: Callable[[], float]):
        self.registry = registry
        self.config = registry.config
        self.rate = SessionRateLimit(self.config.sessions_per_client_per_minute)
        self._loop_lag_s = loop_lag_s

    @contextlib.asynccontextmanager
    async def publish(
        self, request: web.Request
    ) -> AsyncIterator[Admitted[Stream | None]]:
        """`POST /whip/<id>`, or `POST /whip` for a server-chosen id: every attempt
        counts against its client's rate."""
        named = "stream_id" in request.match_info
        stream_id = (
            check_stream_id(request.match_info["stream_id"])
            if named
            else new_stream_id()
        )
        check_publish_key(request, self.config, stream_id if named else None)
        client = client_address(request)
        self.rate.take(client)
        offer = await self._offer(request)
        existing = self.registry.get(stream_id)
        if existing is not None and existing.source is not None:
            raise Conflict(
                "stream_busy", f"Stream '{stream_id}' already has a publisher."
            )
        if existing is None:
            self._check_room_for_stream()
        self.rate.check_connecting(client)
        yield Admitted(client, stream_id, offer, existing, self.rate)

    @contextlib.asynccontextmanager
    async def watch(self, request: web.Request) -> AsyncIterator[Admitted[Stream]]:
        """`POST /whep/<id>`: 404 while no such stream is known.

        A refusal, here or later in the request, costs its client (probing for stream
        ids, offers we cannot answer), unless it is our state (503); a viewer that
        connects costs nothing.
        """
        client = client_address(request)
        self.rate.check(client)
        try:
            stream_id = check_stream_id(request.match_info["stream_id"])
            offer = await self._offer(request)
            # A private stream without a valid token answers exactly as a missing one,
            # and the token is checked either way so that timing does not tell them
            # apart.
            allowed = may_view(self.config, stream_id, view_token(request))
            stream = self.registry.get(stream_id)
            if stream is None or not allowed:
                raise NotFound(
                    "stream_not_found", f"There is no stream '{stream_id}' (yet)."
                )
            check_event_loop(self._loop_lag_s())
            self._check_room_for_viewer(stream)
            if await _source_ready(stream):  # others may have joined meanwhile
                check_event_loop(self._loop_lag_s())
                self._check_room_for_viewer(stream)
            self.rate.check_connecting(client)
            yield Admitted(client, stream_id, offer, stream, self.rate)
        except ServiceUnavailable:
            raise  # our state, not the client's doing
        except ClientError:
            self.rate.charge(client)
            raise

    @contextlib.asynccontextmanager
    async def probe(
        self, request: web.Request, name: str
    ) -> AsyncIterator[Admitted[None]]:
        """`POST /check/ice`: a probe counts against its client's rate."""
        client = client_address(request)
        self.rate.take(client)
        offer = await self._offer(request)
        self.rate.check_connecting(client)
        yield Admitted(client, name, offer, None, self.rate)

    async def _offer(self, request: web.Request) -> Offer:
        return parse_offer(
            await read_body(request, SDP_TYPE, self.config.max_sdp_bytes)
        )

    def _check_room_for_stream(self) -> None:
        """Refuse a new stream past `max_streams`; those already live are untouched."""
        limit = self.config.max_streams
        if limit and len(self.registry.streams) >= limit:
            raise _full(f"This server carries its maximum of {limit} streams.")

    def _check_room_for_viewer(self, stream: Stream) -> None:
        """Refuse a viewer past the per-stream or the total limit."""
        per_stream = self.config.max_viewers_per_stream
        if per_stream and len(stream.viewers) >= per_stream:
            raise _full(
                f"Stream '{stream.id}' has its maximum of {per_stream} viewers."
            )
        total = self.config.max_viewers_total
        if total and self.registry.viewer_count() >= total:
            raise _full(f"This server has its maximum of {total} viewers.")


async def _source_ready(stream: Stream) -> bool:
    """A viewer of an on-demand camera waits for it; an unreachable one is a 503.
    True if it may have waited (what was checked before may have changed)."""
    if stream.source is None:
        return False
    try:
        await stream.source.wait_ready()
    except SourceUnavailable as error:
        if stream.state != ENDED:
            raise ServiceUnavailable(
                error.code, f"{error}.", {"Retry-After": "5"}
            ) from None
    if stream.state == ENDED:  # removed while we waited: it would never close us
        raise ServiceUnavailable(
            "stream_ended",
            f"Stream '{stream.id}' ended; try again.",
            {"Retry-After": "1"},
        )
    return True


def _full(message: str) -> ServiceUnavailable:
    # A full server is a temporary state: tell clients when to try again (RFC 9110 §10.2.3).
    return ServiceUnavailable("server_full", message, {"Retry-After": "10"})


ADMISSION = web.AppKey("admission", Admission)
