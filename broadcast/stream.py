"""Stream: one broadcast — its publisher slot, its source tracks, its viewers."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from broadcast.errors import Conflict
from broadcast.events import StreamEvents, state_event, viewers_event
from broadcast.media.source_track import SourceTrack

if TYPE_CHECKING:
    from broadcast.ingest.camera import Camera
    from broadcast.publisher import Publisher
    from broadcast.viewer import Viewer

logger = logging.getLogger(__name__)

WAITING, LIVE, RECONNECTING, ENDED = "waiting", "live", "reconnecting", "ended"


class Stream:
    """A broadcast named by its id; it outlives a publisher that drops and comes back."""

    def __init__(
        self,
        stream_id: str,
        reconnect_grace_s: float,
        on_end: Callable[[Stream], None],
        events: StreamEvents,
    ) -> None:
        self.id = stream_id
        self.state = WAITING
        self.created_at = time.monotonic()
        self.publisher: Publisher | None = None
        # The session id of the publisher that dropped last, while we wait for it.
        self._departed: str | None = None
        # A configured camera is this stream's source for good: the stream lives as long
        # as the configuration, whatever the camera does.
        self.camera: Camera | None = None
        self.problem: str | None = None
        self.tracks: dict[str, SourceTrack] = {}
        self.viewers: set[Viewer] = set()
        self._reconnect_grace_s = reconnect_grace_s
        self._grace_timer: asyncio.TimerHandle | None = None
        self._on_end = on_end
        self._events = events
        events.publish(state_event(stream_id, self.state))

    def __repr__(self) -> str:
        return f"Stream({self.id})"

    def _set_state(self, state: str, problem: str | None = None) -> None:
        if state != self.state or problem != self.problem:
            logger.info("%r %s -> %s", self, self.state, state)
            self.state = state
            self.problem = problem
            self._events.publish(state_event(self.id, state, problem))

    @property
    def source(self) -> Publisher | Camera | None:
        return self.camera or self.publisher

    def source_live(self, camera: Camera) -> None:
        """The camera plays: media flows again."""
        self._set_state(LIVE)

    def source_lost(self, camera: Camera, problem: str) -> None:
        """The camera dropped or cannot be reached; it retries by itself."""
        if self.state != ENDED:
            self._set_state(RECONNECTING, problem)

    def source_idle(self, camera: Camera) -> None:
        """An on-demand camera was let go: nobody watches."""
        if self.state != ENDED:
            self._set_state(WAITING)

    def attach_publisher(self, publisher: Publisher) -> None:
        """Take `publisher` as the source; a second live publisher is refused."""
        if self.state == ENDED:
            raise Conflict("stream_ended", f"Stream '{self.id}' has just ended.")
        if self.publisher is not None or self.camera is not None:
            raise Conflict(
                "stream_busy", f"Stream '{self.id}' already has a publisher."
            )
        if self._grace_timer is not None:
            self._grace_timer.cancel()
            self._grace_timer = None
        self.publisher = publisher
        for track in self.tracks.values():
            track.upstream_changed()

    def publisher_connected(self, publisher: Publisher) -> None:
        if publisher is self.publisher:
            self._set_state(LIVE)
            for track in self.tracks.values():
                if track.viewers or track.keyframes.pending:
                    track.keyframes.request_now()

    def publisher_left(self, publisher: Publisher, ended: bool) -> None:
        """The publisher hung up (`ended`) or dropped: end now, or wait for it."""
        if publisher is not self.publisher:
            return
        self.publisher = None
        self._departed = publisher.id
        for track in self.tracks.values():
            track.request_pli = lambda: False
        if self.state == ENDED:  # the stream is closing its publisher
            return
        if ended or self.state == WAITING:
            asyncio.get_running_loop().create_task(self.close())
            return
        self._set_state(RECONNECTING)
        self._grace_timer = asyncio.get_running_loop().call_later(
            self._reconnect_grace_s,
            lambda: asyncio.get_running_loop().create_task(self.close()),
        )

    async def publisher_hung_up(self, session_id: str) -> None:
        """The publisher that dropped says it stopped (its DELETE came after its
        connection closed): end now rather than after the grace period."""
        if self.publisher is None and self._departed == session_id:
            logger.info("%r publisher stopped after its connection closed", self)
            await self.close()

    def add_viewer(self, viewer: Viewer) -> None:
        self.viewers.add(viewer)
        self._viewers_changed()

    def remove_viewer(self, viewer: Viewer) -> None:
        if viewer in self.viewers:
            self.viewers.discard(viewer)
            self._viewers_changed()

    def _viewers_changed(self) -> None:
        self._events.publish(viewers_event(self.id, len(self.viewers)))
        if self.camera is not None:
            self.camera.viewers_changed(len(self.viewers))

    def counters(self) -> dict[str, int]:
        counts = {"plis_sent": sum(t.keyframes.sent for t in self.tracks.values())}
        if self.camera is not None:
            counts.update(self.camera.counters())
        return counts

    async def close(self) -> None:
        """End the broadcast: its publisher and every viewer session; idempotent."""
        if self.state == ENDED:
            return
        self._set_state(ENDED)
        if self._grace_timer is not None:
            self._grace_timer.cancel()
            self._grace_timer = None
        self._on_end(self)
        sources = [*self.viewers, *([self.source] if self.source else [])]
        await asyncio.gather(
            *(s.close("stream ended", "stream_ended") for s in sources)
        )
        for track in self.tracks.values():
            track.close()
