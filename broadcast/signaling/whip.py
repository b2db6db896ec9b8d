"""WHIP (RFC 9725): a publisher POSTs an offer and becomes a stream's source."""

from __future__ import annotations

import copy
import logging
from typing import cast

from aiohttp import web
from aiortc import RTCRtpCodecParameters, RTCRtpParameters
from aiortc import sdp as aiortc_sdp
from aiortc.rtp import HeaderExtensionsMap

from broadcast import tokens
from broadcast.config import Config
from broadcast.errors import BadRequest
from broadcast.media.source_track import SourceTrack
from broadcast.media.transport_protocol import Transport
from broadcast.media.upstream import BandwidthEstimate, UpstreamTrack
from broadcast.publisher import Publisher
from broadcast.signaling.admission import ADMISSION, Admitted
from broadcast.signaling.sdp import (
    MediaAnswer,
    Offer,
    choose_publisher_codec,
    describe_codecs,
)
from broadcast.signaling.session import answer_session
from broadcast.stream import Stream
from broadcast.web_keys import REGISTRY

logger = logging.getLogger(__name__)

VIEW_LINK_TTL_S = tokens.VIEW_LINK_TTL_S

BITRATE_HINTS = ("x-google-start-bitrate", "x-google-max-bitrate")


async def post_whip(request: web.Request) -> web.Response:
    """Publish: `POST /whip/<id>`, or `POST /whip` for a server-chosen id."""
    async with request.app[ADMISSION].publish(request) as admitted:
        return await _publish(request, admitted)


async def _publish(
    request: web.Request, admitted: Admitted[Stream | None]
) -> web.Response:
    registry = request.app[REGISTRY]
    config = registry.config
    stream_id, offer = admitted.stream_id, admitted.offer
    hints = {
        "x-google-start-bitrate": config.start_bitrate_kbps,
        "x-google-max-bitrate": config.max_bitrate_kbps,
    }
    answers = _choose_codecs(offer, admitted.stream, hints, config.simulcast)
    if not any(a.accepted for a in answers):
        raise BadRequest(
            "no_common_codec",
            "None of the offered codecs can be forwarded "
            f"(offered: {describe_codecs(offer.description.media)}; we forward VP8, "
            "H264 with packetization-mode=1, opus, PCMA and PCMU).",
        )

    stream = registry.get_or_create(stream_id)
    upstream = [t for a in answers if a.accepted for t in _upstream_tracks(stream, a)]
    extensions = _layer_extensions(answers)
    bandwidth = BandwidthEstimate(
        config.start_bitrate_kbps * 1000, config.max_bitrate_kbps * 1000
    )

    def make_publisher(transport: Transport) -> Publisher:
        publisher = Publisher(
            stream,
            transport,
            offer.ufrag,
            upstream,
            bandwidth,
            config.publisher_timeout_s,
            extensions,
        )
        stream.attach(publisher, replacing=admitted.takes_over)
        return publisher

    response = await answer_session(request, admitted, answers, make_publisher, "whip")
    response.headers.add("Link", f'<{_watch_link(config, stream_id)}>; rel="alternate"')
    return response


def _watch_link(config: Config, stream_id: str) -> str:
    """The viewer page of the stream; with a view token when viewing is private."""
    link = f"/watch/{stream_id}"
    if config.private_viewing and config.token_secret:
        token = tokens.mint(
            config.token_secret, tokens.VIEW, stream_id, VIEW_LINK_TTL_S
        )
        link += f"?token={token}"
    return link


def _choose_codecs(
    offer: Offer, stream: Stream | None, hints: dict[str, int], simulcast: bool
) -> list[MediaAnswer]:
    answers = []
    taken: set[str] = set()
    for media in offer.description.media:
        answer = MediaAnswer(offered=media)
        sends = media.direction in ("sendonly", "sendrecv")
        if media.kind in ("audio", "video") and media.kind not in taken and sends:
            track = stream.tracks.get(media.kind) if stream else None
            answer.codecs = choose_publisher_codec(
                media, track.codec if track else None, hints
            )
            if answer.accepted:
                answer.direction = "recvonly"
                taken.add(media.kind)
                if media.kind == "video" and simulcast:
                    answer.rids = offer.simulcast.get(str(media.rtp.muxId), [])
        answers.append(answer)
    return answers


def _upstream_tracks(stream: Stream, answer: MediaAnswer) -> list[UpstreamTrack]:
    """The stream's source tracks for this m-line (made at first publish; one per
    simulcast layer, the first also the stream's video track), each fed by it."""
    media = answer.offered
    codec = answer.codecs[0]
    rtx = answer.codecs[1].payloadType if len(answer.codecs) > 1 else None
    payload_type = cast(int, codec.payloadType)  # set by the SDP parser
    if not answer.rids:
        source = stream.tracks.get(media.kind) or _new_track(stream, media.kind, codec)
        if media.kind == "video":
            stream.layers = {}
        return [UpstreamTrack(source, payload_type, rtx, _announced_ssrcs(media))]
    layers: dict[str, SourceTrack] = {}
    for index, rid in enumerate(answer.rids):
        known = stream.tracks.get("video") if index == 0 else stream.layers.get(rid)
        layers[rid] = known or _new_track(stream, "video", codec)
    stream.layers = layers
    return [
        UpstreamTrack(layer, payload_type, rtx, rid=rid)
        for rid, layer in layers.items()
    ]


def _new_track(stream: Stream, kind: str, codec: RTCRtpCodecParameters) -> SourceTrack:
    """A track with the publisher's codec (viewers negotiate it), bitrate hints off;
    the first of a kind is the stream's."""
    stream_codec = copy.deepcopy(codec)
    for hint in BITRATE_HINTS:
        stream_codec.parameters.pop(hint, None)
    source = SourceTrack(kind, stream_codec)
    stream.tracks.setdefault(kind, source)
    return source


def _layer_extensions(answers: list[MediaAnswer]) -> HeaderExtensionsMap | None:
    """The header extension ids a simulcast offer gave the rids (None: no simulcast)."""
    for answer in answers:
        if answer.rids:
            extensions = HeaderExtensionsMap()
            extensions.configure(
                RTCRtpParameters(headerExtensions=answer.offered.rtp.headerExtensions)
            )
            return extensions
    return None


def _announced_ssrcs(media: aiortc_sdp.MediaDescription) -> tuple[int, ...]:
    """The media SSRC then its RTX SSRC, from `a=ssrc-group:FID` or `a=ssrc`."""
    for group in media.ssrc_group:
        if group.semantic == "FID":
            return tuple(int(s) for s in group.items)
    return tuple(s.ssrc for s in media.ssrc[:1])
