"""create_app(config): the aiohttp application — routes, startup and cleanup."""

from __future__ import annotations

import logging
import weakref
from collections.abc import AsyncIterator

from aiohttp import web

from broadcast.api import admin, recordings
from broadcast.api.metrics import METRICS, Metrics, metrics, watch_loop_lag
from broadcast.cluster.membership import Membership
from broadcast.cluster.node_state import local_state, share_audiences, start_relay
from broadcast.config import Config
from broadcast.hooks import HOOKS, Hooks
from broadcast.media.host import MediaHost
from broadcast.memory import trim_after_sessions_end
from broadcast.pages import add_routes
from broadcast.recording.recordings import RECORDINGS, Recordings
from broadcast.registry import StreamRegistry
from broadcast.signaling.admission import ADMISSION, Admission
from broadcast.signaling.check import post_check
from broadcast.signaling.http import errors_middleware
from broadcast.signaling.session import delete_session, options, patch_session
from broadcast.signaling.whep import post_whep
from broadcast.signaling.whip import post_whip
from broadcast.signaling.ws import WEBSOCKETS, close_websockets, websocket
from broadcast.web_keys import CLUSTER, MEDIA, REGISTRY, WORKERS
from broadcast.workers.pool import WorkerPool

logger = logging.getLogger(__name__)


async def healthz(request: web.Request) -> web.Response:
    """200 while this process serves; a node cut off from its cluster's Redis still
    serves what it carries, and says so."""
    cluster = request.app.get(CLUSTER)
    if cluster is not None and not cluster.redis_up:
        return web.Response(text="ok (cluster: redis down)")
    return web.Response(text="ok")


def create_app(config: Config) -> web.Application:
    """Build the server for `config`; streams live on `app[REGISTRY]`, the media
    sockets on `app[MEDIA]`, the worker processes on `app[WORKERS]`."""
    app = web.Application(
        middlewares=[errors_middleware], client_max_size=config.max_sdp_bytes
    )
    app[REGISTRY] = StreamRegistry(config)
    app[MEDIA] = MediaHost(config)
    app[WORKERS] = WorkerPool()
    if not (config.publish_keys or config.token_secret or config.hooks_publish_auth):
        logger.warning("No publish key is set: anyone who can reach us may publish.")
    session = "/{kind:whip|whep|check}/{stream_id}/{session_id}"
    app.router.add_post("/whip", post_whip)
    app.router.add_post("/whip/{stream_id}", post_whip)
    app.router.add_post("/whep/{stream_id}", post_whep)
    for path in (
        "/whip",
        "/whip/{stream_id}",
        "/whep/{stream_id}",
        "/check/ice",
        session,
    ):
        app.router.add_route("OPTIONS", path, options)
    app.router.add_patch(session, patch_session)
    app.router.add_delete(session, delete_session)
    app.router.add_get("/healthz", healthz)
    app.router.add_post("/check/ice", post_check)
    app.router.add_get("/ws", websocket)
    app[WEBSOCKETS] = weakref.WeakSet()
    # Streams end before the pages' sockets close, so pages hear "ended".
    app.on_shutdown.append(_end_streams)
    app.on_shutdown.append(close_websockets)
    add_routes(app)
    admin.add_routes(app)
    app[RECORDINGS] = Recordings(config, app[REGISTRY].events, app[REGISTRY].get)
    recordings.add_routes(app)
    if config.clustered:
        app[CLUSTER] = Membership(config, lambda: local_state(app[REGISTRY]))
        app[CLUSTER].on_heartbeat = lambda: share_audiences(app[REGISTRY], app[CLUSTER])
    app[METRICS] = Metrics(
        app[REGISTRY], app[MEDIA], app[WORKERS], app[RECORDINGS], app.get(CLUSTER)
    )
    app[HOOKS] = Hooks(config, app[REGISTRY])
    app[METRICS].watch_hooks(app[HOOKS])
    app[ADMISSION] = Admission(
        app[REGISTRY], lambda: app[METRICS].loop_lag_s, app.get(CLUSTER), app[HOOKS]
    )
    if config.clustered:
        app[ADMISSION].start_relay = lambda stream_id: start_relay(
            app[REGISTRY], app[MEDIA], app[CLUSTER], stream_id
        )
    app.router.add_get("/metrics", metrics)
    app.cleanup_ctx.append(watch_loop_lag)
    app.cleanup_ctx.append(trim_after_sessions_end)
    app.cleanup_ctx.append(_run_hooks)
    app.cleanup_ctx.append(_run_media)
    if config.clustered:
        app.cleanup_ctx.append(_run_cluster)
    return app


async def _run_cluster(app: web.Application) -> AsyncIterator[None]:
    """Join the cluster once media runs (our streams are claimed at the first
    heartbeat); leave before the media stops, so no viewer is sent here meanwhile."""
    await app[CLUSTER].start()
    yield
    await app[CLUSTER].stop()


async def _run_hooks(app: web.Application) -> AsyncIterator[None]:
    """Before media starts and after it stops: the streams' last events (ended,
    recordings finished) reach the back end's events hook."""
    app[HOOKS].start()
    yield
    await app[HOOKS].close()


async def _run_media(app: web.Application) -> AsyncIterator[None]:
    """The one owner of what carries media: open the media host, start the workers and
    add the configured cameras; at the end close streams and sessions (also any a
    request still in flight opened after shutdown), then the media host, then the
    workers."""
    registry, media, workers = app[REGISTRY], app[MEDIA], app[WORKERS]
    await media.open()
    await workers.start(registry.config)
    app[RECORDINGS].files.start_pruning()
    for camera in registry.config.cameras:
        registry.add_camera(camera)
    yield
    try:
        await registry.close()
        await app[RECORDINGS].close()  # the files of the streams just ended
    finally:  # whatever a session did on its way out, ports and processes go
        try:
            media.close()
        finally:
            await workers.stop()


async def _end_streams(app: web.Application) -> None:
    """At shutdown every stream ends, publishers and viewers told, before the pages'
    sockets close (`close_websockets`) and before cleanup (`_run_media`)."""
    await app[REGISTRY].close()
