"""install.sh, run for real under a fake root (`--root DIR --no-systemd`).

Every step of the installer runs: venv, `pip install` of this checkout, config, certificate,
check-config, unit and logrotate files. The tests run in a network namespace without the
package index, so pip installs offline: the test first packs the distributions this test
environment already has (the project's dependencies, and setuptools and wheel to build it)
into a wheelhouse, and passes `--pip-args "--no-index --find-links WHEELHOUSE"` — the same
option an operator uses on a server without internet access.
"""

from __future__ import annotations

import base64
import configparser
import hashlib
import importlib.metadata
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from packaging.requirements import Requirement

from tests.peers import publish, recvonly_offer, wait_for, watch

SOURCE = Path(__file__).resolve().parent.parent
INSTALL_SH = SOURCE / "install.sh"
# pyproject.toml's [build-system] requires; with setuptools < 70.1 the test environment
# needs wheel < 0.46 (later ones leave bdist_wheel to setuptools).
BUILD_REQUIREMENTS = ("setuptools", "wheel")


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _closure(roots: list[str]) -> list[importlib.metadata.Distribution]:
    """The installed distributions `roots` need, themselves included."""
    found: dict[str, importlib.metadata.Distribution] = {}
    pending = list(roots)
    while pending:
        name = _normalize(pending.pop())
        if name in found:
            continue
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            pytest.fail(
                f"{name} is not installed in the test environment; install.sh is tested "
                f"offline from it: pip install -e '.[test]' (and: pip install '{name}')"
            )
        found[name] = dist
        for text in dist.requires or []:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                pending.append(requirement.name)
    return list(found.values())


