"""Baseline for bench/fanout.py: stock aiortc, one RTCPeerConnection per session and
`MediaRelay` from the publisher's tracks to every viewer.

This is what a relay written the obvious way with aiortc costs: the receiver decodes
the publisher's video once, and every viewer's RTCRtpSender encodes it again (aiortc has
no way to forward encoded frames from a receiver). Subscriptions are unbuffered (the
latest frame only), so a sender that falls behind skips frames instead of queueing
them in memory; a blackhole keeps the source drained while nobody watches.

    python bench/mediarelay_server.py --port 8090   # POST /whip/<id>, POST /whep/<id>
"""

from __future__ import annotations

import argparse
import itertools

import aioice.ice
from aiohttp import web
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaBlackhole, MediaRelay
from aiortc.mediastreams import MediaStreamTrack

SDP = "application/sdp"
STREAMS = web.AppKey("streams", dict[str, dict[str, MediaStreamTrack]])
SESSIONS = web.AppKey("sessions", dict[str, RTCPeerConnection])
RELAY = web.AppKey("relay", MediaRelay)
_ids = itertools.count(1)


async def _answer(
    request: web.Request, pc: RTCPeerConnection, kind: str
) -> web.Response:
    offer = RTCSessionDescription(await request.text(), "offer")
    await pc.setRemoteDescription(offer)
    if kind == "whep":
        relay = request.app[RELAY]
        for track in request.app[STREAMS].get(request.match_info["id"], {}).values():
            pc.addTrack(relay.subscribe(track, buffered=False))
    await pc.setLocalDescription(await pc.createAnswer())
    session = str(next(_ids))
    request.app[SESSIONS][session] = pc
    return web.Response(
        status=201,
        text=pc.localDescription.sdp,
        content_type=SDP,
        headers={"Location": f"/{kind}/{request.match_info['id']}/{session}"},
    )


async def whip(request: web.Request) -> web.Response:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    tracks = request.app[STREAMS].setdefault(request.match_info["id"], {})
    drain = MediaBlackhole()

    @pc.on("track")
    async def on_track(track: MediaStreamTrack) -> None:
        tracks[track.kind] = track
        drain.addTrack(request.app[RELAY].subscribe(track, buffered=False))
        await drain.start()

    return await _answer(request, pc, "whip")


async def whep(request: web.Request) -> web.Response:
    if request.match_info["id"] not in request.app[STREAMS]:
        raise web.HTTPNotFound(text="no such stream")
    return await _answer(
        request, RTCPeerConnection(RTCConfiguration(iceServers=[])), "whep"
    )


async def delete(request: web.Request) -> web.Response:
    pc = request.app[SESSIONS].pop(request.match_info["session"], None)
    if pc is None:
        raise web.HTTPNotFound()
    await pc.close()
    return web.Response(status=200)


async def healthz(_: web.Request) -> web.Response:
    return web.Response(text="ok")


async def _close_all(app: web.Application) -> None:
    for pc in app[SESSIONS].values():
        await pc.close()


def create_app() -> web.Application:
    app = web.Application()
    app[STREAMS], app[SESSIONS], app[RELAY] = {}, {}, MediaRelay()
    app.router.add_post("/whip/{id}", whip)
    app.router.add_post("/whep/{id}", whep)
    app.router.add_delete("/{kind:whip|whep}/{id}/{session}", delete)
    app.router.add_get("/healthz", healthz)
    app.on_shutdown.append(_close_all)
    return app


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    # aioice skips loopback when gathering: offer 127.0.0.1 only, as our server does.
    aioice.ice.get_host_addresses = lambda **_: ["127.0.0.1"]
    web.run_app(create_app(), host="127.0.0.1", port=args.port, print=None)
