"""`broadcast serve` as a process: HTTP and HTTPS, clean stop on SIGTERM, the
certificate reloaded on SIGHUP."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import shutil
import signal
import socket
import ssl
import sys
from pathlib import Path

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.peers import publish, wait_for, watch


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def self_signed(directory, ip: str | None = None) -> tuple[str, str]:
    """A one-day self-signed certificate and its key (PEM files in `directory`); with
    `ip`, one that names that address and can be trusted as its own CA (an IP camera's,
    a TURN server's)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ip or "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    if ip is not None:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]),
            critical=False,
        ).add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    cert = builder.sign(key, hashes.SHA256())
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(cert_path), str(key_path)


async def test_serve_answers_http_and_https_and_stops_on_sigterm_with_its_workers(
    tmp_path,
):
    http_port, https_port, media_port = free_port(), free_port(), free_port()
    cert, key = self_signed(tmp_path)
    config = tmp_path / "flashphoner.xml"
    config.write_text(
        f"""<flashphoner><server><bind>127.0.0.1</bind>
        <http_port>{http_port}</http_port><https_port>{https_port}</https_port>
        <tls_certificate>{cert}</tls_certificate><tls_key>{key}</tls_key>
        </server><media><media_port>{media_port}</media_port><workers>2</workers></media>
        </flashphoner>"""
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "broadcast",
        "serve",
        "--config",
        str(config),
        stderr=asyncio.subprocess.PIPE,
    )
    insecure = ssl.create_default_context()
    insecure.check_hostname = False
    insecure.verify_mode = ssl.CERT_NONE
    try:
        async with aiohttp.ClientSession() as http:
            for url in (
                f"http://127.0.0.1:{http_port}/healthz",
                f"https://127.0.0.1:{https_port}/healthz",
            ):
                for _ in range(100):
                    try:
                        async with http.get(url, ssl=insecure) as response:
                            assert await response.text() == "ok"
                            break
                    except aiohttp.ClientConnectionError:
                        await asyncio.sleep(0.1)
                else:
                    raise AssertionError(f"{url} never answered")
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), 10)
        assert process.returncode == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        assert process.stderr is not None
        log = (await process.stderr.read()).decode()
    assert "shutting down" in log and "Traceback" not in log
    # A worker logs under its module's name, like the rest of the server.
    assert "broadcast.workers.worker: worker 1 ready" in log, log
    assert "__main__" not in log


def served_certificate(port: int) -> bytes:
    """The certificate a new TLS connection to 127.0.0.1:`port` is shown (DER)."""
    insecure = ssl.create_default_context()
    insecure.check_hostname = False
    insecure.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        insecure.wrap_socket(raw) as tls,
    ):
        return tls.getpeercert(binary_form=True) or b""


async def test_sighup_reloads_the_certificate_and_the_broadcast_goes_on(tmp_path):
    """What a Let's Encrypt renewal does: new files, SIGHUP; new connections get the
    new certificate, the publisher and viewer already connected keep going, and a file
    that does not load leaves the old certificate in place."""
    http_port, https_port, media_port = free_port(), free_port(), free_port()
    first = tmp_path / "first"
    first.mkdir()
    cert, key = self_signed(first)
    live = tmp_path / "live"
    live.mkdir()
    shutil.copy(cert, live / "cert.pem")
    shutil.copy(key, live / "key.pem")
    config = tmp_path / "flashphoner.xml"
    config.write_text(
        f"""<flashphoner><server><bind>127.0.0.1</bind>
        <http_port>{http_port}</http_port><https_port>{https_port}</https_port>
        <tls_certificate>live/cert.pem</tls_certificate><tls_key>live/key.pem</tls_key>
        </server><media><media_port>{media_port}</media_port><workers>1</workers></media>
        </flashphoner>"""
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "broadcast", "serve", "--config", str(config),
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    base = f"http://127.0.0.1:{http_port}"
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(100):
                with contextlib.suppress(aiohttp.ClientConnectionError):
                    async with http.get(f"{base}/healthz") as response:
                        if response.status == 200:
                            break
                await asyncio.sleep(0.1)
            before = await asyncio.to_thread(served_certificate, https_port)
            publisher = await publish(http, f"{base}/whip/renewal")
            viewer = await watch(http, f"{base}/whep/renewal", ("video",))
            await wait_for(lambda: len(viewer.frames.get("video", [])) > 10, timeout=15)

            renewed = tmp_path / "renewed"
            renewed.mkdir()
            new_cert, new_key = self_signed(renewed)
            shutil.copy(new_cert, live / "cert.pem")
            shutil.copy(new_key, live / "key.pem")
            process.send_signal(signal.SIGHUP)
            await wait_for(
                lambda: served_certificate(https_port) != before,
                timeout=10,
                message="the old certificate is still served",
            )
            after = await asyncio.to_thread(served_certificate, https_port)
            assert after == ssl.PEM_cert_to_DER_cert(Path(new_cert).read_text())
            seen = len(viewer.frames["video"])
            await wait_for(lambda: len(viewer.frames["video"]) > seen + 30, timeout=10)
            assert viewer.pc.connectionState == "connected"

            # Renewals gone wrong: a new certificate copied without its key (the
            # key no longer matches), then a key that is not one. The certificate
            # that loaded last keeps serving, and handshakes keep working.
            third = tmp_path / "third"
            third.mkdir()
            shutil.copy(self_signed(third)[0], live / "cert.pem")
            process.send_signal(signal.SIGHUP)
            await asyncio.sleep(1)
            assert await asyncio.to_thread(served_certificate, https_port) == after
            (live / "key.pem").write_text("not a key")
            process.send_signal(signal.SIGHUP)
            await asyncio.sleep(1)
            assert await asyncio.to_thread(served_certificate, https_port) == after
            await viewer.close()
            await publisher.close()
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), 15)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        assert process.stderr is not None
        log = (await process.stderr.read()).decode()
    assert "certificate reloaded from" in log
    assert "certificate not reloaded, the old one stays" in log
