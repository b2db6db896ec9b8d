"""`GET /ws`: push stream events (state, viewer count) to web pages.

A page sends `{"type": "subscribe", "stream": "<id>"}` and then receives that stream's
events, starting with its current state (`offline` while no such stream exists).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import weakref
from collections.abc import Callable

from aiohttp import WSMsgType, web

from broadcast.api.metrics import METRICS
from broadcast.api.quality import clean_report
from broadcast.auth import may_view
from broadcast.errors import ClientError
from broadcast.events import (
    PRESENTER_MEDIA_ON,
    Event,
    presenter_event,
    state_event,
    viewers_event,
)
from broadcast.registry import check_stream_id
from broadcast.viewer import ViewerSession
from broadcast.web_keys import REGISTRY

logger = logging.getLogger(__name__)

# A page watches one stream, a presenter one or two; a few more is harmless.
MAX_SUBSCRIPTIONS = 16
# Events are small and rare; a page that cannot keep up loses the oldest.
QUEUE_EVENTS = 64
HEARTBEAT_S = 20.0
OFFLINE = "offline"

WEBSOCKETS = web.AppKey[weakref.WeakSet[web.WebSocketResponse]]("websockets")


async def websocket(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(heartbeat=HEARTBEAT_S, max_msg_size=4096)
    await ws.prepare(request)
    request.app[WEBSOCKETS].add(ws)
    queue: asyncio.Queue[Event] = asyncio.Queue(QUEUE_EVENTS)

    def deliver(event: Event) -> None:
        if queue.full():
            queue.get_nowait()
        queue.put_nowait(event)

    subscriptions: dict[str, Callable[[], None]] = {}
    sender = asyncio.create_task(_send_events(ws, queue))
    try:
        async for message in ws:
            if message.type != WSMsgType.TEXT:
                continue
            try:
                _handle(message.data, request.app, subscriptions, deliver)
            except ClientError as error:
                deliver(
                    {"type": "error", "error": error.code, "message": error.message}
                )
    finally:
        for stop in subscriptions.values():
            stop()
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sender
    return ws


def _handle(
    text: str,
    app: web.Application,
    subscriptions: dict[str, Callable[[], None]],
    deliver: Callable[[Event], None],
) -> None:
    registry = app[REGISTRY]
    try:
        request = json.loads(text)
    except ValueError:
        raise ClientError("bad_message", "Messages are JSON objects.") from None
    if not isinstance(request, dict) or not isinstance(request.get("stream"), str):
        raise ClientError(
            "bad_message", 'Send {"type": "subscribe", "stream": "<id>"}.'
        )
    stream_id = check_stream_id(request["stream"])
    if request.get("type") == "subscribe":
        if stream_id in subscriptions:
            return
        if len(subscriptions) >= MAX_SUBSCRIPTIONS:
            raise ClientError("too_many_subscriptions", "Subscribe to fewer streams.")
        token = request.get("token")
        if not may_view(
            registry.config, stream_id, token if isinstance(token, str) else None
        ):
            # A private stream without its token looks like no stream at all.
            deliver(state_event(stream_id, OFFLINE))
            deliver(viewers_event(stream_id, 0))
            return
        subscriptions[stream_id] = registry.events.listen(stream_id, deliver)
        stream = registry.get(stream_id)
        deliver(state_event(stream_id, stream.state if stream else OFFLINE))
        deliver(viewers_event(stream_id, stream.audience if stream else 0))
        if stream is not None and stream.presenter_media != PRESENTER_MEDIA_ON:
            deliver(presenter_event(stream_id, stream.presenter_media))
    elif request.get("type") == "quality":
        _take_quality_report(app, stream_id, request)
    elif request.get("type") == "presenter":
        _take_presenter_media(app, stream_id, request)
    elif request.get("type") == "unsubscribe":
        stop = subscriptions.pop(stream_id, None)
        if stop is not None:
            stop()
    else:
        raise ClientError(
            "bad_message",
            "The type is 'subscribe', 'unsubscribe', 'quality' or 'presenter'.",
        )


def _take_quality_report(
    app: web.Application, stream_id: str, request: dict[str, object]
) -> None:
    """Keep a viewer page's report on its session and in the metrics."""
    report = clean_report(request)
    session = app[REGISTRY].sessions.get(str(request.get("session")))
    if (
        report is None
        or not isinstance(session, ViewerSession)
        or session.stream_id != stream_id
    ):
        raise ClientError("bad_report", "A quality report names a live WHEP session.")
    # With the simulcast layer it was getting: what it saw, and at which size sent.
    session.quality = {**report, "layer": session.layer}
    app[METRICS].viewer_quality.observe(report)


def _take_presenter_media(
    app: web.Application, stream_id: str, request: dict[str, object]
) -> None:
    """The presenter page turned its camera or microphone off or on: viewers hear it.
    Only the stream's own publisher may say so (it names its WHIP session)."""
    stream = app[REGISTRY].get(stream_id)
    source = stream.source if stream is not None else None
    camera, microphone = request.get("camera"), request.get("microphone")
    if (
        stream is None
        or source is None
        or source.kind != "whip"  # a camera's id is its stream's: no secret
        or source.id != request.get("session")
        or not isinstance(camera, bool)
        or not isinstance(microphone, bool)
    ):
        raise ClientError(
            "bad_presenter_state",
            "A presenter message names the stream's live WHIP session and says "
            '"camera" and "microphone" true or false.',
        )
    stream.set_presenter_media({"camera": camera, "microphone": microphone})


async def _send_events(ws: web.WebSocketResponse, queue: asyncio.Queue[Event]) -> None:
    while True:
        event = await queue.get()
        try:
            await ws.send_json(event)
        except ConnectionError:
            return


# Time for the pages' last events ("ended") to leave before their sockets close.
SHUTDOWN_FLUSH_S = 0.2


async def close_websockets(app: web.Application) -> None:
    """At shutdown, once the streams have ended (`app.py`), let the pages hear it, then
    close their sockets."""
    sockets: weakref.WeakSet[web.WebSocketResponse] = app[WEBSOCKETS]
    if sockets:
        await asyncio.sleep(SHUTDOWN_FLUSH_S)
    for ws in list(sockets):
        await ws.close(code=1001, message=b"server shutdown")
