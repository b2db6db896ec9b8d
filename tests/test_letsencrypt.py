"""install.sh --letsencrypt against a real ACME server: Debian's pebble (Let's Encrypt's
own test server), with pebble-challtestsrv as the DNS that tells pebble where the test
domains live. Everything stays in the test's network namespace: pebble validates HTTP-01
by connecting to port 80 on 127.0.0.1, where certbot's standalone server answers, as it
would on a server on the internet.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509

from tests.peers import publish, wait_for, watch
from tests.test_install import (
    INSTALL_SH,
    Install,
    _build_wheelhouse,
    _free_port,
    _succeeded,
)
from tests.test_server import self_signed

DOMAIN = "tv.example.test"


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is missing: apt-get install -y pebble certbot")
    return path


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_listening(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 20
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), 1):
                return
        except OSError:
            assert process.poll() is None, f"{process.args!r} exited"
            assert time.monotonic() < deadline, f"{process.args!r} did not listen"
            time.sleep(0.1)


@dataclass
class Acme:
    directory: str  # the ACME directory URL, for --acme-server
    https_ca: Path  # what pebble's own HTTPS endpoint is signed with
    management: int  # pebble's management port (its issuing root)
    dns_management: int  # pebble-challtestsrv's management port (DNS records)

    @property
    def env(self) -> dict[str, str]:
        """certbot (Python requests) trusts pebble's endpoint through this variable."""
        return {**os.environ, "REQUESTS_CA_BUNDLE": str(self.https_ca)}

    def point(self, host: str, address: str) -> None:
        """An A record for `host`, as a DNS provider would publish it."""
        body = json.dumps({"host": host, "addresses": [address]}).encode()
        url = f"http://127.0.0.1:{self.dns_management}/add-a"
        urllib.request.urlopen(url, body, timeout=5).close()

    def issuing_root(self) -> str:
        """The root pebble signs certificates with (a new one each time it starts)."""
        context = ssl.create_default_context(cafile=str(self.https_ca))
        url = f"https://127.0.0.1:{self.management}/roots/0"
        with urllib.request.urlopen(url, timeout=5, context=context) as response:
            return response.read().decode()


@contextlib.contextmanager
def running_acme(base: Path) -> Iterator[Acme]:
    """pebble and its DNS on free ports of 127.0.0.1, with a CA of their own."""
    cert, key = self_signed(base, "127.0.0.1")
    port, management = _free_port(), _free_port()
    dns, dns_management = _free_udp_port(), _free_port()
    config = base / "pebble.json"
    config.write_text(
        json.dumps(
            {
                "pebble": {
                    "listenAddress": f"127.0.0.1:{port}",
                    "managementListenAddress": f"127.0.0.1:{management}",
                    "certificate": cert,
                    "privateKey": key,
                    "httpPort": 80,
                    "tlsPort": 443,
                    "ocspResponderURL": "",
                    "externalAccountBindingRequired": False,
                }
            }
        )
    )
    commands = [
        # Only the DNS and its management API: no challenge servers of its own.
        [
            _tool("pebble-challtestsrv"),
            *("-dns01", f"127.0.0.1:{dns}"),
            *("-management", f"127.0.0.1:{dns_management}"),
            *("-http01", "", "-https01", "", "-tlsalpn01", ""),
            *("-defaultIPv4", "", "-defaultIPv6", ""),  # unknown names do not resolve
        ],
        [_tool("pebble"), "-config", str(config), "-dnsserver", f"127.0.0.1:{dns}"],
    ]
    # No sleeps before validating, and no nonces refused at random (5 % by default).
    env = {**os.environ, "PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0"}
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for command in commands:
            processes.append(
                subprocess.Popen(
                    command,
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        _wait_listening(dns_management, processes[0])
        _wait_listening(port, processes[1])
        yield Acme(
            f"https://127.0.0.1:{port}/dir", Path(cert), management, dns_management
        )
    finally:
        for process in processes:
            process.kill()
            process.wait(10)


@pytest.fixture(scope="module")
def acme(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Acme]:
    with running_acme(tmp_path_factory.mktemp("acme")) as running:
        yield running


@pytest.fixture(scope="module")
def second_acme(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Acme]:
    """Another ACME server: as Let's Encrypt's staging one is to its real one."""
    with running_acme(tmp_path_factory.mktemp("acme")) as running:
        yield running


def _install_args(root: Path, domain: str, acme: Acme, *extra: str) -> list[str]:
    return [
        *("--root", str(root), "--no-systemd", "--yes", "--ip", "127.0.0.1"),
        *("--domain", domain, "--letsencrypt", "ops@example.test"),
        *("--acme-server", acme.directory),
        *("--python", sys._base_executable),  # type: ignore[attr-defined]
        *extra,
    ]


def _run(args: list[str], acme: Acme) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(INSTALL_SH), *args],
        capture_output=True,
        text=True,
        timeout=500,
        stdin=subprocess.DEVNULL,
        env=acme.env,
    )


