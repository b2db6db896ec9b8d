"""Session resources shared by WHIP and WHEP: create, trickle (PATCH), end (DELETE);
and a viewer's choice of quality (PATCH with JSON)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import secrets
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aioice.candidate import candidate_priority
from aiortc import RTCIceCandidate, RTCIceParameters
from aiortc import sdp as aiortc_sdp

from broadcast.errors import (
    BadRequest,
    PreconditionFailed,
    ServiceUnavailable,
    UnsupportedMediaType,
)
from broadcast.media.layer_choice import QUALITIES
from broadcast.media.transport_protocol import Transport
from broadcast.session import Session
from broadcast.signaling.admission import Admitted
from broadcast.signaling.http import (
    JSON_TYPE,
    SDP_TYPE,
    TRICKLE_TYPE,
    read_body,
    session_not_found,
)
from broadcast.signaling.ice_servers import ice_server_links
from broadcast.signaling.sdp import (
    MediaAnswer,
    build_answer,
    usable_candidates,
)
from broadcast.viewer import ViewerSession
from broadcast.web_keys import MEDIA, REGISTRY

logger = logging.getLogger(__name__)


async def answer_session(
    request: web.Request,
    admitted: Admitted[Any],
    answers: list[MediaAnswer],
    make_session: Callable[[Transport], Session],
    kind: str,
    transport: Transport | None = None,
) -> web.Response:
    """Answer the admitted offer with `transport` (a new one of ours by default) and
    start connecting."""
    registry = request.app[REGISTRY]
    offer, stream_id = admitted.offer, admitted.stream_id
    if transport is None:
        transport = request.app[MEDIA].transport(f"{kind} {stream_id}")
    session = make_session(transport)
    registry.add_session(session)
    admitted.follow(session)
    session.on_close.append(registry.remove_session)
    try:
        await transport.gather()
        if not transport.local_candidates:
            raise OSError("no ICE candidate could be gathered")
    except (OSError, TimeoutError) as exc:  # TimeoutError: a worker did not answer
        await session.close(f"cannot gather candidates: {exc}", "error")
        raise ServiceUnavailable(
            "no_candidates", f"The server cannot open media ports: {exc}."
        ) from exc
    except BaseException:  # a bug, or the client went away: leave nothing behind
        await asyncio.shield(session.close("failed while gathering", "error"))
        raise
    if session.closed:  # the stream ended while we gathered
        raise ServiceUnavailable(
            "stream_ended",
            f"Stream '{stream_id}' ended; try again.",
            {"Retry-After": "1"},
        )
    answer = build_answer(
        offer,
        answers,
        transport.local_ice,
        announced_candidates(transport.local_candidates, registry.config.public_ip),
        transport.local_fingerprints,
        cname=session.stream_id,
    )
    transport.start(
        offer.ice,
        offer.candidates,
        offer.fingerprints,
        offer.candidates_complete,
        offer.dtls_role,
    )
    logger.info("%r created for %s", session, request.remote)
    location = f"/{kind}/{session.stream_id}/{session.id}"
    return web.Response(
        status=201,
        text=answer,
        content_type=SDP_TYPE,
        headers={
            "Location": location,
            "ETag": session.etag,
            "Accept-Patch": TRICKLE_TYPE,
        },
    )


def announced_candidates(
    candidates: list[RTCIceCandidate], public_ip: str | None
) -> list[RTCIceCandidate]:
    """Our candidates, plus each one at the public address when we sit behind 1:1 NAT.

    The public copy is server-reflexive (RFC 8445 §5.1.1.2): same port, reached through
    the NAT; the host candidate stays first for peers on the same network.
    """
    if public_ip is None:
        return candidates
    public = [
        dataclasses.replace(
            c,
            ip=public_ip,
            type="srflx",
            foundation="nat" + c.foundation,
            # As far below the host candidate's as srflx is below host (RFC 8445
            # §5.1.2.1), so an ICE-TCP candidate stays below every UDP one.
            priority=c.priority
            - candidate_priority(c.component, "host")
            + candidate_priority(c.component, "srflx"),
            relatedAddress=c.ip,
            relatedPort=c.port,
        )
        for c in candidates
        if c.ip != public_ip
    ]
    return candidates + public


def _find_session(request: web.Request) -> Session:
    registry = request.app[REGISTRY]
    session = registry.sessions.get(request.match_info["session_id"])
    kind = request.path.split("/")[1]
    if (
        session is None
        or session.kind != kind
        or session.stream_id != request.match_info["stream_id"]
    ):
        raise session_not_found()
    return session


async def patch_session(request: web.Request) -> web.Response:
    """Trickle ICE candidates into a session (RFC 9725 §4.3.1), or restart its ICE
    when the fragment brings new credentials (§4.4.1)."""
    session = _find_session(request)
    if request.content_type == JSON_TYPE:
        return await _choose_quality(request, session)
    if_match = request.headers.get("If-Match")
    if if_match is not None and if_match not in ("*", session.etag):
        raise PreconditionFailed(
            "etag_mismatch", "If-Match does not name this session's ICE session."
        )
    limit = request.app[REGISTRY].config.max_sdp_bytes
    fragment = _parse_fragment(await read_body(request, TRICKLE_TYPE, limit))
    if fragment.ufrag in session.retired_ufrags:
        return web.Response(status=204)  # late trickle of before a restart: moot
    if fragment.ufrag is not None and fragment.ufrag != session.remote_ufrag:
        return await _restart_ice(request, session, fragment)
    for candidate in fragment.candidates:
        await session.transport.add_remote_candidate(candidate)
    if fragment.complete:
        await session.transport.add_remote_candidate(None)
    return web.Response(status=204)


def checked_quality(quality: object) -> str:
    """A quality a viewer may ask for, or a 400 naming them."""
    if quality not in QUALITIES:
        raise BadRequest(
            "bad_quality", f"quality is one of {', '.join(QUALITIES)}, not {quality!r}."
        )
    return quality


async def _choose_quality(request: web.Request, session: Session) -> web.Response:
    """`{"quality": "auto|high|medium|low"}`: another size of a simulcast stream for
    a viewer, from the new layer's next keyframe, in the same session (the viewer
    page's menu: no new connection, no black frame)."""
    if not isinstance(session, ViewerSession):
        raise UnsupportedMediaType(
            "unsupported_media_type",
            f"A publisher's session takes '{TRICKLE_TYPE}' only.",
        )
    limit = request.app[REGISTRY].config.max_sdp_bytes
    text = await read_body(request, JSON_TYPE, limit)
    try:
        quality = json.loads(text)["quality"]
    except (ValueError, KeyError, TypeError):
        raise BadRequest(
            "bad_quality", 'Send {"quality": "auto", "high", "medium" or "low"}.'
        ) from None
    await session.set_quality(checked_quality(quality))
    logger.info("%r chose quality %s", session, quality)
    return web.json_response({"quality": quality, "layer": session.layer})


