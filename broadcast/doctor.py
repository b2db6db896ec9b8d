"""`broadcast doctor`: what an operator checks on the server when ICE fails.

Each check says OK, WARN or FAIL in plain words and what to do. It contacts nothing but
the configured STUN/TURN servers (to learn the public address they see) and this host.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from aioice import stun
from aioice.ice import get_host_addresses
from aioice.turn import create_turn_endpoint
from cryptography import x509

from broadcast.config import Config
from broadcast.signaling.ice_servers import turn_credentials

STUN_TIMEOUT_S = 3.0


@dataclass
class Finding:
    level: str  # OK, WARN or FAIL
    text: str

    def __str__(self) -> str:
        return f"{self.level:4}  {self.text}"


def run_checks(config: Config) -> list[Finding]:
    """Every check, in the order an operator would go through them."""
    return [
        *check_public_ip(config),
        *check_http_ports(config),
        *check_media_ports(config),
        *check_certificate(config),
        *asyncio.run(check_ice_servers(config)),
    ]


def check_public_ip(config: Config) -> Iterator[Finding]:
    local = set(get_host_addresses(use_ipv4=True, use_ipv6=True))
    if config.public_ip is None:
        announced = ", ".join(sorted(local)) or "none"
        yield Finding(
            "OK" if local else "WARN",
            f"no <ip> set: browsers get this host's addresses ({announced})"
            + ("" if local else "; set <ip> to the public address"),
        )
    elif config.public_ip in local:
        yield Finding("OK", f"<ip> {config.public_ip} is an address of this host")
    elif ipaddress.ip_address(config.public_ip).is_private:
        yield Finding(
            "WARN",
            f"<ip> {config.public_ip} is a private address that this host does not have;"
            " browsers outside that network cannot reach it",
        )
    else:
        yield Finding(
            "OK",
            f"<ip> {config.public_ip} is announced; this host is behind NAT, so the NAT"
            " must forward the media UDP ports to it unchanged (1:1)",
        )


def _tcp_state(host: str, port: int) -> str:
    """`free`, `ours` (something answers HTTP there) or `taken`."""
    probe_host = "127.0.0.1" if host in ("", "0.0.0.0", "::") else host
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(1)
        if probe.connect_ex((probe_host, port)) == 0:
            return "ours"
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return "taken"
    return "free"


def check_http_ports(config: Config) -> Iterator[Finding]:
    ports = [("HTTP", config.port)]
    if config.https_port:
        ports.append(("HTTPS", config.https_port))
    for name, port in ports:
        state = _tcp_state(config.host, port)
        if state == "ours":
            yield Finding("OK", f"{name} port {port}: something listens (the server?)")
        elif state == "free":
            yield Finding("OK", f"{name} port {port}: free for the server to use")
        else:
            yield Finding(
                "FAIL",
                f"{name} port {port}: taken and not answering; free it or change it",
            )


def check_media_ports(config: Config) -> Iterator[Finding]:
    host = "0.0.0.0" if config.host in ("", "::") else config.host
    if config.media_ports is None:
        first = config.media_port
        last = first + config.processes - 1
        kinds = {"UDP": socket.SOCK_DGRAM}
        if config.ice_tcp:
            kinds["TCP"] = socket.SOCK_STREAM
        for port in range(first, last + 1):
            for name, kind in kinds.items():
                with socket.socket(socket.AF_INET, kind) as sock:
                    try:
                        sock.bind((host, port))
                    except OSError:
                        yield Finding(
                            "WARN",
                            f"media {name} port {port}: taken (by a running server?);"
                            " media of every session shares it",
                        )
                        return
        ports = f"port {first}" if first == last else f"ports {first}-{last}"
        yield Finding(
            "OK",
            f"media {ports}: free; open {'it' if first == last else 'them'}"
            f" ({' and '.join(kinds)}) in the firewall",
        )
        return
    first, last = config.media_ports
    free = 0
    for port in range(first, last + 1):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            free += 1
    total = last - first + 1
    yield Finding(
        "OK" if free else "FAIL",
        f"media UDP ports {first}-{last}: {free} of {total} free"
        + ("" if free else "; each session needs one"),
    )


def check_certificate(config: Config) -> Iterator[Finding]:
    if not config.tls_certificate:
        yield Finding(
            "WARN",
            "no HTTPS: browsers allow the camera only on https:// (or http://localhost)",
        )
        return
    try:
        cert = x509.load_pem_x509_certificate(Path(config.tls_certificate).read_bytes())
    except (OSError, ValueError) as error:
        yield Finding("FAIL", f"certificate {config.tls_certificate}: {error}")
        return
    left = cert.not_valid_after_utc - datetime.datetime.now(datetime.UTC)
    if left.total_seconds() <= 0:
        yield Finding(
            "FAIL", f"certificate expired on {cert.not_valid_after_utc:%Y-%m-%d}"
        )
    else:
        level = "OK" if left.days >= 14 else "WARN"
        yield Finding(level, f"certificate valid for {left.days} more days")
    try:
        names = cert.extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        ).value
        covered = {str(ip) for ip in names.get_values_for_type(x509.IPAddress)}
        covered |= set(names.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        covered = set()
    if config.public_ip and config.public_ip not in covered:
        yield Finding(
            "WARN",
            f"certificate names {', '.join(sorted(covered)) or 'nothing'}, not {config.public_ip}:"
            " fine if browsers use one of those names, else they refuse the page",
        )


async def check_ice_servers(config: Config) -> list[Finding]:
    findings = []
    servers = [("STUN", url) for url in config.stun_servers]
    if not servers and not config.turn_servers:
        findings.append(
            Finding(
                "WARN",
                "no STUN/TURN server: viewers behind strict NAT or firewalls cannot connect;"
                " see deploy/coturn.conf",
            )
        )
    for kind, url in servers:
        address = _host_port(url)
        mapped = await _stun_binding(address) if address else None
        if mapped is None:
            findings.append(
                Finding("FAIL", f"{kind} {url}: no answer to a STUN request")
            )
            continue
        text = f"{kind} {url}: answers; it sees this host as {mapped[0]}"
        if config.public_ip and mapped[0] != config.public_ip and kind == "STUN":
            text += f", not <ip> {config.public_ip}: check <ip>"
            findings.append(Finding("WARN", text))
        else:
            findings.append(Finding("OK", text))
    for url in config.turn_servers:
        findings.append(await check_turn(url, config.turn_secret))
    return findings


async def check_turn(url: str, secret: str | None) -> Finding:
    """Allocate a relay on a TURN server as a browser would: over UDP, TCP (a
    `?transport=tcp` URL) or TLS (`turns:`), with the credentials the server hands out
    for `<turn_secret>` (ice_servers.turn_credentials)."""
    address = _host_port(url)
    if address is None:
        return Finding("FAIL", f"TURN {url}: no host in the URL")
    if secret is None:
        return Finding(
            "FAIL",
            f"TURN {url}: no <turn_secret>, so browsers get no credentials for it;"
            " set the static-auth-secret of the TURN server (deploy/coturn.conf)",
        )
    secure = url.startswith("turns:")
    transport = "tcp" if secure or url.endswith("transport=tcp") else "udp"
    username, password = turn_credentials(secret)
    try:
        relay, _ = await asyncio.wait_for(
            create_turn_endpoint(
                asyncio.DatagramProtocol,
                address,
                username,
                password,
                ssl=ssl.create_default_context() if secure else None,
                transport=transport,
            ),
            STUN_TIMEOUT_S,
        )
    except stun.TransactionFailed as error:
        code = error.response.attributes.get("ERROR-CODE", (0, ""))
        if code[0] == 401:
            return Finding(
                "FAIL",
                f"TURN {url}: refuses our credentials (401): <turn_secret> is not the"
                " TURN server's static-auth-secret",
            )
        return Finding(
            "FAIL", f"TURN {url}: refused the allocation: {code[0]} {code[1]}"
        )
    except ssl.SSLError as error:
        return Finding("FAIL", f"TURN {url}: TLS failed: {error.reason or error}")
    except (OSError, TimeoutError, stun.TransactionTimeout):
        return Finding(
            "FAIL",
            f"TURN {url}: no answer over {transport.upper()}"
            + (" with TLS" if secure else ""),
        )
    relayed = relay.get_extra_info("sockname")
    relay.close()
    return Finding(
        "OK",
        f"TURN {url}: allocates a relay ({relayed[0]}:{relayed[1]}) over"
        f" {transport.upper()}{' with TLS' if secure else ''} with our credentials",
    )


def _host_port(url: str) -> tuple[str, int] | None:
    parts = urlsplit(url.replace(":", "://", 1))
    if not parts.hostname:
        return None
    secure = url.startswith(("stuns:", "turns:"))  # RFC 7064/7065 default ports
    return parts.hostname, parts.port or (5349 if secure else 3478)


async def _stun_binding(address: tuple[str, int]) -> tuple[str, int] | None:
    """Send one STUN Binding request (RFC 8489) and return the mapped address."""
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[bytes] = loop.create_future()

    class Receiver(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
            if not answer.done():
                answer.set_result(data)

    request = stun.Message(
        message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST
    )
    try:
        transport, _ = await loop.create_datagram_endpoint(
            Receiver, remote_addr=address
        )
    except OSError:
        return None
    try:
        transport.sendto(bytes(request))
        data = await asyncio.wait_for(answer, STUN_TIMEOUT_S)
        response = stun.parse_message(data)
        mapped = response.attributes.get(
            "XOR-MAPPED-ADDRESS"
        ) or response.attributes.get("MAPPED-ADDRESS")
        return tuple(mapped) if mapped else None
    except (TimeoutError, ValueError, OSError):
        return None
    finally:
        transport.close()
