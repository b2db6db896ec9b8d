"""`GET /metrics`: Prometheus text, read from our own counters at scrape time.

The hot path only increments plain integers on its own objects; this collector sums
them when Prometheus asks. Labels are bounded: kinds, states and causes, never ids.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client import Counter as PrometheusCounter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from broadcast.api.quality import ViewerQuality
from broadcast.auth import check_admin_key
from broadcast.cluster.membership import Membership
from broadcast.hooks import Hooks
from broadcast.media.host import MediaHost
from broadcast.recording.recorder import RECORDING
from broadcast.recording.recordings import Recordings
from broadcast.registry import StreamRegistry
from broadcast.stream import ENDED, LIVE, RECONNECTING, WAITING
from broadcast.web_keys import REGISTRY
from broadcast.workers.pool import WorkerPool

# How often the event loop is probed for lag, and how late a probe may be before it
# counts as lag: a loop that falls behind delays every viewer's packets.
LOOP_PROBE_INTERVAL_S = 0.5

COUNTERS = {
    "rtp_packets_received": "RTP packets received from publishers",
    "rtp_bytes_received": "RTP bytes received from publishers",
    "rtp_packets_sent": "RTP packets sent to viewers, retransmissions included",
    "rtp_bytes_sent": "RTP payload bytes sent to viewers",
    "nacks_received": "NACK messages received from viewers",
    "retransmissions": "packets retransmitted to viewers after a NACK (each sent twice over UDP)",
    "plis_sent": "keyframe requests (PLI) sent to publishers",
    "packets_dropped": "packets dropped because they could not be handled or protected",
    "foreign_packets_dropped": "datagrams dropped because they came from no ICE peer",
}


class Metrics:
    """The Prometheus registry of one server (no module-level state)."""

    def __init__(
        self,
        registry: StreamRegistry,
        media: MediaHost,
        workers: WorkerPool,
        recordings: Recordings,
        cluster: Membership | None = None,
    ) -> None:
        self.registry = registry
        self.media = media
        self.workers = workers
        self.recordings = recordings
        self.cluster = cluster
        self.prometheus = CollectorRegistry()
        self.join_seconds = Histogram(
            "broadcast_join_to_keyframe_seconds",
            "Time from a viewer's connection to its first keyframe",
            buckets=(0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5),
            registry=self.prometheus,
        )
        self.hook_seconds = Histogram(
            "broadcast_hook_seconds",
            "Time the back end's hooks took to answer (or to fail)",
            ["hook"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10),
            registry=self.prometheus,
        )
        self.layer_switches = PrometheusCounter(
            "broadcast_layer_switches",
            "Simulcast layer switches of viewers watching with quality=auto",
            ["direction"],
            registry=self.prometheus,
        )
        self.hooks: Hooks | None = None
        self.loop_lag_s = 0.0
        self.viewer_quality = ViewerQuality(self.prometheus)
        self.prometheus.register(_ServerCollector(self))
        # process_resident_memory_bytes, process_open_fds, CPU: a leak shows here first.
        ProcessCollector(registry=self.prometheus)

    def watch_hooks(self, hooks: Hooks) -> None:
        """Time and count the calls of `hooks`."""
        self.hooks = hooks
        hooks.client.observe = lambda hook, s: self.hook_seconds.labels(hook).observe(s)

    def counts(self) -> Counter[str]:
        """Totals since start of every counter in `COUNTERS`: the sessions' and
        streams' (the registry), the main process's media sockets' and the workers'."""
        totals = self.registry.session_counts()
        totals.update(self.media.counts())
        totals.update(self.workers.counts())
        return totals


class _ServerCollector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        registry = self._metrics.registry
        streams = GaugeMetricFamily(
            "broadcast_streams", "Streams by state", labels=["state"]
        )
        for state in (WAITING, LIVE, RECONNECTING, ENDED):
            count = sum(1 for s in registry.streams.values() if s.state == state)
            streams.add_metric([state], count)
        yield streams
        yield GaugeMetricFamily(
            "broadcast_viewers",
            "Viewer sessions",
            value=registry.viewer_count(),
        )
        yield GaugeMetricFamily(
            "broadcast_viewers_waiting_for_keyframe",
            "Viewer tracks connected but still waiting for their first keyframe",
            value=sum(
                viewer.tracks_waiting
                for stream in registry.streams.values()
                for viewer in stream.viewers
                if viewer.connected_at is not None
            ),
        )
        by_layer = GaugeMetricFamily(
            "broadcast_viewers_by_layer",
            "Viewers of simulcast streams by the layer (rid) they receive now",
            labels=["layer"],
        )
        for layer, count in sorted(
            Counter(
                viewer.layer
                for stream in registry.streams.values()
                for viewer in stream.viewers
                if viewer.layer is not None
            ).items()
        ):
            by_layer.add_metric([layer], count)
        yield by_layer
        yield from _processes(self._metrics)
        if self._metrics.cluster is not None:
            yield from _cluster(self._metrics.cluster)
        yield from _recordings(self._metrics.recordings)
        if self._metrics.hooks is not None:
            yield from _hooks(self._metrics.hooks)
        started = CounterMetricFamily(
            "broadcast_sessions_started", "Sessions created", labels=["kind"]
        )
        for kind, count in sorted(registry.sessions_started.items()):
            started.add_metric([kind], count)
        yield started
        ended = CounterMetricFamily(
            "broadcast_sessions_ended",
            "Sessions ended, by cause",
            labels=["kind", "cause"],
        )
        for (kind, cause), count in sorted(registry.sessions_ended.items()):
            ended.add_metric([kind, cause], count)
        yield ended
        counts = self._metrics.counts()
        for name, help_text in COUNTERS.items():
            yield CounterMetricFamily(
                f"broadcast_{name}", help_text, value=counts[name]
            )
        yield GaugeMetricFamily(
            "broadcast_event_loop_lag_seconds",
            "How late the event loop ran its last probe",
            value=self._metrics.loop_lag_s,
        )
        yield GaugeMetricFamily(
            "broadcast_asyncio_tasks",
            "Tasks alive in the event loop (grows without bound if sessions leak)",
            value=len(asyncio.all_tasks()),
        )


def _processes(metrics: Metrics) -> Iterator[Metric]:
    """Viewers and loop lag of each process carrying viewers (0: the main one)."""
    pool, loop_lag_s = metrics.workers, metrics.loop_lag_s
    viewers = GaugeMetricFamily(
        "broadcast_process_viewers", "Viewers each process carries", labels=["process"]
    )
    viewers.add_metric(["0"], pool.local_viewers(metrics.registry.viewer_count()))
    lag = GaugeMetricFamily(
        "broadcast_process_event_loop_lag_seconds",
        "How late each process's event loop ran its last probe",
        labels=["process"],
    )
    lag.add_metric(["0"], loop_lag_s)
    for worker in pool.workers:
        viewers.add_metric([str(worker.index)], len(worker.viewers))
        lag.add_metric([str(worker.index)], worker.loop_lag_s)
    yield viewers
    yield lag


def _recordings(recordings: Recordings) -> Iterator[Metric]:
    yield GaugeMetricFamily(
        "broadcast_recordings_active",
        "Streams being recorded",
        value=sum(r.state == RECORDING for r in recordings.recorders.values()),
    )
    files = CounterMetricFamily(
        "broadcast_recording_files",
        "Recording files started, finished, failed (disk full, too slow) and pruned",
        labels=["event"],
    )
    for event in ("started", "finished", "failed", "pruned"):
        files.add_metric([event], recordings.counts[event])
    yield files
    yield CounterMetricFamily(
        "broadcast_recording_frames_dropped",
        "Frames left out of recordings because packets of them never came",
        value=recordings.dropped_frames,
    )


def _hooks(hooks: Hooks) -> Iterator[Metric]:
    calls = CounterMetricFamily(
        "broadcast_hook_calls",
        "Calls of the back end's hooks by outcome: allowed, refused, failed (timeout, "
        "no connection, 5xx), delivered",
        labels=["hook", "outcome"],
    )
    for (hook, outcome), count in sorted(hooks.client.calls.items()):
        calls.add_metric([hook, outcome], count)
    yield calls
    yield CounterMetricFamily(
        "broadcast_hook_events_dropped",
        "Events the back end never got: the queue was full or every retry failed",
        value=hooks.dropped,
    )


def _cluster(cluster: Membership) -> Iterator[Metric]:
    """The cluster as this node sees it: Redis, the live nodes and their viewers."""
    yield GaugeMetricFamily(
        "broadcast_cluster_redis_up",
        "1 while this node reaches the cluster's Redis",
        value=int(cluster.redis_up),
    )
    yield GaugeMetricFamily(
        "broadcast_cluster_nodes",
        "Live nodes of the cluster this node knows, itself included",
        value=1 + len(cluster.nodes),
    )
    viewers = GaugeMetricFamily(
        "broadcast_cluster_node_viewers",
        "Viewers each live node carries, from its last heartbeat",
        labels=["node", "role"],
    )
    for node in cluster.nodes.values():
        viewers.add_metric([node.id, node.role], node.viewers)
    yield viewers
    yield CounterMetricFamily(
        "broadcast_cluster_redis_failures",
        "Calls to the cluster's Redis that failed or timed out",
        value=cluster.failures,
    )


async def metrics(request: web.Request) -> web.Response:
    registry = request.app[REGISTRY]
    if not registry.config.metrics_enabled:
        raise web.HTTPNotFound()
    check_admin_key(request, registry.config, required=False)
    body = generate_latest(request.app[METRICS].prometheus)
    response = web.Response(body=body)
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response


async def watch_loop_lag(app: web.Application) -> AsyncIterator[None]:
    """Measure event-loop lag all along the server's life (cleanup_ctx)."""

    async def probe() -> None:
        while True:
            start = time.monotonic()
            await asyncio.sleep(LOOP_PROBE_INTERVAL_S)
            lag = time.monotonic() - start - LOOP_PROBE_INTERVAL_S
            app[METRICS].loop_lag_s = max(0.0, lag)

    task = asyncio.create_task(probe())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


METRICS = web.AppKey("metrics", Metrics)
