"""StreamRegistry: the live streams and sessions of one server process."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from broadcast.config import Config, RtspCamera
from broadcast.config import check_stream_id as config_check_stream_id
from broadcast.errors import BadRequest, Conflict
from broadcast.events import StreamEvents
from broadcast.ingest.camera import Camera
from broadcast.stream import Stream

if TYPE_CHECKING:
    from broadcast.session import Session
    from broadcast.source import Source

logger = logging.getLogger(__name__)

# A client may close its connection a moment before it sends DELETE (the npm library
# `whip-whep` stops a publisher that way): a session URL still answers DELETE this long
# after its transport closed, so the client's DELETE ends a broadcast at once instead of
# leaving viewers in `reconnecting` for the grace period.
CLOSED_SESSION_LINGER_S = 60.0
# Closed sessions remembered at most (a flood of failed sessions must not grow memory).
MAX_CLOSED_SESSIONS = 10_000


@dataclass(frozen=True)
class ClosedSession:
    """What a session URL still means after its session closed by itself."""

    kind: str
    stream_id: str
    expires_at: float


def check_stream_id(stream_id: str) -> str:
    """Return a valid stream id or raise BadRequest."""
    try:
        return config_check_stream_id(stream_id)
    except ValueError:
        raise BadRequest(
            "bad_stream_id", "Stream ids are 1-64 characters of A-Z, a-z, 0-9, _ and -."
        ) from None


def new_stream_id() -> str:
    """An unguessable stream id: 128 random bits."""
    return secrets.token_urlsafe(16)


class StreamRegistry:
    """Streams by id and sessions by their URL token."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.streams: dict[str, Stream] = {}
        self.sessions: dict[str, Session] = {}
        # Sessions closed by their transport or a timeout, not by DELETE, oldest first.
        self.closed_sessions: dict[str, ClosedSession] = {}
        self.events = StreamEvents()
        # Counts of what has ended, so that totals never go down (Prometheus counters).
        self.ended_counts: Counter[str] = Counter()
        self.sessions_started: Counter[str] = Counter()
        self.sessions_ended: Counter[tuple[str, str]] = Counter()

    def viewer_count(self) -> int:
        """Viewers of every stream, whichever process carries their media."""
        return sum(len(stream.viewers) for stream in self.streams.values())

    def get(self, stream_id: str) -> Stream | None:
        return self.streams.get(stream_id)

    def add_camera(self, camera: RtspCamera) -> Stream:
        """Publish a camera as a stream of its own, known from now on."""
        if camera.id in self.streams:  # live, or waiting for its publisher to return
            raise Conflict("stream_busy", f"Stream '{camera.id}' already exists.")
        stream = self.get_or_create(camera.id)
        source = Camera(camera, stream)
        stream.attach(source)
        if camera.options.keep_on:
            source.start()
        return stream

    def add_pulled(
        self, stream_id: str, make_source: Callable[[Stream], Source]
    ) -> Stream:
        """The stream `stream_id` fed by a source pulled from elsewhere (an edge's pull
        from its origin), made unless it exists already."""
        stream = self.streams.get(stream_id)
        if stream is None:
            stream = self.get_or_create(stream_id)
            stream.attach(make_source(stream))
        return stream

    def get_or_create(self, stream_id: str) -> Stream:
        stream = self.streams.get(stream_id)
        if stream is None:
            stream = Stream(
                stream_id, self.config.reconnect_grace_s, self._forget, self.events
            )
            self.streams[stream_id] = stream
        return stream

    def _forget(self, stream: Stream) -> None:
        if self.streams.get(stream.id) is stream:
            del self.streams[stream.id]
            self.ended_counts.update(stream.counters())

    def add_session(self, session: Session) -> None:
        self.sessions[session.id] = session
        self.sessions_started[session.kind] += 1

    def remove_session(self, session: Session) -> None:
        if self.sessions.pop(session.id, None) is not None:
            self.sessions_ended[(session.kind, session.close_cause)] += 1
            self.ended_counts.update(session.counters())
            if session.close_cause != "client":
                self._remember_closed(session)

    def _remember_closed(self, session: Session) -> None:
        now = time.monotonic()
        closed = self.closed_sessions
        # Oldest first: forget the expired ones, and the oldest past the cap.
        while closed:
            oldest_id, oldest = next(iter(closed.items()))
            if oldest.expires_at > now and len(closed) < MAX_CLOSED_SESSIONS:
                break
            del closed[oldest_id]
        closed[session.id] = ClosedSession(
            session.kind, session.stream_id, now + CLOSED_SESSION_LINGER_S
        )

    async def end_session(self, session_id: str, kind: str, stream_id: str) -> bool:
        """End a session for its client's DELETE; False if the URL names nothing.

        A publisher whose connection closed a moment earlier ends its broadcast now,
        unless another publisher has taken its place.
        """
        session = self.sessions.get(session_id)
        if session is not None and (session.kind, session.stream_id) == (
            kind,
            stream_id,
        ):
            await session.hang_up()
            return True
        closed = self.closed_sessions.get(session_id)
        if (
            closed is None
            or closed.expires_at < time.monotonic()
            or (closed.kind, closed.stream_id) != (kind, stream_id)
        ):
            return False
        del self.closed_sessions[session_id]
        stream = self.streams.get(stream_id)
        if kind == "whip" and stream is not None:
            await stream.publisher_hung_up(session_id)
        return True

    def session_counts(self) -> Counter[str]:
        """Totals since start of what sessions and streams count: what has ended plus
        what is live (the media sockets' and workers' drops are counted by metrics)."""
        totals = Counter(self.ended_counts)
        for session in self.sessions.values():
            totals.update(session.counters())
        for stream in self.streams.values():
            totals.update(stream.counters())
        return totals

    async def close(self) -> None:
        """End every stream (publishers and viewers), then any other session, as at
        server shutdown; again is harmless. The media host and the workers are not
        the registry's: their owner (`_run_media` in `app.py`) closes them."""
        await asyncio.gather(*(s.close() for s in list(self.streams.values())))
        await asyncio.gather(
            *(
                s.close("server shutdown", "shutdown")
                for s in list(self.sessions.values())
            )
        )
