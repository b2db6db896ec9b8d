"""A viewer's media may arrive on another pair than the one ICE completed on here.

Chromium nominates every pair it checks and uses the best that works; the server's ICE
(aioice) keeps the first pair to succeed and cancels its other checks. When Chromium's
ICE-TCP check wins that race, Chromium still sends DTLS over UDP: ~1 viewer page in 15
never connected on a loaded machine once the page sent its offer before gathering.
So while DTLS is set up the selected pair follows the viewer's media to a pair it
nominated (bench/page_open.py exercises that); once connected, it holds.
"""

from __future__ import annotations

import asyncio
import socket

from aioice import stun
from aioice.candidate import candidate_priority

from broadcast.web_keys import REGISTRY
from tests.peers import publish, wait_for, watch

RTP_LIKE = bytes([0x80, 96]) + bytes(38)


async def test_once_connected_a_nomination_from_elsewhere_does_not_move_the_pair(
    server, http
):
    publisher = await publish(http, str(server.make_url("/whip/moves")), audio=None)
    await publisher.wait_connected()
    viewer = await watch(http, str(server.make_url("/whep/moves")), kinds=("video",))
    await viewer.wait_connected()
    (session,) = [s for s in server.app[REGISTRY].sessions.values() if s.kind == "whep"]
    transport = session.transport
    ice = transport._connection
    selected = ice._nominated[1]
    here = (selected.local_candidate.host, selected.local_candidate.port)

    # Another socket claims to be the viewer: the viewer's own goes silent.
    (transceiver,) = viewer.pc.getTransceivers()
    peer_ice = transceiver.receiver.transport.transport._connection

    async def silent(data: bytes, component: int) -> None:
        pass

    peer_ice.sendto = silent

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other:
        other.bind(("127.0.0.1", 0))
        other.setblocking(False)
        elsewhere = other.getsockname()
        # The viewer's check from another of its candidates, nominating that pair
        # (authenticated with the server's ICE password, as only the viewer can).
        check = stun.Message(
            message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST
        )
        check.attributes["USERNAME"] = f"{ice.local_username}:{ice.remote_username}"
        check.attributes["PRIORITY"] = candidate_priority(1, "prflx")
        check.attributes["ICE-CONTROLLING"] = 1
        check.attributes["USE-CANDIDATE"] = None
        check.add_message_integrity(ice.local_password.encode())
        check.add_fingerprint()
        other.sendto(bytes(check), here)
        await wait_for(
            lambda: any(
                p.remote_addr == elsewhere and p.remote_nominated
                for p in ice._check_list
            ),
            message="the server never took the viewer's check",
        )
        foreign = transport.foreign_packets
        other.sendto(RTP_LIKE, here)
        # Once DTLS is up the pair holds: the fan-out sends to the selected pair's
        # address, and an address we never checked may be a forged source (RFC 7675).
        await wait_for(
            lambda: transport.foreign_packets > foreign,
            timeout=2,
            message="a datagram from elsewhere was taken as the viewer's",
        )
        assert ice._nominated[1] is selected
    await asyncio.gather(viewer.close(), publisher.close())
