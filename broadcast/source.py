"""What feeds a stream, and what it tells the stream: one shape for every kind of source.

A WHIP publisher pushes its media; an RTSP camera is pulled; an edge's pull from an
origin, a file or a test pattern will be further kinds. The stream holds one `Source`
and never asks which kind it is; a source knows its stream only as a `SourceOwner`,
so neither module imports the other.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # the ingest imports SourceUnavailable without the media stack
    from broadcast.media.source_track import SourceTrack


class SourceUnavailable(Exception):
    """The source cannot give media now; the message is safe to show a viewer."""

    code = "source_unavailable"  # what a viewer's 503 says, by kind of source


class Source(Protocol):
    """A stream's media source, as the stream, the admin API and the signaling see it."""

    # The session id of a pushed source (its DELETE names it); a pulled source's own.
    id: str
    # "whip", "rtsp": shown by the admin API and in logs.
    kind: str
    # Where a pulled source pulls from (credentials redacted); None for a pushed one.
    pull_url: str | None
    bitrate_in_bps: int
    # Recorded from its first packet whatever the server's default (a camera with
    # record="true").
    record_from_start: bool

    @property
    def permanent(self) -> bool:
        """True: the stream lives as long as its configuration, and the source
        reconnects by itself. False: the stream ends once the source is gone for good."""
        ...

    async def wait_ready(self) -> None:
        """Return once media flows or will without more ado; raise
        `SourceUnavailable` if it cannot."""
        ...

    def viewers_changed(self, count: int) -> None:
        """The stream's audience changed (an on-demand source lets go at zero)."""
        ...

    def source_counters(self) -> dict[str, int]:
        """Counters that no session reports (a pulled source has none), for the
        stream's totals in the admin API and metrics."""
        ...

    async def close(self, reason: str, cause: str) -> None:
        """Stop for good: the stream ends; idempotent."""
        ...


class SourceOwner(Protocol):
    """The stream a source feeds: its tracks, its audience, and the events it hears."""

    id: str
    tracks: dict[str, SourceTrack]

    @property
    def viewers(self) -> Collection[object]: ...

    def source_live(self, source: Source) -> None:
        """Media flows (again)."""
        ...

    def source_lost(self, source: Source, problem: str | None) -> None:
        """Media stopped; a permanent source retries by itself, another may come back."""
        ...

    def source_idle(self, source: Source) -> None:
        """An on-demand source let go: nobody watches."""
        ...

    def source_ended(self, source: Source) -> None:
        """The source stopped on purpose (a presenter's Stop): the broadcast ends."""
        ...
