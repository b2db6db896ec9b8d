"""`POST /check/ice`: a connection with nothing in it, so a browser can test its path.

The `/check` page offers one inactive audio m-line; we answer, connect ICE and DTLS, and
let the session go after a few seconds. Which candidate pair the browser selects tells
the operator (and the viewer) whether UDP works directly or only through TURN.
"""

from __future__ import annotations

import time

from aiohttp import web

from broadcast.media.transport_protocol import Transport
from broadcast.session import Session
from broadcast.signaling.admission import ADMISSION
from broadcast.signaling.sdp import MediaAnswer
from broadcast.signaling.session import answer_session

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
    async with request.app[ADMISSION].probe(request, PROBE_NAME) as admitted:
        answers = [
            MediaAnswer(offered=media) for media in admitted.offer.description.media
        ]

        def make_probe(transport: Transport) -> Probe:
            return Probe(PROBE_NAME, transport, admitted.offer.ufrag)

        return await answer_session(request, admitted, answers, make_probe, "check")
