"""Admin REST (`/api/...`): list and stop streams, see and kick viewers."""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from broadcast.auth import check_admin_key
from broadcast.cluster.node_state import local_state
from broadcast.config import RtspCamera, RtspOptions
from broadcast.errors import BadRequest, NotFound
from broadcast.recording.recordings import RECORDINGS, Recordings
from broadcast.recording.snapshot import SNAPSHOTS, Snapshots, parse_width
from broadcast.registry import check_stream_id
from broadcast.stream import Stream
from broadcast.viewer import ViewerSession
from broadcast.web_keys import CLUSTER, REGISTRY


def _kbps(bits_per_second: int) -> int:
    return round(bits_per_second / 1000)


def stream_summary(
    stream: Stream, recordings: Recordings, node: str | None = None
) -> dict[str, Any]:
    """A stream as the API shows it; in a cluster (`node`: this node's id) its
    viewers are counted over every node, and `viewers_by_node` splits them."""
    source = stream.source
    by_node = {}
    if node is not None:
        by_node["viewers_by_node"] = {
            node: len(stream.viewers),
            **stream.viewers_elsewhere,
        }
    return {
        "id": stream.id,
        "state": stream.state,
        "problem": stream.problem,
        "source": source.kind if source else None,
        "camera": source.pull_url if source else None,
        "codecs": [t.codec.mimeType for t in stream.tracks.values()],
        "resolution": _resolution(stream),
        "bitrate_in_kbps": _kbps(source.bitrate_in_bps) if source else 0,
        "viewers": stream.audience,
        **by_node,
        "uptime_s": round(time.monotonic() - stream.created_at, 1),
        "recording": recordings.summary(stream.id),
    }


def _node(request: web.Request) -> str | None:
    config = request.app[REGISTRY].config
    return config.node_name if config.clustered else None


def _resolution(stream: Stream) -> str | None:
    video = stream.tracks.get("video")
    if video is None or video.resolution is None:
        return None
    return "{}x{}".format(*video.resolution)


def viewer_summary(viewer: ViewerSession) -> dict[str, Any]:
    return {
        "id": viewer.id,
        "address": viewer.remote_address,
        "process": viewer.process,
        "connected": viewer.connected_at is not None,
        "bitrate_out_kbps": _kbps(viewer.bitrate_out_bps),
        "loss_percent": round(100 * viewer.fraction_lost / 256, 1),
        "rtt_ms": None if viewer.rtt_s is None else round(1000 * viewer.rtt_s),
        "retransmissions": viewer.retransmissions,
        "layer": viewer.layer,
        "estimate_kbps": None
        if viewer.estimate_bps is None
        else _kbps(viewer.estimate_bps),
        "seen_by_viewer": viewer.quality,
    }


def admin_stream(request: web.Request) -> Stream:
    """The stream a `/api/streams/<id>/...` request names, for the admin key only."""
    registry = request.app[REGISTRY]
    check_admin_key(request, registry.config)
    stream_id = check_stream_id(request.match_info["stream_id"])
    stream = registry.get(stream_id)
    if stream is None:
        raise NotFound("stream_not_found", f"There is no stream '{stream_id}'.")
    return stream


async def list_streams(request: web.Request) -> web.Response:
    registry = request.app[REGISTRY]
    check_admin_key(request, registry.config)
    streams = sorted(registry.streams.values(), key=lambda s: s.id)
    summaries = [
        stream_summary(s, request.app[RECORDINGS], _node(request)) for s in streams
    ]
    return web.json_response({"streams": summaries})


async def show_stream(request: web.Request) -> web.Response:
    stream = admin_stream(request)
    viewers = sorted(stream.viewers, key=lambda v: v.started_at)
    return web.json_response(
        {
            **stream_summary(stream, request.app[RECORDINGS], _node(request)),
            "layers": layer_summary(stream),
            "viewer_sessions": [viewer_summary(v) for v in viewers],
        }
    )


def layer_summary(stream: Stream) -> list[dict[str, Any]]:
    """A simulcast stream's video layers, largest first ([] without simulcast)."""
    if not stream.layers:
        return []
    rids = {track: rid for rid, track in stream.layers.items()}
    return [
        {
            "rid": rids[track],
            "resolution": "{}x{}".format(*track.resolution)
            if track.resolution
            else None,
            "bitrate_kbps": _kbps(track.bitrate_bps),
            "viewers": sum(v.layer == rids[track] for v in stream.viewers),
        }
        for track in stream.video_layers()
    ]


