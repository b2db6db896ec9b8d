"""Where a session's ICE candidates come from: our sockets, not aioice's.

aioice gathers on every interface except loopback, on an ephemeral port per
connection, and has no option for either: a server bound to one address must offer
that address only, and a firewall opened for a port must see media on it only. So a
session's host candidates are on the server's shared media sockets (UDP, and the
ICE-TCP listener of the same port), or, in port-range mode, on a port of its own from
the range; with a STUN server, each UDP one also gets its reflexive twin.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import secrets
from collections.abc import Sequence

import aioice
import aioice.stun
from aioice.candidate import Candidate, candidate_foundation, candidate_priority
from aioice.ice import StunProtocol, get_host_addresses, server_reflexive_candidate

from broadcast.media.tcp_mux import MediaTcpListener, tcp_candidate_priority
from broadcast.media.udp_mux import MediaSocket


def gather_our_way(
    connection: aioice.Connection,
    addresses: Sequence[str],
    ports: tuple[int, int] | None,
    media_sockets: Sequence[MediaSocket],
    tcp_listeners: Sequence[MediaTcpListener],
) -> None:
    """Make aioice gather host candidates on our shared media sockets (and ICE-TCP
    listeners), or else on `addresses` within `ports`."""

    async def gather_candidates() -> None:
        if connection._local_candidates_start:
            return
        connection._local_candidates_start = True
        for component in connection._components:
            if media_sockets:
                found = await _candidates_on_shared_sockets(
                    connection, component, media_sockets
                )
                found += [
                    _passive_tcp_candidate(connection, component, listener)
                    for listener in tcp_listeners
                ]
            elif ports is None:
                found = await connection.get_component_candidates(
                    component=component, addresses=list(addresses)
                )
            else:
                found = await _candidates_in_range(
                    connection, component, addresses, ports
                )
            connection._local_candidates += found
        connection._local_candidates_end = True
        if connection._closing:
            # Closed while we gathered (a STUN server takes up to 5 s): aioice has
            # closed the protocols it had; those added since are ours to close.
            for protocol in connection._protocols:
                protocol.transport.close()
            connection._protocols.clear()

    connection.gather_candidates = gather_candidates  # type: ignore[method-assign]


async def _candidates_in_range(
    connection: aioice.Connection,
    component: int,
    addresses: Sequence[str],
    ports: tuple[int, int],
) -> list[Candidate]:
    """Host candidates on ports of `ports` (and their STUN reflexive twins)."""
    loop = asyncio.get_running_loop()
    candidates: list[Candidate] = []
    for address in addresses or get_host_addresses(use_ipv4=True, use_ipv6=False):
        protocol = await _bind_in_range(loop, connection, address, ports)
        candidates += await _candidates_of(connection, component, protocol)
    return candidates


async def _candidates_on_shared_sockets(
    connection: aioice.Connection,
    component: int,
    media_sockets: Sequence[MediaSocket],
) -> list[Candidate]:
    """Host candidates on the server's shared media sockets, one per address.

    aioice's 4-character ICE username fragments (~24 bits) would collide among
    thousands of sessions sharing a port, and they route its STUN: 64 bits instead
    (RFC 8445 §5.3 allows up to 256 characters).
    """
    connection._local_username = secrets.token_hex(8)
    candidates: list[Candidate] = []
    for media in media_sockets:
        candidates += await _candidates_of(
            connection, component, media.attach(connection)
        )
    return candidates


def _passive_tcp_candidate(
    connection: aioice.Connection, component: int, listener: MediaTcpListener
) -> Candidate:
    """The ICE-TCP candidate (RFC 6544 §4.5: passive, its real port) on `listener`."""
    protocol = listener.attach(connection)
    host, port = listener.address
    protocol.local_candidate = Candidate(
        foundation=candidate_foundation("host", "tcp", host),
        component=component,
        transport="tcp",
        priority=tcp_candidate_priority(component),
        host=host,
        port=port,
        type="host",
        tcptype="passive",
    )
    connection._protocols.append(protocol)
    return protocol.local_candidate


async def _candidates_of(
    connection: aioice.Connection, component: int, protocol: StunProtocol
) -> list[Candidate]:
    """The host candidate of `protocol`'s address, and its STUN reflexive twin."""
    host, port = protocol.transport.get_extra_info("sockname")[:2]
    protocol.local_candidate = Candidate(
        foundation=candidate_foundation("host", "udp", host),
        component=component,
        transport="udp",
        priority=candidate_priority(component, "host"),
        host=host,
        port=port,
        type="host",
    )
    connection._protocols.append(protocol)
    candidates = [protocol.local_candidate]
    if connection.stun_server and ipaddress.ip_address(host).version == 4:
        with contextlib.suppress(OSError, TimeoutError, aioice.stun.TransactionFailed):
            reflexive, _ = await asyncio.wait_for(
                server_reflexive_candidate(protocol, connection.stun_server), 5
            )
            candidates.append(reflexive)
    return candidates


async def _bind_in_range(
    loop: asyncio.AbstractEventLoop,
    connection: aioice.Connection,
    address: str,
    ports: tuple[int, int],
) -> StunProtocol:
    first, last = ports
    count = last - first + 1
    start = secrets.randbelow(count)  # spread sessions over the range
    for offset in range(count):
        port = first + (start + offset) % count
        try:
            _, protocol = await loop.create_datagram_endpoint(
                lambda: StunProtocol(connection), local_addr=(address, port)
            )
        except OSError:
            continue
        return protocol
    raise OSError(f"no free UDP port in {first}-{last} on {address}")