def _served_certificate(port: int, root_pem: str) -> x509.Certificate:
    """The certificate the server presents for DOMAIN, verified against `root_pem`."""
    context = ssl.create_default_context(cadata=root_pem)
    with socket.create_connection(("127.0.0.1", port), 5) as raw:
        with context.wrap_socket(raw, server_hostname=DOMAIN) as tls:
            der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


@pytest.mark.timeout(600)
async def test_a_certificate_is_issued_served_and_renewed_under_a_live_broadcast(
    acme: Acme, second_acme: Acme, tmp_path: Path
) -> None:
    """Issued, served and renewed; then, on re-runs of install.sh: one from another
    ACME server replaces it at once (staging, then the real one), and a certificate
    of one's own replaces it for good (its renewal deleted)."""
    acme.point(DOMAIN, "127.0.0.1")
    _build_wheelhouse(tmp_path / "wheels")
    http_port, https_port = _free_port(), _free_port()
    root = tmp_path / "root"
    common = [
        *("--http-port", str(http_port), "--https-port", str(https_port)),
        *("--pip-args", f"--no-index --find-links {tmp_path / 'wheels'}"),
    ]
    args = _install_args(
        root,
        DOMAIN,
        acme,
        *common,
    )
    output = _succeeded(_run(args, acme))
    assert "Successfully received certificate" in output
    assert f"from Let's Encrypt for {DOMAIN}" in output
    assert f"https://{DOMAIN}:{https_port}/?key=" in output
    assert " 80/tcp" in output  # the port renewals need, among the ports to open
    renewal = (root / "etc/letsencrypt/renewal/broadcast.conf").read_text()
    assert f"renew_hook = {root}/etc/broadcast/letsencrypt-deploy-hook" in renewal
    assert f"server = {acme.directory}" in renewal

    install = Install(root, args, output, http_port, https_port)
    config = str(install.config)
    # As install.sh --no-systemd says to start it (on 127.0.0.1 in the test, as in
    # tests/test_install.py); the hook finds it by this command.
    command = [str(install.venv / "bin/broadcast"), "serve", "--config", config]
    server = subprocess.Popen(
        [*command, "--host", "127.0.0.1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_listening(https_port, server)
        root_pem = acme.issuing_root()
        first = _served_certificate(https_port, root_pem)
        names = first.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        assert names.value.get_values_for_type(x509.DNSName) == [DOMAIN]

        url = f"http://127.0.0.1:{http_port}"
        key = install.value("publish_key")
        async with aiohttp.ClientSession() as http:
            publisher = await publish(
                http, f"{url}/whip/talk", headers={"Authorization": f"Bearer {key}"}
            )
            viewer = await watch(http, f"{url}/whep/talk", kinds=("video",))
            await viewer.wait_connected()
            await wait_for(lambda: len(viewer.frames.get("video", [])) > 10)

            renew = await asyncio.to_thread(
                subprocess.run,
                [
                    _tool("certbot"),
                    *("renew", "--force-renewal", "--no-random-sleep-on-renew"),
                    *("--config-dir", str(root / "etc/letsencrypt")),
                    *("--work-dir", str(root / "var/lib/letsencrypt")),
                    *("--logs-dir", str(root / "var/log/letsencrypt")),
                ],
                capture_output=True,
                text=True,
                timeout=120,
                env=acme.env,
            )
            assert renew.returncode == 0, renew.stdout + renew.stderr
            assert "installed the certificate" in renew.stdout + renew.stderr

            async def renewed() -> bool:
                served = await asyncio.to_thread(
                    _served_certificate, https_port, root_pem
                )
                return served.serial_number != first.serial_number

            deadline = time.monotonic() + 10
            while not await renewed():
                assert time.monotonic() < deadline, (
                    "the renewed certificate is not served"
                )
                await asyncio.sleep(0.2)
            # Same process, same broadcast: the viewer still gets new frames.
            assert server.poll() is None
            seen = len(viewer.frames["video"])
            await wait_for(lambda: len(viewer.frames["video"]) > seen + 10)
            assert publisher.pc.connectionState == "connected"
            await viewer.close()
            await publisher.close()

        second_acme.point(DOMAIN, "127.0.0.1")
        rerun = _install_args(root, DOMAIN, second_acme, *common)
        output = _succeeded(await asyncio.to_thread(_run, rerun, second_acme))
        assert "a new one replaces it" in output, output
        second_root = second_acme.issuing_root()

        def from_second() -> bool:
            try:
                _served_certificate(https_port, second_root)
            except ssl.SSLCertVerificationError:
                return False
            return True

        await wait_for(from_second, timeout=10, message="still the first server's")
        renewal = (root / "etc/letsencrypt/renewal/broadcast.conf").read_text()
        assert f"server = {second_acme.directory}" in renewal

        own = tmp_path / "own"
        own.mkdir()
        own_cert, own_key = self_signed(own)
        mine = [
            *("--root", str(root), "--no-systemd", "--yes", "--cert", own_cert),
            *("--key", own_key, "--python", sys._base_executable, *common),  # type: ignore[attr-defined]
        ]
        _succeeded(await asyncio.to_thread(_run, mine, acme))
        assert not (root / "etc/letsencrypt/renewal/broadcast.conf").exists()
        tls = root / "etc/broadcast/tls/cert.pem"
        assert tls.read_bytes() == Path(own_cert).read_bytes()
    finally:
        server.terminate()
        server.wait(10)


def _failed(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0, result.stdout
    return result.stderr


def test_a_domain_that_does_not_resolve_is_named(acme: Acme, tmp_path: Path) -> None:
    stderr = _failed(_run(_install_args(tmp_path, "nowhere.example.test", acme), acme))
    assert "FAILED while getting a certificate for nowhere.example.test" in stderr
    assert "what to do: point nowhere.example.test at this server" in stderr


def test_an_unreachable_domain_says_to_open_port_80(acme: Acme, tmp_path: Path) -> None:
    # The name points at an address this machine cannot be reached on, as a DNS
    # record of another machine, or a firewall dropping port 80, would.
    acme.point("elsewhere.example.test", "192.0.2.1")
    args = _install_args(tmp_path, "elsewhere.example.test", acme)
    stderr = _failed(_run(args, acme))
    assert "Let's Encrypt could not reach port 80 here" in stderr


def test_port_80_taken_is_said_before_anything_is_asked(
    acme: Acme, tmp_path: Path
) -> None:
    with socket.create_server(("0.0.0.0", 80)):
        stderr = _failed(_run(_install_args(tmp_path, DOMAIN, acme), acme))
    assert "port 80 is taken by python" in stderr  # this test's process
    assert not (tmp_path / "etc/letsencrypt").exists()  # certbot was not run


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--letsencrypt", "ops@example.test"], "--letsencrypt needs --domain"),
        (["--domain", DOMAIN, "--letsencrypt", "ops"], "needs an email address"),
        (["--acme-server", "https://ca.test/dir"], "goes with --letsencrypt"),
        (
            ["--domain", DOMAIN, "--letsencrypt", "a@b.test", "--http-port", "80"],
            "the server's HTTP port is 80",
        ),
    ],
)
def test_letsencrypt_options_are_checked(
    acme: Acme, tmp_path: Path, args: list[str], message: str
) -> None:
    result = _run(["--root", str(tmp_path), "--no-systemd", "--yes", *args], acme)
    assert message in _failed(result)
