"""`events`: the operator's back end told what happened, never at the media's expense.

Derived from the stream events every stream publishes (broadcast/events.py):
`publish_started` (first live, not an edge's relay), `publish_ended`, `camera_problem`
(a camera reconnecting, and why), `viewer_joined` / `viewer_left` (one per viewer
session here), `recording_ready` (a file finished). Adding one is a dict append; one
background task POSTs `{"events": [...]}` at most once a second, up to `MAX_BATCH` a
POST, retrying a batch with exponential backoff. A full queue, or a batch that failed
every retry, drops its events and counts them: the receiver dedups by event `id`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from broadcast.events import Event
from broadcast.hooks.client import HookClient, HookFailed

logger = logging.getLogger(__name__)

HOOK = "events"
MAX_QUEUE = 10_000
MAX_BATCH = 1_000
INTERVAL_S = 1.0  # at most one POST a second
TIMEOUT_S = 10.0
RETRIES = 5  # then the batch is dropped
BACKOFF_S = 1.0  # doubles at each retry, up to MAX_BACKOFF_S
MAX_BACKOFF_S = 30.0
DRAIN_S = 2.0  # at shutdown, time to deliver what is queued (publish_ended)


class EventHooks:
    def __init__(
        self,
        url: str,
        client: HookClient,
        source_kind: Callable[[str], str | None],
    ) -> None:
        self.url = url
        self._client = client
        self._source_kind = source_kind  # of a stream id: whip, rtsp, relay or None
        self._queue: deque[dict[str, Any]] = deque()
        self._wake = asyncio.Event()
        self._live: dict[str, str | None] = {}  # streams announced: their source kind
        self._task: asyncio.Task[None] | None = None
        self._sending = False
        self.dropped = 0
        self.interval_s = INTERVAL_S
        self.backoff_s = BACKOFF_S

    def on_stream_event(self, event: Event) -> None:
        """A StreamEvents listener (listen_all): what the back end hears of it."""
        stream = event["stream"]
        if event["type"] == "state":
            self._on_state(stream, event["state"], event.get("problem"))
        elif event["type"] == "viewer":
            self.add(f"viewer_{event['event']}", stream, session=event["session"])
        elif event["type"] == "recording" and event.get("event") == "stopped":
            self.add(
                "recording_ready",
                stream,
                file=event["file"],
                duration=event["duration"],
            )

    def _on_state(self, stream: str, state: str, problem: str | None) -> None:
        if state == "live" and stream not in self._live:
            kind = self._source_kind(stream)
            if kind == "relay":  # an edge's copy: its origin tells
                return
            self._live[stream] = kind
            self.add("publish_started", stream, source=kind)
        elif (
            state == "reconnecting" and problem and self._source_kind(stream) == "rtsp"
        ):
            self.add("camera_problem", stream, problem=problem)
        elif state == "ended" and stream in self._live:
            self.add("publish_ended", stream, source=self._live.pop(stream))

    def add(self, kind: str, stream: str, **fields: object) -> None:
        """Queue an event; never waits, drops (and counts) when the queue is full."""
        if len(self._queue) >= MAX_QUEUE:
            self.dropped += 1
            return
        self._queue.append(
            {
                "id": secrets.token_hex(8),
                "type": kind,
                "time": round(time.time(), 3),
                "stream": stream,
                **fields,
            }
        )
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def close(self) -> None:
        """Give what is queued `DRAIN_S` to go out, then stop."""
        if self._task is None:
            return
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._drained(), DRAIN_S)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _drained(self) -> None:
        while self._queue or self._sending:
            await asyncio.sleep(0.05)

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                batch = [
                    self._queue.popleft()
                    for _ in range(min(MAX_BATCH, len(self._queue)))
                ]
                sent_at = time.monotonic()
                self._sending = True
                try:
                    await self._deliver(batch)
                finally:
                    self._sending = False
                await asyncio.sleep(self.interval_s - (time.monotonic() - sent_at))

    async def _deliver(self, batch: list[dict[str, Any]]) -> None:
        for attempt in range(RETRIES + 1):
            if attempt:
                await asyncio.sleep(
                    min(self.backoff_s * 2 ** (attempt - 1), MAX_BACKOFF_S)
                )
            try:
                answer = await self._client.post(
                    HOOK, self.url, {"events": batch}, TIMEOUT_S
                )
            except HookFailed as error:
                outcome = f"receiver failed ({error})"
            else:
                if 200 <= answer.status < 300:
                    self._client.calls[HOOK, "delivered"] += 1
                    return
                outcome = f"receiver answered {answer.status}"
            self._client.calls[HOOK, "failed"] += 1
            logger.warning("events hook: %s (attempt %d)", outcome, attempt + 1)
        self.dropped += len(batch)
        logger.error(
            "events hook: %d events dropped after %d tries", len(batch), RETRIES + 1
        )