async def stop_stream(request: web.Request) -> web.Response:
    stream = admin_stream(request)
    await stream.close()
    return web.json_response({"stopped": stream.id})


async def snapshot(request: web.Request) -> web.Response:
    """`GET /api/streams/<id>/snapshot.jpg?width=`: the stream's latest keyframe."""
    stream = admin_stream(request)
    width = parse_width(request.query.get("width"))
    jpeg = await request.app[SNAPSHOTS].jpeg(stream, width)
    return web.Response(
        body=jpeg, content_type="image/jpeg", headers={"Cache-Control": "no-store"}
    )


async def kick_viewer(request: web.Request) -> web.Response:
    stream = admin_stream(request)
    viewer_id = request.match_info["viewer_id"]
    viewer = next((v for v in stream.viewers if v.id == viewer_id), None)
    if viewer is None:
        raise NotFound("viewer_not_found", "No such viewer on this stream.")
    await viewer.close("kicked by the admin", "admin")
    return web.json_response({"kicked": viewer_id})


async def add_camera(request: web.Request) -> web.Response:
    """Pull a camera as a new stream:
    `{"id", "url", "always_on"?, "transport"?, "record"?, "tls_verify"?}`."""
    registry = request.app[REGISTRY]
    check_admin_key(request, registry.config)
    try:
        body = await request.json()
        camera = RtspCamera(
            str(body["id"]),
            str(body["url"]),
            RtspOptions(
                always_on=bool(body.get("always_on", False)),
                transport=str(body.get("transport", "tcp")),
                record=bool(body.get("record", False)),
                tls_verify=bool(body.get("tls_verify", True)),
            ),
        )
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise BadRequest(
            "bad_camera",
            'Send JSON {"id": "gate", "url": "rtsp://...", "always_on": false, '
            f'"transport": "tcp", "record": false}}: {error}',
        ) from None
    stream = registry.add_camera(camera)
    return web.json_response(
        {
            **stream_summary(stream, request.app[RECORDINGS]),
            "watch": f"/watch/{stream.id}",
        },
        status=201,
    )


async def remove_camera(request: web.Request) -> web.Response:
    stream = admin_stream(request)
    if stream.source is None or stream.source.kind != "rtsp":
        raise NotFound("camera_not_found", f"Stream '{stream.id}' is not a camera.")
    await stream.close()
    return web.json_response({"removed": stream.id})


async def show_cluster(request: web.Request) -> web.Response:
    """`GET /api/cluster`: the nodes this one knows alive (itself first), their roles,
    load, heartbeat age and the streams each carries; Redis up or down (its URL
    without password)."""
    registry = request.app[REGISTRY]
    check_admin_key(request, registry.config)
    cluster = request.app.get(CLUSTER)
    if cluster is None:
        raise NotFound("not_clustered", "This server is not in a cluster (--cluster).")
    now = time.time()
    me = cluster.describe(local_state(registry))
    nodes = [
        {
            "id": node.id,
            "url": node.url,
            "role": node.role,
            "viewers": node.viewers,
            "capacity": node.capacity,
            "cpu_percent": round(100 * node.cpu, 1),
            "bitrate_out_kbps": _kbps(node.bitrate_out_bps),
            "heartbeat_age_s": round(max(now - node.written_at, 0.0), 1),
            "streams": node.streams,
            "relays": list(node.relays),
        }
        for node in [me, *sorted(cluster.nodes.values(), key=lambda n: n.id)]
    ]
    return web.json_response(
        {
            "node": cluster.node_id,
            "redis": {"url": cluster.redis_url, "up": cluster.redis_up},
            "nodes": nodes,
        }
    )


def add_routes(app: web.Application) -> None:
    app[SNAPSHOTS] = Snapshots()
    app.router.add_get("/api/cluster", show_cluster)
    app.router.add_get("/api/streams", list_streams)
    app.router.add_get("/api/streams/{stream_id}", show_stream)
    app.router.add_delete("/api/streams/{stream_id}", stop_stream)
    app.router.add_get("/api/streams/{stream_id}/snapshot.jpg", snapshot)
    app.router.add_delete("/api/streams/{stream_id}/viewers/{viewer_id}", kick_viewer)
    app.router.add_post("/api/cameras", add_camera)
    app.router.add_delete("/api/cameras/{stream_id}", remove_camera)
