"""`BROADCAST_LOG_SCAN=1`: the whole suite at DEBUG, its log searched for secrets.

Every logger's records go through the handler `broadcast serve` logs with
(logs.configure_logging, redaction included) into one file; the handler learns the
secrets of each server's config as serve's would know its own. Meanwhile every secret
the suite hands a server or a peer is recorded: config keys and camera passwords (also
those added over the admin API), minted tokens, ICE passwords of every aioice agent,
SRTP master keys of every DTLS handshake. At the end each is searched for in the log,
as text and hex; a hit fails the run. tests/test_secrets_in_logs.py does the same on a
workload in every CI run; this is the long form, on demand:

    unshare -rn sh -c 'ip link set lo up && BROADCAST_LOG_SCAN=1 BROADCAST_FUZZ_SECONDS=1 \\
        .venv/bin/python -m pytest -m "not network"'
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aioice.ice
import pylibsrtp
import pytest

from broadcast import tokens
from broadcast.config import Config
from broadcast.logs import configure_logging
from broadcast.redact import RedactSecrets, config_secrets
from broadcast.registry import StreamRegistry

ENABLED = os.environ.get("BROADCAST_LOG_SCAN") == "1"
TOKEN = re.compile(r"[A-Za-z0-9+/_-]{8,}")


class Scan:
    def __init__(self) -> None:
        self.log = Path(tempfile.mkstemp(prefix="broadcast-debug-", suffix=".log")[1])
        self.stream = self.log.open("w", encoding="utf-8")
        handler = configure_logging(Config(log_level="debug"), self.stream)
        self.redact = next(f for f in handler.filters if isinstance(f, RedactSecrets))
        self.secrets: set[str] = set()

    def add(self, *values: str | bytes | None) -> None:
        for value in values:
            if isinstance(value, bytes):
                self.secrets.add(value.hex())
            elif value and len(value) >= 8:  # shorter would match ordinary words
                self.secrets.add(value)

    def learn_config(self, config: Config) -> None:
        found = config_secrets(config)
        self.add(*found)
        self.redact.secrets = tuple(
            sorted({*self.redact.secrets, *found}, key=len, reverse=True)
        )

    def hits(self) -> list[str]:
        self.stream.flush()
        words: set[str] = set()
        with self.log.open(encoding="utf-8", errors="replace") as lines:
            for line in lines:
                words.update(TOKEN.findall(line))
        return sorted(s for s in self.secrets if s in words)


def _wrap(owner: Any, name: str, after: Any) -> None:
    """Call `after(result, *args)` after each call of `owner.name`."""
    original = getattr(owner, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        after(result, *args, **kwargs)
        return result

    setattr(owner, name, wrapper)


def pytest_configure(config: pytest.Config) -> None:
    if not ENABLED:
        return
    scan = Scan()
    config.stash[SCAN] = scan
    _wrap(StreamRegistry, "__init__", lambda _, self, cfg: scan.learn_config(cfg))
    _wrap(
        StreamRegistry,
        "add_camera",
        lambda _, self, camera: scan.add(urlsplit(camera.url).password),
    )
    _wrap(tokens, "mint", lambda token, *a, **k: scan.add(token.rsplit(".", 1)[-1]))
    _wrap(
        aioice.ice.Connection,
        "__init__",
        lambda _, self, *a, **k: scan.add(self.local_password),
    )
    _wrap(
        pylibsrtp.Policy,
        "__init__",
        lambda _, self, key=None, **k: scan.add(key),
    )


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    scan = session.config.stash.get(SCAN, None)
    if scan is None:
        return
    hits = scan.hits()
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    lines = [
        f"log scan: {len(scan.secrets)} secrets searched in {scan.log}"
        f" ({scan.log.stat().st_size // 2**20} MiB): {len(hits)} found",
        *(f"  in the log: {hit[:6]}…" for hit in hits),
    ]
    if reporter is not None:
        for line in lines:
            reporter.write_line(line)
    if hits:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


SCAN = pytest.StashKey[Scan]()
