"""ICE-TCP on the media port: framing, routing by ICE username, and who gets refused.

A real browser or GStreamer viewer over ICE-TCP is in test_ice_tcp.py; here a raw TCP
client speaks RFC 4571 frames of real STUN to the server's listener.
"""

from __future__ import annotations

import asyncio
import re

from aioice import stun

from broadcast.media import tcp_mux
from broadcast.media.tcp_mux import FRAME_HEADER
from broadcast.web_keys import MEDIA, REGISTRY
from tests.peers import publish, wait_for, watch

CANDIDATE = re.compile(r"a=candidate:\S+ 1 (udp|tcp) (\d+) \S+ (\d+) typ host(.*)")


def binding_request(username: str, password: str) -> stun.Message:
    """A connectivity check as the viewer would send it (RFC 8445 §7.2.2)."""
    request = stun.Message(
        message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST
    )
    request.attributes["USERNAME"] = username
    request.attributes["PRIORITY"] = 1
    request.attributes["ICE-CONTROLLING"] = 1
    request.add_message_integrity(password.encode())
    return request


def signed_check(session, password: str | None = None) -> bytes:
    """The check `session`'s viewer would send on ICE-TCP, signed with its password."""
    local = session.transport.local_ice
    username = f"{local.usernameFragment}:{session.remote_ufrag}"
    return bytes(binding_request(username, password or local.password))


async def read_frame(reader: asyncio.StreamReader) -> bytes:
    (length,) = FRAME_HEADER.unpack(await reader.readexactly(FRAME_HEADER.size))
    return await asyncio.wait_for(reader.readexactly(length), 5)


async def viewer_session(server, http):
    """A live stream with one (UDP) viewer; its server-side session."""
    publisher = await publish(http, str(server.make_url("/whip/t")), video=None)
    await publisher.wait_connected()
    viewer = await watch(http, str(server.make_url("/whep/t")), kinds=("audio",))
    await viewer.wait_connected()
    registry = server.app[REGISTRY]
    (session,) = [s for s in registry.sessions.values() if s.kind == "whep"]
    return publisher, viewer, session


async def test_the_answer_offers_a_passive_tcp_candidate_below_udp(server, http):
    publisher, viewer, _ = await viewer_session(server, http)
    (listener,) = server.app[MEDIA].tcp_listeners
    found = CANDIDATE.findall(viewer.pc.remoteDescription.sdp)
    by_protocol = {
        protocol: (int(prio), int(port), rest) for protocol, prio, port, rest in found
    }
    assert by_protocol["tcp"][1] == by_protocol["udp"][1] == listener.address[1]
    assert "tcptype passive" in by_protocol["tcp"][2]
    assert by_protocol["tcp"][0] < by_protocol["udp"][0]
    await asyncio.gather(publisher.close(), viewer.close())


async def test_a_check_split_across_reads_is_answered_on_its_connection(server, http):
    """RFC 4571 frames reassembled from 1-byte reads reach the session named by the
    username; the answer, signed with its ICE password, comes back framed."""
    publisher, viewer, session = await viewer_session(server, http)
    (listener,) = server.app[MEDIA].tcp_listeners
    request = signed_check(session)
    reader, writer = await asyncio.open_connection(*listener.address)
    for byte in FRAME_HEADER.pack(len(request)) + request:
        writer.write(bytes([byte]))
        await writer.drain()
    response = stun.parse_message(await read_frame(reader))
    assert response.message_class == stun.Class.RESPONSE
    assert response.transaction_id == stun.parse_message(request).transaction_id
    assert response.attributes["XOR-MAPPED-ADDRESS"] == writer.get_extra_info(
        "sockname"
    )
    writer.close()
    assert viewer.pc.connectionState == "connected"  # the UDP path is untouched
    await asyncio.gather(publisher.close(), viewer.close())


async def test_a_wrong_password_gets_an_error_and_no_media_path(server, http):
    publisher, viewer, session = await viewer_session(server, http)
    (listener,) = server.app[MEDIA].tcp_listeners
    request = signed_check(session, password="x" * 22)
    reader, writer = await asyncio.open_connection(*listener.address)
    writer.write(FRAME_HEADER.pack(len(request)) + request)
    response = stun.parse_message(await read_frame(reader))
    assert response.message_class == stun.Class.ERROR
    assert response.attributes["ERROR-CODE"][0] == 401
    (peer,) = session.transport._connection._protocols[-1].peers.values()
    assert not peer.authenticated  # DTLS and SRTP from it are dropped
    writer.close()
    await asyncio.gather(publisher.close(), viewer.close())


