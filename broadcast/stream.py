"""Stream: one broadcast — its source, its source tracks, its viewers."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from broadcast.errors import Conflict
from broadcast.events import (
    PRESENTER_MEDIA_ON,
    StreamEvents,
    presenter_event,
    state_event,
    viewer_event,
    viewers_event,
)
from broadcast.media.layer_choice import layer_index
from broadcast.media.source_track import SourceTrack

if TYPE_CHECKING:
    from broadcast.source import Source
    from broadcast.viewer import ViewerSession

logger = logging.getLogger(__name__)

WAITING, LIVE, RECONNECTING, ENDED = "waiting", "live", "reconnecting", "ended"


class Stream:
    """A broadcast named by its id; it outlives a source that drops and comes back."""

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
        self.source: Source | None = None
        # The session id of the source that dropped last, while we wait for it.
        self._departed: str | None = None
        self.problem: str | None = None
        self.tracks: dict[str, SourceTrack] = {}
        # A simulcast publisher's video layers by rid; `tracks["video"]` is the first
        # its offer names (RFC 8853: the one it prefers), what recording, snapshots and
        # edges take. Empty without simulcast.
        self.layers: dict[str, SourceTrack] = {}
        self.viewers: set[ViewerSession] = set()
        # In a cluster, its viewers on the other nodes, by node (from their heartbeats),
        # and the edges pulling it from here: fed like viewers, counted by their nodes.
        self.viewers_elsewhere: dict[str, int] = {}
        self.relays: set[ViewerSession] = set()
        # Being recorded: an on-demand camera stays on for it as for a viewer.
        self.recorded = False
        # What the presenter page says of its camera and microphone.
        self.presenter_media = PRESENTER_MEDIA_ON
        self._reconnect_grace_s = reconnect_grace_s
        self._grace_timer: asyncio.TimerHandle | None = None
        self._retiring: asyncio.Task[None] | None = None  # a source taken over
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

    def attach(self, source: Source, replacing: Source | None = None) -> None:
        """Take `source`; a second live one is refused, unless it is `replacing` (an
        edge's pull gives way to the stream's publisher come back here): that one is
        closed, its viewers stay for the new source."""
        if self.state == ENDED:
            raise Conflict("stream_ended", f"Stream '{self.id}' has just ended.")
        previous = self.source
        if previous is not None and previous is not replacing:
            raise Conflict(
                "stream_busy", f"Stream '{self.id}' already has a publisher."
            )
        if self._grace_timer is not None:
            self._grace_timer.cancel()
            self._grace_timer = None
        self.source = source
        if previous is not None:  # what it says from now on is not heard
            self._retiring = asyncio.get_running_loop().create_task(
                previous.close("its publisher is back on this node", "replaced")
            )
        self.set_presenter_media(PRESENTER_MEDIA_ON)  # a new session starts with both
        for track in self.tracks.values():
            track.upstream_changed()

    def video_layers(self) -> list[SourceTrack]:
        """Its video as viewers may choose it, largest picture first (the offer's
        order while sizes are not known yet); one track without simulcast."""
        if not self.layers:
            video = self.tracks.get("video")
            return [video] if video is not None else []
        order = list(self.layers.values())
        if any(t.resolution is None for t in order):
            # Sizes come with keyframes, the smallest layer's often first: sorting
            # some could put a small one before a larger one still unknown.
            return order
        return sorted(
            order,
            key=lambda t: (
                -(t.resolution[0] * t.resolution[1]) if t.resolution else 0,
                order.index(t),
            ),
        )

    def rid_of(self, track: SourceTrack | None) -> str | None:
        """The simulcast layer `track` is, if it is one."""
        return next((rid for rid, t in self.layers.items() if t is track), None)

    def tracks_for(self, quality: str) -> dict[str, SourceTrack]:
        """The tracks a viewer asking `quality` (high, medium, low; auto: high) gets."""
        layers = self.video_layers()
        if len(layers) < 2:
            return self.tracks
        return {**self.tracks, "video": layers[layer_index(quality, len(layers))]}

    def source_live(self, source: Source) -> None:
        if source is not self.source:
            return
        self._set_state(LIVE)
        for track in self.tracks.values():
            if track.viewers or track.keyframes.pending:
                track.keyframes.request_now()

    def source_lost(self, source: Source, problem: str | None) -> None:
        """Media stopped: a permanent source retries by itself; another may come back
        as a new session within the grace period, or the broadcast ends."""
        if source is not self.source:
            return
        if source.permanent:
            if self.state != ENDED:
                self._set_state(RECONNECTING, problem)
            return
        self._detach(source)
        if self.state == ENDED:  # the stream is closing its source
            return
        if self.state == WAITING:  # it never went live: nothing to wait for
            asyncio.get_running_loop().create_task(self.close())
            return
        self._set_state(RECONNECTING, problem)
        self._grace_timer = asyncio.get_running_loop().call_later(
            self._reconnect_grace_s,
            lambda: asyncio.get_running_loop().create_task(self.close()),
        )

    def source_idle(self, source: Source) -> None:
        if source is self.source and self.state != ENDED:
            self._set_state(WAITING)

    def source_ended(self, source: Source) -> None:
        """The presenter stopped: end now, without a grace period."""
        if source is not self.source:
            return
        self._detach(source)
        if self.state != ENDED:  # else the stream is closing its source
            asyncio.get_running_loop().create_task(self.close())

    def _detach(self, source: Source) -> None:
        self.source = None
        self._departed = source.id
        for track in self.tracks.values():
            track.request_pli = lambda: False

    async def publisher_hung_up(self, session_id: str) -> None:
        """The publisher that dropped says it stopped (its DELETE came after its
        connection closed): end now rather than after the grace period."""
        if self.source is None and self._departed == session_id:
            logger.info("%r publisher stopped after its connection closed", self)
            await self.close()

    def add_viewer(self, viewer: ViewerSession) -> None:
        self.viewers.add(viewer)
        self._viewers_changed()
        self._events.announce(viewer_event(self.id, viewer.id, joined=True))

    def remove_viewer(self, viewer: ViewerSession) -> None:
        if viewer in self.viewers:
            self.viewers.discard(viewer)
            self._viewers_changed()
            self._events.announce(viewer_event(self.id, viewer.id, joined=False))

    @property
    def audience(self) -> int:
        """Its viewers here and, in a cluster, on every other node."""
        return len(self.viewers) + sum(self.viewers_elsewhere.values())

    def set_viewers_elsewhere(self, counts: dict[str, int]) -> None:
        """The other nodes' counts changed: pages hear the cluster-wide number."""
        before = self.audience
        self.viewers_elsewhere = counts
        if self.audience != before:
            self._events.publish(viewers_event(self.id, self.audience))

    def add_relay(self, relay: ViewerSession) -> None:
        self.relays.add(relay)
        self._viewers_changed()

    def remove_relay(self, relay: ViewerSession) -> None:
        if relay in self.relays:
            self.relays.discard(relay)
            self._viewers_changed()

    def set_presenter_media(self, media: dict[str, bool]) -> None:
        if media != self.presenter_media:
            self.presenter_media = media
            self._events.publish(presenter_event(self.id, media))

    def set_recorded(self, recorded: bool) -> None:
        if recorded != self.recorded:
            self.recorded = recorded
            self._viewers_changed()

    def _viewers_changed(self) -> None:
        self._events.publish(viewers_event(self.id, self.audience))
        if self.source is not None:  # an edge's pull or a recording keeps a camera on
            self.source.viewers_changed(
                len(self.viewers) + len(self.relays) + self.recorded
            )

    def counters(self) -> dict[str, int]:
        counts = {"plis_sent": sum(t.keyframes.sent for t in self.tracks.values())}
        if self.source is not None:
            counts.update(self.source.source_counters())
        return counts

    async def close(self) -> None:
        """End the broadcast: its source and every viewer session; idempotent."""
        if self.state == ENDED:
            return
        self._set_state(ENDED)
        if self._grace_timer is not None:
            self._grace_timer.cancel()
            self._grace_timer = None
        self._on_end(self)
        closing = [
            v.close("stream ended", "stream_ended") for v in self.viewers | self.relays
        ]
        if self.source is not None:
            closing.append(self.source.close("stream ended", "stream_ended"))
        await asyncio.gather(*closing)
        for track in self.tracks.values():
            track.close()
