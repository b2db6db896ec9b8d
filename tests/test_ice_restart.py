"""ICE restart over PATCH (RFC 9725 §4.4.1): new credentials both ways, media on a new
path, the same session and DTLS association.

aiortc's RTCPeerConnection cannot restart ICE, so the test peer does what a browser does
by hand on its own aioice connection: new credentials and a new UDP socket (its network
changed), the PATCH, a check with the server's new credentials on the new socket, then
the old socket closes. Media still arriving can only have come by the new path, and the
peer never ran a second DTLS handshake (its DTLS transport is the one it had).
"""

from __future__ import annotations

import asyncio
import secrets
import struct

import aiohttp
import aioice
import pytest
from aioice import stun
from aioice.candidate import Candidate, candidate_priority
from aioice.ice import CandidatePair, StunProtocol
from aiortc import RTCPeerConnection
from aiortc import sdp as aiortc_sdp
from aiortc.rtcicetransport import candidate_from_aioice, candidate_to_aioice

from broadcast.web_keys import REGISTRY
from broadcast.workers.remote import RemoteViewer
from tests.peers import Peer, publish, wait_for, watch

TRICKLE = {"Content-Type": "application/trickle-ice-sdpfrag"}


def ice_connection(pc: RTCPeerConnection) -> aioice.Connection:
    dtls = pc.getTransceivers()[0].receiver.transport
    return dtls.transport.iceGatherer._connection


def fragment_values(body: str, prefix: str) -> list[str]:
    return [
        line[len(prefix) :] for line in body.splitlines() if line.startswith(prefix)
    ]


class Move:
    """A peer's network change: a new socket and new ICE credentials, not yet used."""

    def __init__(self, peer: Peer) -> None:
        self.peer = peer
        self.connection = ice_connection(peer.pc)
        self.ufrag = secrets.token_hex(4)
        self.pwd = secrets.token_hex(12)
        self.protocol: StunProtocol | None = None

    async def open_socket(self) -> Candidate:
        loop = asyncio.get_running_loop()
        _, protocol = await loop.create_datagram_endpoint(
            lambda: StunProtocol(self.connection), local_addr=("127.0.0.1", 0)
        )
        host, port = protocol.transport.get_extra_info("sockname")[:2]
        protocol.local_candidate = Candidate(
            foundation="moved",
            component=1,
            transport="udp",
            priority=candidate_priority(1, "host"),
            host=host,
            port=port,
            type="host",
        )
        self.protocol = protocol
        return protocol.local_candidate

    async def fragment(self) -> str:
        """The restart's PATCH body, as RFC 8840 §9 lays it out."""
        candidate = await self.open_socket()
        sdp = self.peer.pc.localDescription.sdp.splitlines()
        first = next(line for line in sdp if line.startswith("m="))
        mid = next(line for line in sdp if line.startswith("a=mid:"))
        line = aiortc_sdp.candidate_to_sdp(candidate_from_aioice(candidate))
        return (
            f"a=ice-ufrag:{self.ufrag}\r\na=ice-pwd:{self.pwd}\r\n{first}\r\n{mid}\r\n"
            f"a=candidate:{line}\r\na=end-of-candidates\r\n"
        )

    async def complete(self, answer: str) -> None:
        """Check the new path with the server's new credentials (we control ICE and
        nominate at once, as aiortc does), then leave the old socket."""
        connection, protocol = self.connection, self.protocol
        assert protocol is not None
        old = [p for p in connection._protocols if p is not protocol]
        connection._local_username, connection._local_password = self.ufrag, self.pwd
        (ufrag,) = fragment_values(answer, "a=ice-ufrag:")
        (pwd,) = fragment_values(answer, "a=ice-pwd:")
        connection.remote_username, connection.remote_password = ufrag, pwd
        for pair in connection._check_list:
            if pair.task is not None:
                pair.task.cancel()
        connection._check_list = []
        connection._remote_candidates = []
        connection._protocols.append(protocol)
        (server,) = [
            candidate_to_aioice(aiortc_sdp.candidate_from_sdp(c))
            for c in fragment_values(answer, "a=candidate:")
            if " udp " in c
        ]
        server._network_host = server.host
        pair = CandidatePair(protocol, server)
        connection._check_list.append(pair)
        await asyncio.wait_for(connection.check_start(pair), 10)
        assert pair.state == CandidatePair.State.SUCCEEDED
        assert connection._nominated[1] is pair
        for gone in old:
            connection._protocols.remove(gone)
            await gone.close()