async def _restart_ice(
    request: web.Request, session: Session, fragment: Fragment
) -> web.Response:
    """Restart ICE on the session's transport and answer our new credentials and
    candidates as a fragment (RFC 9725 §4.4.1, RFC 8840 §9) with a new ETag."""
    if fragment.ufrag is None or fragment.pwd is None:
        raise BadRequest(
            "ice_pwd_missing", "An ICE restart needs the new a=ice-ufrag and a=ice-pwd."
        )
    remote_ice = RTCIceParameters(
        usernameFragment=fragment.ufrag, password=fragment.pwd
    )
    transport = session.transport
    try:
        await transport.restart_ice(remote_ice, fragment.candidates, fragment.complete)
    except ConnectionError as exc:
        raise ServiceUnavailable(
            "ice_restart_failed", f"ICE could not restart: {exc}."
        ) from exc
    session.retired_ufrags.add(session.remote_ufrag)
    session.remote_ufrag = fragment.ufrag
    session.etag = f'"{secrets.token_hex(8)}"'
    logger.info("%r restarted ICE", session)
    public_ip = request.app[REGISTRY].config.public_ip
    candidates = announced_candidates(transport.local_candidates, public_ip)
    lines = [
        f"a=ice-ufrag:{transport.local_ice.usernameFragment}",
        f"a=ice-pwd:{transport.local_ice.password}",
        fragment.media_line or "m=audio 9 UDP/TLS/RTP/SAVPF 0",
        fragment.mid_line or "a=mid:0",
        *(f"a=candidate:{aiortc_sdp.candidate_to_sdp(c)}" for c in candidates),
        "a=end-of-candidates",
        "",
    ]
    return web.Response(
        status=200,
        body="\r\n".join(lines).encode(),
        headers={"Content-Type": TRICKLE_TYPE, "ETag": session.etag},
    )


@dataclasses.dataclass
class Fragment:
    """What a trickle-ice-sdpfrag (RFC 8840 §9) says: credentials, candidates, and
    the media section they are for (echoed in a restart's answer)."""

    ufrag: str | None = None
    pwd: str | None = None
    candidates: list[RTCIceCandidate] = dataclasses.field(default_factory=list)
    complete: bool = False
    media_line: str | None = None
    mid_line: str | None = None


def _parse_fragment(text: str) -> Fragment:
    fragment = Fragment()
    candidates = []
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("a=ice-ufrag:"):
            fragment.ufrag = line.split(":", 1)[1]
        elif line.startswith("a=ice-pwd:"):
            fragment.pwd = line.split(":", 1)[1]
        elif line.startswith("m=") and fragment.media_line is None:
            fragment.media_line = line
        elif line.startswith("a=mid:") and fragment.mid_line is None:
            fragment.mid_line = line
        elif line.startswith("a=candidate:"):
            try:
                candidate = aiortc_sdp.candidate_from_sdp(line.split(":", 1)[1])
            except (ValueError, IndexError) as exc:
                raise BadRequest(
                    "malformed_candidate", f"Bad candidate line: {exc}."
                ) from exc
            candidates.append(candidate)
        elif line == "a=end-of-candidates":
            fragment.complete = True
    fragment.candidates = usable_candidates(candidates)
    return fragment


async def delete_session(request: web.Request) -> web.Response:
    """End a publish or watch session (RFC 9725 §4.2), also one whose connection the
    client closed just before."""
    ended = await request.app[REGISTRY].end_session(
        request.match_info["session_id"],
        request.path.split("/")[1],
        request.match_info["stream_id"],
    )
    if not ended:
        raise session_not_found()
    return web.Response(status=200)


async def options(request: web.Request) -> web.Response:
    """CORS pre-flight, and the ICE servers a client may use (RFC 9725 §4.6)."""
    response = web.Response(status=204)
    for link in ice_server_links(request.app[REGISTRY].config):
        response.headers.add("Link", link)
    return response
