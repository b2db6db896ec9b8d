"""`broadcast serve` as a process: HTTP and HTTPS, clean stop on SIGTERM."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import signal
import socket
import ssl
import sys

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


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
