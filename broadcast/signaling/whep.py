"""WHEP: a viewer POSTs an offer and receives a stream's tracks."""

from __future__ import annotations

from typing import cast

from aiohttp import web

from broadcast.api.metrics import METRICS
from broadcast.errors import BadRequest
from broadcast.media.source_track import SourceTrack
from broadcast.media.transport_protocol import Transport
from broadcast.signaling.admission import ADMISSION, Admitted
from broadcast.signaling.sdp import (
    MediaAnswer,
    Offer,
    choose_viewer_codec,
    describe_codec,
    describe_codecs,
)
from broadcast.signaling.session import answer_session, checked_quality
from broadcast.stream import Stream
from broadcast.viewer import Viewer, ViewerSession
from broadcast.web_keys import REGISTRY, WORKERS
from broadcast.workers.remote import RemoteTransport, RemoteViewer


async def post_whep(request: web.Request) -> web.Response:
    """Watch: `POST /whep/<id>`, once admission lets the viewer in."""
    async with request.app[ADMISSION].watch(request) as admitted:
        return await _watch(request, admitted)


async def _watch(request: web.Request, admitted: Admitted[Stream]) -> web.Response:
    stream, stream_id, offer = admitted.stream, admitted.stream_id, admitted.offer
    quality = _quality(request)
    tracks = stream.tracks_for(quality)
    layer = stream.rid_of(tracks.get("video"))
    # An auto viewer switches between the layers as its network allows, another as
    # it chooses (PATCH, the page's menu); an edge's pull takes the best.
    layers = []
    if not admitted.relay:
        layers = [(stream.rid_of(t) or "", t) for t in stream.video_layers()]
    pinned = quality != "auto"

    switches = request.app[METRICS].layer_switches  # (the request would stay alive)

    def on_layer_switch(up: bool) -> None:
        switches.labels("up" if up else "down").inc()

    answers, payload_types = _choose_codecs(offer, stream, tracks)
    if not payload_types:
        stream_codecs = ", ".join(
            describe_codec(t.codec) for t in stream.tracks.values()
        )
        raise BadRequest(
            "no_common_codec",
            f"Stream '{stream_id}' carries {stream_codecs or 'nothing yet'}; the offer "
            f"can receive {describe_codecs(offer.description.media)}.",
        )

    on_join = request.app[METRICS].join_seconds.observe
    # An edge's pull is one session in this process, and not in the audience.
    worker = None
    if not admitted.relay:
        worker = request.app[WORKERS].choose(request.app[REGISTRY].viewer_count())
    if worker is not None:
        remote = RemoteTransport(worker)

        def make_remote_viewer(transport: Transport) -> ViewerSession:
            remote_viewer = RemoteViewer(
                worker,
                stream_id,
                tracks,
                remote,
                offer.ufrag,
                payload_types,
                stream_id,
                on_join,
                layers,
                on_layer_switch,
                pinned,
            )
            return _counted(stream, remote_viewer, layer)

        return await answer_session(
            request, admitted, answers, make_remote_viewer, "whep", remote
        )

    def make_viewer(transport: Transport) -> ViewerSession:
        viewer = Viewer(
            stream_id,
            tracks,
            transport,
            offer.ufrag,
            payload_types,
            stream_id,
            on_join=on_join,
            layers=layers,
            on_layer_switch=on_layer_switch,
            pinned=pinned,
        )
        if admitted.relay:
            stream.add_relay(viewer)
            viewer.on_close.append(lambda _: stream.remove_relay(viewer))
            return viewer
        return _counted(stream, viewer, layer)

    return await answer_session(request, admitted, answers, make_viewer, "whep")


def _counted(stream: Stream, viewer: ViewerSession, layer: str | None) -> ViewerSession:
    """The stream counts its viewer (limits, events, an on-demand camera) until it
    closes; `layer`: the simulcast layer it watches."""
    viewer.layer = layer
    stream.add_viewer(viewer)
    viewer.on_close.append(lambda _: stream.remove_viewer(viewer))
    return viewer


def _quality(request: web.Request) -> str:
    """`?quality=`: which simulcast layer a viewer gets (auto: the best)."""
    return checked_quality(request.query.get("quality", "auto"))


def _choose_codecs(
    offer: Offer, stream: Stream, tracks: dict[str, SourceTrack]
) -> tuple[list[MediaAnswer], dict[str, int]]:
    answers = []
    payload_types: dict[str, int] = {}
    for media in offer.description.media:
        answer = MediaAnswer(offered=media)
        source = tracks.get(media.kind)
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
