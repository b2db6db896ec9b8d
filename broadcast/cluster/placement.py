"""Where a new session goes in a cluster: here, or another node by a 307 (RFC 9725 §4.5).

A viewer: a node that carries viewers (role `edge` or `both`) and has room keeps it,
pulling the stream from its owner first if it does not carry it yet. Otherwise (role
`origin`, or full) the viewer goes to the least-loaded live node with room, preferring
one that already carries the stream. A node never sends a viewer on to a node it
expects to send it back, so a redirected viewer stays where it lands unless that node
filled up meanwhile. A viewer sent on by a full node (an overflow, marked in the URL)
is never sent on again: nodes full for a stream (a per-stream limit, which the others
cannot see) would bounce it between them, so it gets a 503. An origin's dispatch is
no overflow: a node it picked may still send the viewer on once.

A publisher: the stream's owner takes it (a reconnect); a stream owned elsewhere is a
409 naming the owner; an edge sends a new publisher to an origin.
"""

from __future__ import annotations

from dataclasses import dataclass

from broadcast.cluster.membership import Membership
from broadcast.errors import Conflict, ServiceUnavailable


@dataclass(frozen=True)
class Placement:
    """Serve here (`redirect_to` None), pulling first from the node at `pull_from` if it
    is set; or send the client to `redirect_to`, a node's base URL."""

    redirect_to: str | None = None
    pull_from: str | None = None
    overflow: bool = False  # sent on because this node, which takes viewers, is full


HERE = Placement()


async def place_viewer(
    cluster: Membership,
    stream_id: str,
    carried_here: bool,
    room_here: bool,
    overflowed: bool = False,
) -> Placement | None:
    """Where a new viewer of `stream_id` goes; None if no node carries the stream.
    `overflowed`: a full node sent it here; it goes no further."""
    serves_viewers = cluster.role != "origin"
    if not cluster.redis_up:
        # Only what is here is known: serve it (an origin too, rather than nobody).
        return HERE if carried_here else None
    if carried_here and serves_viewers and room_here:
        return HERE
    if not carried_here:
        owner = await cluster.owner(stream_id)
        if owner is None or not owner.url:
            return None
        if serves_viewers and room_here:
            return Placement(pull_from=owner.url)
    if overflowed:
        raise ServiceUnavailable(
            "cluster_full",
            f"A full node of the cluster sent this viewer of '{stream_id}' here, and "
            "this node has no room for it either; it is not sent on again. Try again.",
            {"Retry-After": "10"},
        )
    node = cluster.pick_edge(stream_id, exclude=cluster.node_id)
    if node is not None:
        return Placement(redirect_to=node.url, overflow=serves_viewers)
    if carried_here and serves_viewers:
        return HERE  # full here too: admission's own limits answer
    raise ServiceUnavailable(
        "cluster_full",
        "Every node of the cluster that carries viewers is full or down; try again.",
        {"Retry-After": "10"},
    )


async def place_publisher(cluster: Membership, stream_id: str) -> Placement:
    """Claim `stream_id` for a publisher here, or say where it belongs."""
    if cluster.role == "edge":
        owner = await cluster.owner(stream_id)
        origins = [n for n in cluster.nodes.values() if n.role != "edge"]
        target = owner or min(origins, key=lambda n: (n.load, n.id), default=None)
        if target is None or not target.url:
            raise ServiceUnavailable(
                "no_origin",
                "This server only carries viewers, and no origin is up to publish to.",
                {"Retry-After": "10"},
            )
        return Placement(redirect_to=target.url)
    owner = await cluster.claim(stream_id)
    if owner is not None:
        where = f" ({owner.url})" if owner.url else ""
        raise Conflict(
            "stream_busy",
            f"Stream '{stream_id}' is published on node '{owner.id}'{where}.",
        )
    return HERE
