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

With `<hooks>` `publish_auth` / `play_auth`, the operator's back end is asked in place
of our keys and view tokens (broadcast/hooks/auth.py), at the same point; an edge's
relay is ours and never asked.

In a cluster a request may be answered with a 307 to another node. Clients drop
`Authorization` on a redirect to another origin (the Fetch standard, aiohttp, requests),
so what admitted the request travels in the `Location` instead: a viewer's own view
token as `?token=`, and for a publisher (whose key must not end up in URLs) a ticket
signed with the cluster's secret, good for that stream for a minute, that the next node
takes in place of the key and the back end's `publish_auth` (asked here already).
"""

from __future__ import annotations

import contextlib
import hmac
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from aiohttp import web

from broadcast import tokens
from broadcast.auth import bearer_token, check_publish_key, may_view, view_token
from broadcast.cluster.membership import Membership
from broadcast.cluster.placement import place_publisher, place_viewer
from broadcast.errors import (
    ClientError,
    Conflict,
    Forbidden,
    NotFound,
    ServiceUnavailable,
    TemporaryRedirect,
)
from broadcast.hooks import Hooks
from broadcast.limits import SessionRateLimit, check_event_loop, client_address
from broadcast.registry import StreamRegistry, check_stream_id, new_stream_id
from broadcast.session import Session
from broadcast.signaling.http import SDP_TYPE, read_body
from broadcast.signaling.sdp import Offer, parse_offer
from broadcast.source import Source, SourceUnavailable
from broadcast.stream import ENDED, LIVE, Stream

S = TypeVar("S", bound=Stream | None)

# An edge pulling a stream from its owner names itself, and proves it is one of ours.
RELAY_HEADER = "Broadcast-Relay"
SECRET_HEADER = "Broadcast-Cluster-Secret"
# A redirected publisher's ticket (in `?token=`): long enough to follow one 307.
TICKET_TTL_S = 60
# In a viewer's Location: a full node sent it on (placement.py: it goes no further).
OVERFLOW_PARAM = "overflow"


@dataclass(frozen=True)
class Admitted(Generic[S]):
    """A request let through: who asked, for which stream, with which offer."""

    client: str
    stream_id: str
    offer: Offer
    stream: S  # the watched stream; a publisher's, if it already exists
    rate: SessionRateLimit = field(repr=False)
    relay: bool = False  # an edge of our cluster pulling the stream: not a viewer
    # A publisher's stream this node relays: that pull gives way (it is ours now).
    takes_over: Source | None = None

    def follow(self, session: Session) -> None:
        """Charge the client for `session` if it never connects."""
        self.rate.connecting(self.client, session)


class Admission:
    """The one place that says yes or no to a new session, and counts what it cost."""

    def __init__(
        self,
        registry: StreamRegistry,
        loop_lag_s: Callable[[], float],
        cluster: Membership | None = None,
        hooks: Hooks | None = None,
    ):
        self.registry = registry
        self.hooks = hooks
        self.config = registry.config
        self.rate = SessionRateLimit(self.config.sessions_per_client_per_minute)
        self._loop_lag_s = loop_lag_s
        self.cluster = cluster
        # Makes the stream an edge pulls from its owner: set by the app.
        self.start_relay: Callable[[str], Stream] | None = None

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
        ticketed = named and self._has_ticket(request, stream_id)
        asks = not ticketed and self.hooks is not None and self.hooks.asks("publish")
        if not asks and not ticketed:
            check_publish_key(request, self.config, stream_id if named else None)
        client = client_address(request)
        self.rate.take(client)
        if asks:
            assert self.hooks is not None
            token = bearer_token(request)
            await self.hooks.check("publish", request, stream_id, client, token)
        offer = await self._offer(request)
        existing = self.registry.get(stream_id)
        # A stream relayed here is published nowhere else once we claim it below.
        relayed = existing is not None and _relayed(existing)
        takes_over = existing.source if existing is not None and relayed else None
        if existing is not None and existing.source is not None and not relayed:
            raise Conflict(
                "stream_busy", f"Stream '{stream_id}' already has a publisher."
            )
        if existing is None:
            self._check_room_for_stream()
        if self.cluster is not None:
            placement = await place_publisher(self.cluster, stream_id)
            if placement.redirect_to is not None:
                raise self._redirect_publisher(
                    placement.redirect_to, request, stream_id, ticketed or asks
                )
        if (
            existing is not None
            and takes_over is not None
            and not self._orphaned(existing)
        ):
            raise Conflict(
                "stream_busy",
                f"Stream '{stream_id}' is published on another node of the cluster "
                "(relayed here), or where it is cannot be known now (Redis).",
            )
        self.rate.check_connecting(client)
        yield Admitted(
            client, stream_id, offer, existing, self.rate, takes_over=takes_over
        )

    @contextlib.asynccontextmanager
    async def watch(self, request: web.Request) -> AsyncIterator[Admitted[Stream]]:
        """`POST /whep/<id>`: 404 while no such stream is known.

        A refusal, here or later in the request, costs its client (probing for stream
        ids, offers we cannot answer), unless it is our state (503); a viewer that
        connects costs nothing.
        """
        client = client_address(request)
        relay = self._is_relay(request)
        if relay:
            async with self._relay(request, client) as admitted:
                yield admitted
            return
        self.rate.check(client)
        try:
            stream_id = check_stream_id(request.match_info["stream_id"])
            offer = await self._offer(request)
            # A private stream without a valid token answers exactly as a missing one,
            # and the token is checked either way so that timing does not tell them
            # apart.
            allowed = await self._may_view(request, stream_id, client)
            stream = self.registry.get(stream_id)
            if allowed and self.cluster is not None:
                stream = await self._place(request, stream_id, stream)
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
        except (ServiceUnavailable, TemporaryRedirect):
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

    async def _place(
        self, request: web.Request, stream_id: str, stream: Stream | None
    ) -> Stream | None:
        """In a cluster: this node's viewer (the stream pulled here first if need
        be), or a 307 to the node that takes it."""
        assert self.cluster is not None
        placement = await place_viewer(
            self.cluster,
            stream_id,
            stream is not None,
            self._has_room(stream),
            overflowed=request.query.get(OVERFLOW_PARAM) == "1",
        )
        if placement is None:
            return None
        if placement.redirect_to is not None:
            query = {OVERFLOW_PARAM: "1"} if placement.overflow else {}
            bearer = bearer_token(request)
            if bearer and not request.query.get("token") and self._needs_view_token():
                query["token"] = bearer  # the view token, where the next node reads it
            raise _redirect(placement.redirect_to, request, "viewer", query)
        if placement.pull_from is not None and self.start_relay is not None:
            return self.start_relay(stream_id)
        return stream

    def _orphaned(self, relayed: Stream) -> bool:
        """A stream relayed here whose origin is gone: its publisher may come back
        here. Not while the relay plays (its origin publishes it), nor while Redis is
        away (who owns it cannot be known: two publishers would be the result)."""
        cluster = self.cluster
        return cluster is not None and cluster.redis_up and relayed.state != LIVE

    def _needs_view_token(self) -> bool:
        """Whether what admits a viewer is its token (else a Bearer it sends, a publish
        key reused, say, has no business in a URL)."""
        hooked = self.hooks is not None and self.hooks.asks("play")
        return hooked or bool(self.config.private_viewing and self.config.token_secret)

    async def _may_view(
        self, request: web.Request, stream_id: str, client: str
    ) -> bool:
        """Our view tokens say, or the back end's play_auth (its refusal raised)."""
        token = view_token(request)
        if self.hooks is None or not self.hooks.asks("play"):
            return may_view(self.config, stream_id, token)
        await self.hooks.check("play", request, stream_id, client, token)
        return True

    def _redirect_publisher(
        self, node_url: str, request: web.Request, stream_id: str, vouched: bool
    ) -> TemporaryRedirect:
        """To `node_url`, with a ticket standing for the check made here; a server-
        chosen id goes along in the path (the ticket is for that stream).

        A ticket that came with the request goes on as it is (a new one each time
        would keep a leaked ticket good for ever). Where nothing was checked (this
        node has no keys or token secret and asks no back end) there is no ticket: the
        next node checks for itself, or an open edge would open the origin."""
        assert self.cluster is not None
        query = {}
        enforced = vouched or bool(self.config.publish_keys or self.config.token_secret)
        key = self.cluster.secret
        if self._has_ticket(request, stream_id):
            query["token"] = request.query["token"]
        elif enforced and key is not None:
            query["token"] = tokens.mint(key, tokens.PUBLISH, stream_id, TICKET_TTL_S)
        return _redirect(node_url, request, "publisher", query, f"/whip/{stream_id}")

    def _has_ticket(self, request: web.Request, stream_id: str) -> bool:
        """Another node of the cluster admitted this publisher and sent it here."""
        key = self.cluster.secret if self.cluster is not None else None
        return key is not None and tokens.verify(
            key, request.query.get("token"), tokens.PUBLISH, stream_id
        )

    def _is_relay(self, request: web.Request) -> bool:
        return RELAY_HEADER in request.headers

    @contextlib.asynccontextmanager
    async def _relay(
        self, request: web.Request, client: str
    ) -> AsyncIterator[Admitted[Stream]]:
        """An edge of our cluster pulls a stream it has viewers for: the cluster's
        secret admits it, without view tokens or viewer limits, never redirected."""
        secret = self.cluster.secret if self.cluster is not None else None
        presented = request.headers.get(SECRET_HEADER, "")
        if secret is None or not hmac.compare_digest(
            presented.encode(), secret.encode()
        ):
            self.rate.charge(client)
            raise Forbidden(
                "bad_cluster_secret",
                "A relay must present this cluster's secret (Broadcast-Cluster-Secret).",
            )
        stream_id = check_stream_id(request.match_info["stream_id"])
        offer = await self._offer(request)
        stream = self.registry.get(stream_id)
        if stream is None or _relayed(stream):
            # Not published here (a relay's stream is not pulled again: no loops).
            raise NotFound("stream_not_found", f"Stream '{stream_id}' is not here.")
        await _source_ready(stream)  # an on-demand camera starts for its edges too
        yield Admitted(client, stream_id, offer, stream, self.rate, relay=True)

    def _has_room(self, stream: Stream | None) -> bool:
        try:
            if stream is not None:
                self._check_room_for_viewer(stream)
            total = self.config.max_viewers_total
            if total and self.registry.viewer_count() >= total:
                return False
        except ServiceUnavailable:
            return False
        return True

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


def _relayed(stream: Stream) -> bool:
    """Its source is an edge's pull from the node that publishes it."""
    return stream.source is not None and stream.source.kind == "relay"


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


def _redirect(
    node_url: str,
    request: web.Request,
    who: str,
    query: dict[str, str],
    path: str | None = None,
) -> TemporaryRedirect:
    """Send the client to the same request on another node, its query (a share
    link's token) kept and `query` added."""
    url = request.rel_url.with_path(path or request.path).with_query(request.query)
    url = url.update_query(query)
    return TemporaryRedirect(
        node_url + str(url),
        f"This {who} is served by another node of the cluster: {node_url}.",
    )


def _full(message: str) -> ServiceUnavailable:
    # A full server is a temporary state: tell clients when to try again (RFC 9110 §10.2.3).
    return ServiceUnavailable("server_full", message, {"Retry-After": "10"})


ADMISSION = web.AppKey("admission", Admission)