async def restart(
    http: aiohttp.ClientSession, url: str, peer: Peer, viewer: Peer
) -> Move:
    """Restart `peer`'s ICE on a new socket; checks the server's answer, and that
    `viewer` gets video meanwhile: until the new path is checked and nominated the old
    one carries the media (RFC 8445 §9)."""
    move = Move(peer)
    fragment = await move.fragment()
    async with http.patch(
        url, data=fragment, headers={**TRICKLE, "If-Match": peer.etag}
    ) as r:
        body = await r.text()
        assert r.status == 200, body
        assert r.headers["Content-Type"] == TRICKLE["Content-Type"]
        etag = r.headers["ETag"]
    assert etag != peer.etag
    offered = peer.pc.remoteDescription.sdp
    (ufrag,) = fragment_values(body, "a=ice-ufrag:")
    (pwd,) = fragment_values(body, "a=ice-pwd:")
    assert f"a=ice-ufrag:{ufrag}" not in offered
    assert f"a=ice-pwd:{pwd}" not in offered
    lines = body.splitlines()
    assert lines[:2] == [f"a=ice-ufrag:{ufrag}", f"a=ice-pwd:{pwd}"]
    assert lines[2].startswith("m=") and lines[3].startswith("a=mid:")
    assert lines[-1] == "a=end-of-candidates"
    await frames_keep_coming(viewer)
    await move.complete(body)
    peer.etag = etag
    return move


def video_frames(peer: Peer) -> int:
    return len(getattr(peer, "frames", {}).get("video", []))


async def frames_keep_coming(viewer: Peer, count: int = 15) -> None:
    before = video_frames(viewer)
    await wait_for(
        lambda: video_frames(viewer) >= before + count,
        timeout=10,
        message="no video after the ICE restart",
    )


@pytest.mark.parametrize("workers", [1, 2])
async def test_a_viewer_restarts_ice_onto_a_new_path(make_server, http, workers):
    server = await make_server(workers=workers)
    registry = server.app[REGISTRY]
    publisher = await publish(http, str(server.make_url("/whip/r")))
    await publisher.wait_connected()
    viewers = [await watch(http, str(server.make_url("/whep/r"))) for _ in range(2)]
    for viewer in viewers:
        await viewer.wait_connected()
    # With a worker, restart the viewer the worker carries.
    remote = {
        v.location for v in viewers if isinstance(session_of(server, v), RemoteViewer)
    }
    assert len(remote) == workers - 1
    viewer = next(v for v in viewers if v.location in remote or workers == 1)
    session = session_of(server, viewer)
    dtls = viewer.pc.getTransceivers()[0].receiver.transport
    await frames_keep_coming(viewer)

    await restart(http, str(server.make_url(viewer.location)), viewer, viewer)
    await frames_keep_coming(viewer)
    assert registry.sessions[session.id] is session and not session.closed
    assert viewer.pc.getTransceivers()[0].receiver.transport is dtls
    assert dtls.state == "connected"
    # A second restart works as well as the first.
    await restart(http, str(server.make_url(viewer.location)), viewer, viewer)
    await frames_keep_coming(viewer)
    for peer in [*viewers, publisher]:
        await peer.close()


async def test_a_publisher_restarts_ice_onto_a_new_path(server, http):
    publisher = await publish(http, str(server.make_url("/whip/p")))
    await publisher.wait_connected()
    viewer = await watch(http, str(server.make_url("/whep/p")))
    await viewer.wait_connected()
    await frames_keep_coming(viewer)
    session = session_of(server, publisher)

    url = str(server.make_url(publisher.location))
    move = await restart(http, url, publisher, viewer)
    await frames_keep_coming(viewer)
    assert move.protocol is not None
    new_address = move.protocol.transport.get_extra_info("sockname")[:2]
    assert session.transport.remote_address == new_address
    assert not session.closed
    await viewer.close()
    await publisher.close()


