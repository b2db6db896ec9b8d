"""`broadcast doctor` tells an operator, in words, what stands in ICE's way."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from aioice import stun

from broadcast.cli import main
from broadcast.doctor import check_turn
from tests.test_camera import camera_certificate
from tests.test_server import free_port, self_signed


@contextlib.contextmanager
def stun_server():
    """A STUN server on 127.0.0.1 answering Binding requests (RFC 8489 §6.3.1)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                data, addr = sock.recvfrom(2048)
            except TimeoutError:
                continue
            request = stun.parse_message(data)
            response = stun.Message(
                message_method=stun.Method.BINDING,
                message_class=stun.Class.RESPONSE,
                transaction_id=request.transaction_id,
            )
            response.attributes["XOR-MAPPED-ADDRESS"] = addr
            sock.sendto(bytes(response), addr)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield sock.getsockname()[1]
    finally:
        stop.set()
        thread.join()
        sock.close()


def test_doctor_reports_each_check_and_fails_on_a_taken_port(tmp_path, capsys):
    cert, key = self_signed(tmp_path)
    http_port, https_port, media = free_port(), free_port(), free_port()
    with stun_server() as stun_port, contextlib.ExitStack() as held:
        blocker = held.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        blocker.bind(("127.0.0.1", https_port))  # bound, not listening: taken
        busy = held.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        busy.bind(("127.0.0.1", media))
        config = tmp_path / "flashphoner.xml"
        config.write_text(
            f"""<flashphoner>
            <server><bind>127.0.0.1</bind><ip>127.0.0.2</ip><http_port>{http_port}</http_port>
            <https_port>{https_port}</https_port><tls_certificate>{cert}</tls_certificate>
            <tls_key>{key}</tls_key></server>
            <media><media_ports>{media}-{media + 1}</media_ports></media>
            <ice><stun_server>stun:127.0.0.1:{stun_port}</stun_server>
            <turn_server>turn:127.0.0.1:9?transport=udp</turn_server>
            <turn_secret>s</turn_secret></ice>
            </flashphoner>"""
        )
        with pytest.raises(SystemExit) as exit_:
            main(["doctor", "--config", str(config)])
    assert exit_.value.code == 1
    report = capsys.readouterr().out
    assert f"OK    HTTP port {http_port}: free" in report
    assert f"FAIL  HTTPS port {https_port}: taken" in report
    assert f"media UDP ports {media}-{media + 1}: 1 of 2 free" in report
    assert "WARN  certificate valid for 0 more days" in report  # a one-day certificate
    assert "certificate names nothing, not 127.0.0.2" in report
    assert "sees this host as 127.0.0.1, not <ip> 127.0.0.2" in report
    assert "FAIL  TURN turn:127.0.0.1:9?transport=udp: no answer over UDP" in report


def test_doctor_on_the_defaults_passes_with_warnings(capsys):
    main(["doctor"])
    report = capsys.readouterr().out
    assert "FAIL" not in report and "WARN" in report


SECRET = "turn-static-auth-secret"


@contextlib.contextmanager
def coturn(directory: Path):
    """coturn (Debian's `turnserver`) on 127.0.0.1 with TURN REST credentials for
    SECRET: UDP and TCP on one port, TLS on another (a certificate for 127.0.0.1)."""
    pem = camera_certificate(directory)
    port, tls_port = free_port(), free_port()
    log = (directory / "turnserver.log").open("wb")
    process = subprocess.Popen(
        [
            "turnserver", "-n", "--listening-ip=127.0.0.1", "--relay-ip=127.0.0.1",
            f"--listening-port={port}", f"--tls-listening-port={tls_port}",
            "--use-auth-secret", f"--static-auth-secret={SECRET}",
            "--realm=broadcast.test", f"--cert={pem}", f"--pkey={pem}",
            "--no-dtls", "--no-cli", "--allow-loopback-peers", "--log-file=stdout",
            "--simple-log", f"--pidfile={directory / 'turnserver.pid'}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        for _ in range(100):  # listening on both ports
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", tls_port)) == 0:
                    break
            time.sleep(0.05)
        yield port, tls_port, pem
    finally:
        process.terminate()
        process.wait(10)
        log.close()


@pytest.mark.skipif(shutil.which("turnserver") is None, reason="apt-get install coturn")
async def test_doctor_allocates_on_turn_over_udp_tcp_and_tls(tmp_path, monkeypatch):
    with coturn(tmp_path) as (port, tls_port, pem):
        # The TURN server's certificate is trusted as a real one would be.
        monkeypatch.setenv("SSL_CERT_FILE", str(pem))
        urls = (
            f"turn:127.0.0.1:{port}?transport=udp",
            f"turn:127.0.0.1:{port}?transport=tcp",
            f"turns:127.0.0.1:{tls_port}?transport=tcp",
        )
        findings = [await check_turn(url, SECRET) for url in urls]
        wrong = await check_turn(urls[0], "not-the-secret")
        missing = await check_turn(urls[0], None)
        monkeypatch.delenv("SSL_CERT_FILE")
        untrusted = await check_turn(urls[2], SECRET)
    for finding, transport in zip(
        findings, ("UDP", "TCP", "TCP with TLS"), strict=True
    ):
        assert finding.level == "OK", finding
        assert "allocates a relay (127.0.0.1:" in finding.text
        assert f"over {transport} with our credentials" in finding.text
    assert wrong.level == "FAIL" and "<turn_secret> is not the" in wrong.text
    assert missing.level == "FAIL" and "no <turn_secret>" in missing.text
    assert untrusted.level == "FAIL" and "TLS failed" in untrusted.text