async def test_strangers_are_disconnected_and_counted(server, http):
    """Junk first, a check naming nobody, or a response nobody asked for: closed."""
    publisher, viewer, _ = await viewer_session(server, http)
    (listener,) = server.app[MEDIA].tcp_listeners
    nobody = bytes(binding_request("nobody:x", "p" * 22))
    response = stun.Message(
        message_method=stun.Method.BINDING, message_class=stun.Class.RESPONSE
    )
    before = listener.unrouted
    for first in (b"\x16\xfe\xfd" + bytes(60), nobody, bytes(response)):
        reader, writer = await asyncio.open_connection(*listener.address)
        writer.write(FRAME_HEADER.pack(len(first)) + first)
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the server
        writer.close()
    assert listener.unrouted - before == 3
    assert viewer.pc.connectionState == "connected"
    await asyncio.gather(publisher.close(), viewer.close())


async def test_ice_tcp_off_offers_udp_only(make_server, http):
    server = await make_server(ice_tcp=False)
    assert server.app[MEDIA].tcp_listeners == []
    publisher, viewer, _ = await viewer_session(server, http)
    protocols = {p for p, *_ in CANDIDATE.findall(viewer.pc.remoteDescription.sdp)}
    assert protocols == {"udp"}
    await asyncio.gather(publisher.close(), viewer.close())


async def test_closing_the_listener_frees_the_port(make_server):
    server = await make_server()
    (listener,) = server.app[MEDIA].tcp_listeners
    address = listener.address
    server.app[MEDIA].close()
    await wait_for(lambda: not listener._server.is_serving(), message="still listening")
    try:
        await asyncio.open_connection(*address)
    except OSError:
        return
    raise AssertionError("the ICE-TCP port still accepts connections")


async def test_connections_are_capped_per_session_and_while_unnamed(
    server, http, monkeypatch
):
    """A flood of connections costs the flooder, not the server's descriptors."""
    monkeypatch.setattr(tcp_mux, "MAX_PENDING_PER_HOST", 2)
    publisher, viewer, session = await viewer_session(server, http)
    (listener,) = server.app[MEDIA].tcp_listeners
    silent = [await asyncio.open_connection(*listener.address) for _ in range(2)]
    reader, writer = await asyncio.open_connection(*listener.address)
    assert await asyncio.wait_for(reader.read(), 5) == b"", "a third unnamed one stayed"
    writer.close()
    for _, silent_writer in silent:
        silent_writer.close()
    await wait_for(lambda: not listener.pending, message="closed ones still pending")

    check = signed_check(session)
    named = []
    for _ in range(tcp_mux.MAX_CONNECTIONS_PER_SESSION + 1):
        reader, writer = await asyncio.open_connection(*listener.address)
        writer.write(FRAME_HEADER.pack(len(check)) + check)
        named.append((reader, writer))
    for reader, _ in named[:-1]:
        assert stun.parse_message(await read_frame(reader)).message_class in (
            stun.Class.RESPONSE,
            stun.Class.REQUEST,  # aioice's triggered check may come first
        )
    assert await asyncio.wait_for(named[-1][0].read(), 5) == b"", "one too many"
    for _, writer in named:
        writer.close()
    assert viewer.pc.connectionState == "connected"
    await asyncio.gather(publisher.close(), viewer.close())


async def test_a_viewer_that_stops_reading_loses_whole_frames_not_our_memory(
    server, http
):
    """Frames sent to a connection nobody reads: once the kernel's buffers and our
    1 MiB are full, frames are dropped whole, so what the viewer reads later is
    still a clean frame sequence."""
    publisher, viewer, session = await viewer_session(server, http)
    (listener,) = server.app[MEDIA].tcp_listeners
    check = signed_check(session)
    reader, writer = await asyncio.open_connection(*listener.address)
    writer.write(FRAME_HEADER.pack(len(check)) + check)
    await read_frame(reader)  # answered: the connection is the session's now
    (port,) = [
        p
        for p in session.transport._connection._protocols
        if isinstance(p, tcp_mux.TcpSessionPort)
    ]
    address = writer.get_extra_info("sockname")[:2]
    before = listener.send_dropped
    sent = 0
    while listener.send_dropped - before < 100 and sent < 50_000:  # <= 50 MB
        port.send(sent.to_bytes(4, "big") + bytes(996), address)
        sent += 1
    dropped = listener.send_dropped - before
    assert dropped == 100, f"nothing was dropped after {sent} frames"
    (peer,) = port.peers.values()
    assert (
        peer._transport.get_write_buffer_size() <= tcp_mux.MAX_SEND_BUFFER_BYTES + 1002
    )

    received = []
    while len(received) < sent - dropped:
        frame = await read_frame(reader)
        if len(frame) == 1000:  # not one of aioice's STUN checks
            received.append(frame)
    numbers = [int.from_bytes(f[:4], "big") for f in received]
    assert numbers == sorted(numbers) and numbers[0] == 0  # in order, the first kept
    assert all(f[4:] == bytes(996) for f in received)
    writer.close()
    await asyncio.gather(publisher.close(), viewer.close())