def _record_line(arcname: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
    return f"{arcname},sha256={digest.decode()},{len(data)}"


def _pack_wheel(dist: importlib.metadata.Distribution, into: Path) -> None:
    """Write an installed distribution back into a wheel (its files, a fresh RECORD)."""
    wheel_text = dist.read_text("WHEEL")
    files = dist.files or []
    info_dirs = {f.parts[0] for f in files if f.parts[0].endswith(".dist-info")}
    if not wheel_text or len(info_dirs) != 1:
        pytest.fail(
            f"{dist.metadata['Name']} was not installed from a wheel; reinstall it"
        )
    tags = [
        line.split(":", 1)[1].strip().split("-")
        for line in wheel_text.splitlines()
        if line.startswith("Tag:")
    ]
    # The compressed tag set of the file name: py2.py3-none-any for two tags.
    tag = "-".join(".".join(dict.fromkeys(parts)) for parts in zip(*tags, strict=True))
    info_dir = info_dirs.pop()
    name = re.sub(r"[-_.]+", "_", dist.metadata["Name"])
    records = []
    with zipfile.ZipFile(into / f"{name}-{dist.version}-{tag}.whl", "w") as wheel:
        for file in files:
            arcname = file.as_posix()
            # Scripts (../bin) are made again from entry_points.txt when pip installs.
            if arcname.startswith("..") or "__pycache__" in file.parts:
                continue
            if file.parts[0] == info_dir and file.name in (
                "RECORD",
                "INSTALLER",
                "REQUESTED",
                "direct_url.json",
            ):
                continue
            data = Path(str(file.locate())).read_bytes()
            wheel.writestr(arcname, data)
            records.append(_record_line(arcname, data))
        records.append(f"{info_dir}/RECORD,,")
        wheel.writestr(f"{info_dir}/RECORD", "\n".join(records) + "\n")


def _install_requires() -> list[str]:
    """The project's dependencies, from setup.cfg (installed metadata may be stale)."""
    setup = configparser.ConfigParser(inline_comment_prefixes=("#",))
    setup.read(SOURCE / "setup.cfg")
    lines = setup["options"]["install_requires"].splitlines()
    return [Requirement(line).name for line in lines if line.strip()]


def _build_wheelhouse(into: Path) -> None:
    into.mkdir()
    for dist in _closure([*_install_requires(), *BUILD_REQUIREMENTS]):
        _pack_wheel(dist, into)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Install:
    root: Path
    args: list[str]
    first_output: str
    http_port: int
    https_port: int

    @property
    def config(self) -> Path:
        return self.root / "etc/broadcast/flashphoner.xml"

    @property
    def venv(self) -> Path:
        return self.root / "opt/broadcast/venv"

    def run(self, *extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", str(INSTALL_SH), *self.args, *extra],
            capture_output=True,
            text=True,
            timeout=500,
            stdin=subprocess.DEVNULL,
        )

    def value(self, element: str) -> str:
        match = re.search(rf"<{element}>([^<]*)</{element}>", self.config.read_text())
        assert match, f"no <{element}> in {self.config}"
        return match.group(1)


def _succeeded(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, (
        f"install.sh exited {result.returncode}\n{result.stdout}\n{result.stderr}"
    )
    return result.stdout


@pytest.fixture(scope="module")
def install(tmp_path_factory: pytest.TempPathFactory) -> Install:
    base = tmp_path_factory.mktemp("install")
    _build_wheelhouse(base / "wheels")
    http_port, https_port = _free_port(), _free_port()
    args = [
        "--root",
        str(base / "root"),
        "--no-systemd",
        "--yes",
        "--ip",
        "127.0.0.1",
        "--http-port",
        str(http_port),
        "--https-port",
        str(https_port),
        "--python",
        sys._base_executable,  # type: ignore[attr-defined]
        "--pip-args",
        f"--no-index --find-links {base / 'wheels'}",
    ]
    installed = Install(base / "root", args, "", http_port, https_port)
    installed.first_output = _succeeded(installed.run())
    return installed


@pytest.mark.timeout(600)
def test_install_writes_a_valid_config_certificate_unit_and_logrotate(
    install: Install,
) -> None:
    check = subprocess.run(
        [str(install.venv / "bin/broadcast"), "check-config", str(install.config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert install.value("ip") == "127.0.0.1"
    assert install.value("bind") == "0.0.0.0"
    assert install.value("http_port") == str(install.http_port)
    assert install.value("https_port") == str(install.https_port)
    assert re.fullmatch(r"[0-9a-f]{32}", install.value("publish_key"))
    assert re.fullmatch(r"[0-9a-f]{32}", install.value("admin_key"))
    assert install.value("publish_key") != install.value("admin_key")
    tls = install.root / "etc/broadcast/tls"
    assert b"BEGIN CERTIFICATE" in (tls / "cert.pem").read_bytes()
    assert b"PRIVATE KEY" in (tls / "key.pem").read_bytes()
    unit = (install.root / "etc/systemd/system/broadcast.service").read_text()
    assert "Alias=webcallserver.service" in unit
    assert "ExecStart=" in unit and "/opt/broadcast/venv/bin/broadcast serve" in unit
    logrotate = (install.root / "etc/logrotate.d/broadcast").read_text()
    assert "/var/log/broadcast/*.log" in logrotate
    assert (install.root / "var/log/broadcast").is_dir()
    recordings = install.root / "var/lib/broadcast/recordings"
    assert recordings.is_dir() and install.value("dir") == str(recordings)
    assert "StateDirectory=broadcast" in unit
    key = install.value("publish_key")
    assert f"https://127.0.0.1:{install.https_port}/?key={key}" in install.first_output
    assert install.value("admin_key") in install.first_output
    # The media ports of every process (one per core by default), UDP and TCP.
    last = 8081 + len(os.sched_getaffinity(0)) - 1
    media = "8081" if last == 8081 else f"8081:{last}"
    ports = f"ports:      {install.http_port}/tcp {install.https_port}/tcp"
    assert f"{ports} {media}/udp {media}/tcp " in install.first_output


@pytest.fixture
def installed_server(install: Install) -> Iterator[str]:
    """The installed server, started from the fake root on 127.0.0.1; its HTTP URL."""
    server = subprocess.Popen(
        [
            str(install.venv / "bin/broadcast"),
            "serve",
            "--config",
            str(install.config),
            "--host",
            "127.0.0.1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{install.http_port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", install.http_port), 1):
                    break
            except OSError:
                assert server.poll() is None, f"server exited: {server.stderr.read()}"  # type: ignore[union-attr]
                assert time.monotonic() < deadline, "server did not listen within 30 s"
                time.sleep(0.2)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        server.stderr.close()  # type: ignore[union-attr]


@pytest.mark.timeout(600)
async def test_installed_server_serves_client_api_and_whep(
    install: Install, installed_server: str
) -> None:
    url = installed_server
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{url}/healthz") as response:
            assert response.status == 200
            assert await response.text() == "ok"
        async with http.get(f"{url}/") as response:  # the client files are installed
            assert response.status == 200
            assert 'id="start"' in await response.text()
        async with http.post(
            f"{url}/whep/nobody",
            data=await recvonly_offer(),
            headers={"Content-Type": "application/sdp"},
        ) as response:
            assert response.status == 404
            assert (await response.json())["error"]
        key = install.value("publish_key")
        publisher = await publish(
            http, f"{url}/whip/demo", headers={"Authorization": f"Bearer {key}"}
        )
        viewer = await watch(http, f"{url}/whep/demo", kinds=("video",))
        try:
            await viewer.wait_connected()
            await wait_for(
                lambda: viewer.frames.get("video"),
                15,
                "no video reached the viewer through the installed server",
            )
        finally:
            await viewer.close()
            await publisher.close()


@pytest.mark.timeout(600)
def test_second_run_upgrades_in_place_and_keeps_the_config(install: Install) -> None:
    config = install.config.read_bytes()
    certificate = (install.root / "etc/broadcast/tls/cert.pem").read_bytes()
    output = _succeeded(install.run())
    assert install.config.read_bytes() == config
    assert (install.root / "etc/broadcast/tls/cert.pem").read_bytes() == certificate
    assert f"kept the existing config {install.config}" in output
    assert "upgraded" in output
    assert (install.venv / "share/broadcast/client/index.html").is_file()


@pytest.mark.timeout(600)
def test_uninstall_keeps_the_config_and_purge_removes_it(install: Install) -> None:
    _succeeded(install.run("--uninstall"))
    assert not (install.root / "opt/broadcast").exists()
    assert not (install.root / "etc/systemd/system/broadcast.service").exists()
    assert install.config.is_file()
    assert (install.root / "var/log/broadcast").is_dir()
    _succeeded(install.run("--uninstall", "--purge"))
    assert not (install.root / "etc/broadcast").exists()
    assert not (install.root / "var/log/broadcast").exists()
    assert (install.root / "var/lib/broadcast/recordings").is_dir()  # people's talks


@pytest.mark.timeout(600)
def test_install_as_a_cluster_edge_writes_the_cluster_settings(
    install: Install,
) -> None:
    """After the purge above: a fresh install that joins a cluster as an edge."""
    redis = "redis://:redis-pass-word-7@10.0.0.1:6379/0"
    node_url = f"https://127.0.0.1:{install.https_port}"
    output = _succeeded(
        install.run("--cluster", redis, "--role", "edge", "--node-id", "edge-7")
    )
    assert install.value("redis") == redis
    assert install.value("node_url") == node_url  # the default: this server's URL
    assert (install.value("node_id"), install.value("role")) == ("edge-7", "edge")
    assert f"cluster:    node {node_url}, role edge" in output
    assert "redis-pass-word-7" not in output


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--role", "edge"], "go with --cluster URL"),
        (["--cluster", "http://10.0.0.1"], "must be a redis:// or rediss:// URL"),
        (["--cluster", "redis://h", "--role", "relay"], "--role must be both"),
        (["--cluster", "redis://h", "--node-url", "ftp://x"], "--node-url must be"),
    ],
)
def test_install_sh_checks_the_cluster_options_first(
    tmp_path: Path, flags: list[str], message: str
) -> None:
    result = subprocess.run(
        ["bash", str(INSTALL_SH), "--root", str(tmp_path), "--no-systemd", *flags],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 1 and message in result.stderr, result.stderr
    assert not (tmp_path / "opt").exists()


def test_install_sh_fails_with_what_to_do(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            "bash",
            str(INSTALL_SH),
            "--root",
            str(tmp_path),
            "--no-systemd",
            "--yes",
            "--ip",
            "127.0.0.1",
            "--python",
            str(tmp_path / "no-python"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode != 0
    assert "FAILED while finding Python >= 3.11" in result.stderr
    assert "what to do:" in result.stderr


def test_install_sh_is_shellcheck_clean() -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.fail("shellcheck is missing: apt-get install -y shellcheck")
    result = subprocess.run(
        [shellcheck, str(INSTALL_SH)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_systemd_unit_parses(tmp_path: Path) -> None:
    """systemd ignores a line it cannot parse and only logs it: a broken Restart= or a
    stray key would go unnoticed until the server does not come back."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.fail("systemd-analyze is missing: apt-get install -y systemd")
    unit = tmp_path / "broadcast.service"
    shutil.copy(SOURCE / "deploy/broadcast.service", unit)
    result = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    # The installed paths (/opt/broadcast/...) do not exist here; every other complaint
    # names a line of the file.
    problems = [line for line in result.stderr.splitlines() if f"{unit}:" in line]
    assert not problems, "\n".join(problems)
