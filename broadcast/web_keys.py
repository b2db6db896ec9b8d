"""Typed keys of the aiohttp application's state (no module-level state anywhere)."""

from __future__ import annotations

from aiohttp import web

from broadcast.cluster.membership import Membership
from broadcast.media.host import MediaHost
from broadcast.registry import StreamRegistry
from broadcast.workers.pool import WorkerPool

REGISTRY = web.AppKey("registry", StreamRegistry)
MEDIA = web.AppKey("media", MediaHost)
WORKERS = web.AppKey("workers", WorkerPool)
# Only in a cluster (`config.clustered`): `app.get(CLUSTER)` is None otherwise.
CLUSTER = web.AppKey("cluster", Membership)
