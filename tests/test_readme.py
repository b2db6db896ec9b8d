"""README.md's commands are what a new user runs first: they must be true as written."""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from tests.peers import publish, wait_for, watch

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def setup_commands() -> list[str]:
    """The ```sh blocks at the top of README.md: install-and-serve, then test."""
    return re.findall(r"^```sh\n(.*?)\n```$", README, re.M | re.S)[:2]


def apt_part(command: str) -> str:
    """The command up to its first step that is not about system packages."""
    return command.split(" && python3 -m venv", 1)[0]


@pytest.mark.parametrize("uid", ["0", "1000"])
@pytest.mark.parametrize("which", [0, 1])
def test_setup_commands_run_as_root_without_sudo_and_as_a_user_with_it(
    tmp_path: Path, uid: str, which: int
) -> None:
    """A root server often has no sudo (`sudo: command not found`); a user needs it.

    `id`, `sudo` and `apt-get` are stand-ins that record how they were called, on a
    PATH that holds only them and the basic tools, so the command's own logic runs.
    """
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls"
    stand_ins = {
        "id": f'[ "$1" = -u ] && echo {uid}',
        "apt-get": f'echo "apt-get $* uid={uid} frontend=$DEBIAN_FRONTEND" >> {log}',
        "sudo": f'echo "sudo $1" >> {log}; exec "$@"',
    }
    if uid == "0":
        del stand_ins["sudo"]  # as on a minimal root server
    for name, body in stand_ins.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    for tool in ("env", "sh", "echo", "["):
        target = bin_dir / tool
        if not target.exists():
            target.symlink_to(_which(tool))
    command = apt_part(setup_commands()[which])
    result = subprocess.run(
        ["/bin/sh", "-c", command],
        env={"PATH": str(bin_dir)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    calls = log.read_text().splitlines()
    apt_calls = [c for c in calls if c.startswith("apt-get")]
    assert [c.split()[1] for c in apt_calls] == ["update", "install"]
    assert "frontend=noninteractive" in apt_calls[1]
    assert ("sudo apt-get" in calls) == (uid != "0"), calls


def _which(tool: str) -> str:
    for directory in ("/usr/bin", "/bin"):
        if os.access(f"{directory}/{tool}", os.X_OK):
            return f"{directory}/{tool}"
    raise AssertionError(f"{tool} not found: install coreutils")


def test_check_config_example_says_what_the_command_says(tmp_path: Path) -> None:
    """The README shows check-config's answer for a bad <http_port>: same line, same words."""
    example = re.search(
        r'check-config flashphoner\.xml +# exits 1 with "(.*)"$', README, re.M
    )
    assert example, "README lost its check-config example"
    config = tmp_path / "flashphoner.xml"
    text = (ROOT / "flashphoner.xml.example").read_text()
    config.write_text(
        text.replace("<http_port>8080</http_port>", "<http_port>80a</http_port>", 1)
    )
    result = subprocess.run(
        [sys.executable, "-m", "broadcast", "check-config", "flashphoner.xml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.strip() == example[1]


@pytest.mark.parametrize(
    "command", ["serve", "check-config", "token", "doctor", "loadtest"]
)
def test_every_command_describes_itself_in_its_help(command: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "broadcast", command, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0
    usage, _, rest = result.stdout.partition("\n\n")
    description = rest.split("\n\n", 1)[0]
    assert not description.startswith(("options:", "positional arguments:")), (
        f"`broadcast {command} --help` has no description:\n{result.stdout}"
    )
    assert shlex.split(usage)[1:3] == ["broadcast", command]


def cluster_commands() -> str:
    """The ```sh block of README.md's "Cluster" section."""
    section = README.split("\n## Cluster\n", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"^```sh\n(.*?)\n```$", section, re.M | re.S)
    return block


async def test_the_cluster_section_runs_as_written() -> None:
    """Its commands, as they are, start Redis, an origin and two edges; a viewer who
    opens the origin's link plays from an edge."""
    process = await asyncio.create_subprocess_exec(
        "bash",
        "-c",
        cluster_commands() + "\nwait",
        cwd=ROOT,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,  # its background jobs are one process group
    )
    try:
        async with aiohttp.ClientSession() as http:
            for port in (8080, 8090, 8100):
                await wait_for_health(http, f"http://127.0.0.1:{port}/healthz", process)
            publisher = await publish(http, "http://127.0.0.1:8080/whip/readme")
            await publisher.wait_connected()
            viewer = None
            for _ in range(50):  # until the origin has heard both edges' heartbeats
                try:
                    viewer = await watch(http, "http://127.0.0.1:8080/whep/readme")
                    break
                except AssertionError:
                    await asyncio.sleep(0.1)
            assert viewer is not None, "no node took the viewer"
            assert viewer.answered_by.startswith(
                ("http://127.0.0.1:8090/", "http://127.0.0.1:8100/")
            )
            await viewer.wait_connected()
            await wait_for(lambda: viewer.frames.get("video"), 15, "no picture")
            await asyncio.gather(viewer.close(), publisher.close())
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), 15)
        except TimeoutError:
            os.killpg(process.pid, signal.SIGKILL)
            await process.wait()


async def wait_for_health(
    http: aiohttp.ClientSession, url: str, process: asyncio.subprocess.Process
) -> None:
    for _ in range(150):
        if process.returncode is not None:
            assert process.stderr is not None
            raise AssertionError((await process.stderr.read()).decode())
        try:
            async with http.get(url) as response:
                if response.status == 200:
                    return
        except aiohttp.ClientConnectionError:
            pass
        await asyncio.sleep(0.1)
    raise AssertionError(f"{url} never answered")
