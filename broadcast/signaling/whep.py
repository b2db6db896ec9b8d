"""WHEP: a viewer POSTs an offer and receives a stream's tracks."""

from __future__ import annotations

from typing import cast

from aiohttp import web

from broadcast.api.metrics import METRICS
from broadcast.auth import may_view, view_token
from broadcast.errors import BadRequest, ClientError, NotFound, ServiceUnavailable
from broadcast.limits import check_event_loop, client_address
from broadcast.media.transport_protocol import Transport
from broadcast.registry import check_stream_id
from broadcast.signaling.http import SDP_TYPE, read_body
from broadcast.signaling.sdp import (
    MediaAnswer,
    Offer,
    choose_viewer_codec,
    describe_codecs,
    parse_offer,
)
from broadcast.signaling.session import answer_session
from broadcast.source import SourceUnavailable
from broadcast.stream import Stream
from broadcast.viewer import Viewer
from broadcast.web_keys import REGISTRY
from broadcast.workers.remote import RemoteTransport, RemoteViewer


async def post_whep(request: web.Request) -> web.Response:
    """Watch: `POST /whep/<id>`; 404 while no such stream is known."""
    rate = request.app[REGISTRY].session_rate
    client = client_address(request)
    rate.check(client)
    try:
        return await _watch(request)
    except ServiceUnavailable:
        raise  # our state, not the client's doing
    except ClientError:
        # A refused offer costs its client, as does probing for stream ids; a viewer
        # that connects costs nothing (its session is followed until it does).
        rate.charge(client)
        raise


async def _watch(request: web.Request) -> web.Response:
    registry = request.app[REGISTRY]
    stream_id = check_stream_id(request.match_info["stream_id"])
    offer = parse_offer(
        await read_body(request, SDP_TYPE, registry.config.max_sdp_bytes)
    )
    # A private stream without a valid token answers exactly as a missing one, and
    # the token is checked either way so that timing does not tell them apart.
    allowed = may_view(registry.config, stream_id, view_token(request))
    stream = registry.get(stream_id)
    if stream is None or not allowed:
        raise NotFound("stream_not_found", f"There is no stream '{stream_id}' (yet).")
    check_event_loop(request.app[METRICS].loop_lag_s)
    registry.check_room_for_viewer(stream)
    if stream.source is not None:
        try:
            await stream.source.wait_ready()
        except SourceUnavailable as error:
            raise ServiceUnavailable(
                "camera_unavailable", f"{error}.", {"Retry-After": "5"}
            ) from None
    answers, payload_types = _choose_codecs(offer, stream)
    if not payload_types:
        stream_codecs = ", ".join(t.codec.mimeType for t in stream.tracks.values())
        raise BadRequest(
            "no_common_codec",
            f"Stream '{stream_id}' carries {stream_codecs or 'nothing yet'}; the offer "
            f"can receive {describe_codecs(offer.description.media)}.",
        )

    on_join = request.app[METRICS].join_seconds.observe
    worker = registry.workers.choose(registry.local_viewers())
    if worker is not None:
        remote = RemoteTransport(worker)

        def make_remote_viewer(transport: Transport) -> Viewer:
            return _counted(
                stream,
                RemoteViewer(
                    worker,
                    stream_id,
                    stream.tracks,
                    remote,
                    offer.ufrag,
                    payload_types,
                    stream_id,
                    on_join,
                ),
            )

        return await answer_session(
            request,
            offer,
            answers,
            make_remote_viewer,
            "whep",
            stream_id,
            remote,
        )

    def make_viewer(transport: Transport) -> Viewer:
        viewer = Viewer(
            stream_id,
            stream.tracks,
            transport,
            offer.ufrag,
            payload_types,
            stream_id,
            on_join=on_join,
        )
        return _counted(stream, viewer)

    return await answer_session(request, offer, answers, make_viewer, "whep", stream_id)


def _counted(stream: Stream, viewer: Viewer) -> Viewer:
    """The stream counts its viewer (limits, events, an on-demand camera) until it
    closes."""
    stream.add_viewer(viewer)
    viewer.on_close.append(lambda _: stream.remove_viewer(viewer))
    return viewer


def _choose_codecs(
    offer: Offer, stream: Stream
) -> tuple[list[MediaAnswer], dict[str, int]]:
    answers = []
    payload_types: dict[str, int] = {}
    for media in offer.description.media:
        answer = MediaAnswer(offered=media)
        source = stream.tracks.get(media.kind)
        receives = media.direction in ("recvonly", "sendrecv")
        if source is not None and media.kind not in payload_types and receives:
            codec = choose_viewer_codec(media, source.codec)
            if codec is not None:
                answer.codecs = [codec]
                answer.direction = "sendonly"
                answer.ssrc = source.ssrc
                answer.msid = f"{stream.id} {stream.id}-{media.kind}"
                payload_types[media.kind] = cast(int, codec.payloadType)
        answers.append(answer)
    return answers, payload_types
