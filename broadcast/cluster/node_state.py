"""Between this node's registry and its cluster membership: what the heartbeat says we
carry, and the other nodes' viewer counts handed to our streams."""

from __future__ import annotations

from broadcast.cluster.membership import LocalState, Membership
from broadcast.config import Config
from broadcast.ingest.origin_pull import OriginPull, PullError
from broadcast.media.host import MediaHost
from broadcast.registry import StreamRegistry
from broadcast.stream import Stream

# The kind of source that pulls a stream from its owner (ingest/origin_pull.py).
RELAY = "relay"


def local_state(registry: StreamRegistry) -> LocalState:
    """The streams carried here, their viewers, which we own and which we relay."""
    streams = {s.id: len(s.viewers) for s in registry.streams.values()}
    relays = tuple(
        s.id
        for s in registry.streams.values()
        if s.source is not None and s.source.kind == RELAY
    )
    bitrate = sum(
        viewer.bitrate_out_bps
        for stream in registry.streams.values()
        for viewer in stream.viewers
    )
    owned = tuple(stream_id for stream_id in streams if stream_id not in relays)
    return LocalState(streams, owned, relays, bitrate)


def share_audiences(registry: StreamRegistry, cluster: Membership) -> None:
    """Each stream learns its viewers on the other nodes (pages show the sum)."""
    for stream in registry.streams.values():
        stream.set_viewers_elsewhere(cluster.viewers_elsewhere(stream.id))


def start_relay(
    registry: StreamRegistry, media: MediaHost, cluster: Membership, stream_id: str
) -> Stream:
    """The stream, pulled here from the node that publishes it (found again at each
    attempt: a publisher may come back on another node)."""
    config: Config = registry.config

    async def locate() -> str | None:
        owner = await cluster.owner(stream_id)
        if owner is None and not cluster.redis_up:
            # Not known to be unpublished: this must not end the stream here.
            raise PullError("Redis is down: where the stream is published is unknown")
        return owner.url if owner is not None and owner.url else None

    return registry.add_pulled(
        stream_id,
        lambda stream: OriginPull(
            stream,
            media,
            locate,
            cluster.node_id,
            lambda: cluster.secret,
            config.relay_linger_s,
            config.publisher_timeout_s,
            config.reconnect_grace_s,
        ),
    )
