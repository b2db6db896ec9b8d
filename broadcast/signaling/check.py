"""`POST /check/ice`: a connection with nothing in it, so a browser can test its path.

The `/check` page offers one inactive audio m-line; we answer, connect ICE and DTLS, and
let the session go after a few seconds. Which candidate pair the browser selects tells
the operator (and the viewer) whether UDP works directly or only through TURN.
"""

from __future__ import annotations

import time

from aiohttp import web

from broadcast.limits import client_address
from broadcast.media.transport_protocol import Transport
from broadcast.session import Session
from broadcast.signaling.http import SDP_TYPE, read_body
from broadcast.signaling.sdp import MediaAnswer, parse_offer
from broadcast.signaling.session import answer_session
from broadcast.web_keys import REGISTRY

# Long enough for a page to read its stats, short enough that probes cost nothing.
PROBE_LIFETIME_S = 10.0
PROBE_NAME = "probe"


class Probe(Session):
    """A connectivity probe: ICE and DTLS only, ended after PROBE_LIFETIME_S."""

    kind = "check"

    def failure(self) -> str | None:
        if time.monotonic() - self.started_at > PROBE_LIFETIME_S:
            return "probe done"
        return None


async def post_check(request: web.Request) -> web.Response:
    registry = request.app[REGISTRY]
    registry.session_rate.take(client_address(request))
    offer = parse_offer(
        await read_body(request, SDP_TYPE, registry.config.max_sdp_bytes)
    )
    answers = [MediaAnswer(offered=media) for media in offer.description.media]

    def make_probe(transport: Transport) -> Probe:
        return Probe(PROBE_NAME, transport, offer.ufrag)

    return await answer_session(
        request, offer, answers, make_probe, "check", PROBE_NAME
    )