async def test_restart_preconditions_and_late_trickle(server, http):
    publisher = await publish(http, str(server.make_url("/whip/q")))
    await publisher.wait_connected()
    url = str(server.make_url(publisher.location))
    session = session_of(server, publisher)
    old_ufrag = session.remote_ufrag
    move = Move(publisher)
    fragment = await move.fragment()
    async with http.patch(
        url, data=fragment, headers={**TRICKLE, "If-Match": '"stale"'}
    ) as r:
        assert r.status == 412
    no_pwd = "\r\n".join(
        line for line in fragment.splitlines() if not line.startswith("a=ice-pwd:")
    )
    async with http.patch(url, data=no_pwd, headers=TRICKLE) as r:
        assert r.status == 400
        assert (await r.json())["error"] == "ice_pwd_missing"
    assert session.remote_ufrag == old_ufrag
    # If-Match: * is allowed for a restart (RFC 9725 §4.4.1).
    async with http.patch(
        url, data=fragment, headers={**TRICKLE, "If-Match": "*"}
    ) as r:
        assert r.status == 200
        etag = r.headers["ETag"]
        body = await r.text()
    await move.complete(body)
    assert session.remote_ufrag == move.ufrag
    # The old ETag names an ICE session that is gone; a late trickle of the old
    # credentials is moot, and starts no restart back to them.
    old = f"a=ice-ufrag:{old_ufrag}\r\na=ice-pwd:x{'0' * 22}\r\na=end-of-candidates\r\n"
    async with http.patch(
        url, data=old, headers={**TRICKLE, "If-Match": publisher.etag}
    ) as r:
        assert r.status == 412
    async with http.patch(url, data=old, headers={**TRICKLE, "If-Match": etag}) as r:
        assert r.status == 204
    assert session.remote_ufrag == move.ufrag and session.etag == etag
    await publisher.close()


async def tcp_check(host: str, port: int, username: str, pwd: str) -> bool:
    """An ICE-TCP check (RFC 6544, RFC 4571 framing) on a new connection: whether it
    got a success response, so the connection was routed to the session by the
    ufrag it names and the check was signed with its password."""
    request = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
    request.attributes["USERNAME"] = username
    request.attributes["PRIORITY"] = candidate_priority(1, "host")
    request.attributes["ICE-CONTROLLING"] = secrets.randbits(64)
    request.add_message_integrity(pwd.encode())
    reader, writer = await asyncio.open_connection(host, port)
    try:
        data = bytes(request)
        writer.write(struct.pack("!H", len(data)) + data)
        (length,) = struct.unpack("!H", await reader.readexactly(2))
        response = stun.parse_message(await reader.readexactly(length))
        return response.message_class == stun.Class.RESPONSE
    except (asyncio.IncompleteReadError, ConnectionError):
        return False  # refused: no session has that ufrag
    finally:
        writer.close()


async def test_ice_tcp_finds_the_session_by_its_new_ufrag(server, http):
    publisher = await publish(http, str(server.make_url("/whip/t")))
    await publisher.wait_connected()
    old = fragment_values(publisher.pc.remoteDescription.sdp, "a=ice-ufrag:")[0]
    old_pwd = fragment_values(publisher.pc.remoteDescription.sdp, "a=ice-pwd:")[0]
    move = Move(publisher)
    fragment = await move.fragment()
    url = str(server.make_url(publisher.location))
    async with http.patch(url, data=fragment, headers=TRICKLE) as r:
        body = await r.text()
        assert r.status == 200
    await move.complete(body)
    (ufrag,) = fragment_values(body, "a=ice-ufrag:")
    (pwd,) = fragment_values(body, "a=ice-pwd:")
    (tcp,) = [c for c in fragment_values(body, "a=candidate:") if " tcp " in c]
    host, port = tcp.split()[4], int(tcp.split()[5])
    assert await tcp_check(host, port, f"{ufrag}:{move.ufrag}", pwd)
    assert not await tcp_check(host, port, f"{old}:{move.ufrag}", old_pwd)
    await publisher.close()


def session_of(server, peer: Peer):
    return server.app[REGISTRY].sessions[peer.location.rsplit("/", 1)[1]]
