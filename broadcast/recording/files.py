"""The recordings directory: what is in it (a file of another run probed once), a
file's name as requests give it, deleting, and pruning the oldest past the limits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import av

from broadcast.config import Config
from broadcast.errors import BadRequest, Conflict, NotFound
from broadcast.recording.recorder import FAILED
from broadcast.recording.writer import RecordingFile, mime_type

logger = logging.getLogger(__name__)

# `<stream>-<UTC start>[-n].<ext>`: what names a recording, and all a request may name.
FILE_NAME = re.compile(
    r"(?P<stream>[A-Za-z0-9_-]{1,64})-(?P<start>[0-9]{8}T[0-9]{6}Z)(-[0-9]{1,4})?"
    r"\.(mp4|webm)"
)
PRUNE_EVERY_S = 600.0
GB = 1_000_000_000


@dataclass
class FileInfo:
    """One recording as `GET /api/recordings` lists it."""

    stream: str
    file: str
    start: str  # ISO 8601, UTC
    duration: float | None
    size: int
    codecs: list[str]
    state: str  # recording | done | failed


def check_file_name(name: str) -> str:
    """A recording's name, or 400: never a path, never `..`."""
    if not FILE_NAME.fullmatch(name):
        raise BadRequest(
            "bad_file_name",
            "A recording is named <stream>-<YYYYmmddTHHMMSSZ>.mp4 or .webm.",
        )
    return name


def _start_of(match: re.Match[str]) -> str:
    started = datetime.strptime(match["start"], "%Y%m%dT%H%M%SZ")
    return started.replace(tzinfo=UTC).isoformat().replace("+00:00", "Z")


def probe(path: Path) -> tuple[float | None, list[str]]:
    """Duration and codecs of a file we did not write in this run (PyAV reads its
    headers; a file cut by a crash has no index and is read to its end)."""
    try:
        with av.open(str(path)) as container:
            codecs = [
                mime_type(s.type, s.codec_context.name) for s in container.streams
            ]
            if container.duration:
                return container.duration / 1_000_000, codecs
            end = 0.0
            for packet in container.demux():
                if packet.pts is not None and packet.time_base is not None:
                    end = max(
                        end,
                        float((packet.pts + (packet.duration or 0)) * packet.time_base),
                    )
            return end, codecs
    except (OSError, av.FFmpegError, ValueError):
        return None, []


class RecordingFiles:
    """The directory's files, and what this run knows of those it wrote."""

    def __init__(
        self,
        config: Config,
        writing: Callable[[], list[RecordingFile]],
        counts: Counter[str],
    ) -> None:
        """`writing`: the files being written now; `counts` gains "pruned"."""
        self.directory = Path(config.recording_dir)
        self._config = config
        self._writing = writing
        self._counts = counts
        # Files this run wrote: their state, and why one failed.
        self._states: dict[str, str] = {}
        self._written: dict[str, FileInfo] = {}
        self._probed: dict[str, tuple[tuple[int, float], FileInfo]] = {}
        self._pruner: asyncio.Task[None] | None = None
        # The timer's and a finished file's pruning, one at once.
        self._pruning = threading.Lock()

    def written(self, file: RecordingFile, state: str) -> None:
        """A file of this run started (recording), finished (done) or failed; a
        failed one stays failed when it is finished."""
        name = file.path.name
        if state != "done" or self._states.get(name) != FAILED:
            self._states[name] = state
        self._written[name] = self.info_of(file)

    def info_of(self, file: RecordingFile) -> FileInfo:
        name = file.path.name
        match = FILE_NAME.fullmatch(name)
        assert match is not None
        try:
            size = file.path.stat().st_size
        except OSError:
            size = 0
        return FileInfo(
            match["stream"],
            name,
            _start_of(match),
            round(file.duration_s, 3),
            size,
            file.codecs,
            self._states.get(name, "done"),
        )

    def path_of(self, name: str) -> Path:
        """The file a request names, in the directory; 404 if there is none."""
        path = self.directory / check_file_name(name)
        if not self._is_inside(path):
            raise NotFound("recording_not_found", f"There is no recording '{name}'.")
        return path

    def stream_of(self, name: str) -> str:
        match = FILE_NAME.fullmatch(check_file_name(name))
        assert match is not None
        return match["stream"]

    def is_being_written(self, name: str) -> bool:
        return any(file.path.name == name for file in self._writing())

    async def listing(self) -> list[dict[str, Any]]:
        """Every recording in the directory, newest first."""
        return [asdict(info) for info in await asyncio.to_thread(self._list)]

    def _list(self) -> list[FileInfo]:
        infos = []
        for path in self._files():
            info = self._current_info(path)
            if info is not None:
                infos.append(info)
        return sorted(infos, key=lambda info: (info.start, info.file), reverse=True)

    def _is_inside(self, path: Path) -> bool:
        """A file of ours: a link placed in the directory is not a way out of it."""
        return path.is_file() and path.resolve().parent == self.directory.resolve()

    def _files(self) -> list[Path]:
        try:
            return [
                p
                for p in self.directory.iterdir()
                if FILE_NAME.fullmatch(p.name) and self._is_inside(p)
            ]
        except OSError:
            return []

    def _current_info(self, path: Path) -> FileInfo | None:
        name = path.name
        for file in self._writing():
            if file.path.name == name:
                return self.info_of(file)
        if name in self._written:
            info = self._written[name]
            with contextlib.suppress(OSError):
                info.size = path.stat().st_size
            info.state = self._states.get(name, "done")
            return info
        try:
            stat = path.stat()
        except OSError:
            return None
        key = (stat.st_size, stat.st_mtime)
        cached = self._probed.get(name)
        if cached is not None and cached[0] == key:
            return cached[1]
        match = FILE_NAME.fullmatch(name)
        assert match is not None
        duration, codecs = probe(path)
        info = FileInfo(
            match["stream"],
            name,
            _start_of(match),
            None if duration is None else round(duration, 3),
            stat.st_size,
            codecs,
            "done" if duration is not None else FAILED,
        )
        self._probed[name] = (key, info)
        return info

    def delete(self, name: str) -> None:
        path = self.path_of(name)
        if self.is_being_written(name):
            raise Conflict(
                "recording_in_progress",
                f"'{name}' is being recorded: stop the recording first.",
            )
        path.unlink(missing_ok=True)
        self._forget(name)
        logger.info("recording %s deleted", name)

    def _forget(self, name: str) -> None:
        self._written.pop(name, None)
        self._probed.pop(name, None)
        self._states.pop(name, None)

    # Retention.

    def start_pruning(self) -> None:
        self._pruner = asyncio.get_running_loop().create_task(self._prune_forever())

    def stop_pruning(self) -> None:
        if self._pruner is not None:
            self._pruner.cancel()

    async def _prune_forever(self) -> None:
        while True:
            await asyncio.to_thread(self.prune)
            await asyncio.sleep(PRUNE_EVERY_S)

    def prune(self) -> list[str]:
        """Delete the oldest finished files past `keep_days` and `max_total_gb`."""
        keep_days = self._config.recording_keep_days
        max_bytes = self._config.recording_max_total_gb * GB
        if not keep_days and not max_bytes:
            return []
        with self._pruning:
            return self._prune(keep_days, max_bytes)

    def _prune(self, keep_days: float, max_bytes: float) -> list[str]:
        files = []
        for path in self._files():
            with contextlib.suppress(OSError):
                stat = path.stat()
                files.append((stat.st_mtime, stat.st_size, path))
        files.sort()
        total = sum(size for _, size, _ in files)
        now = time.time()
        pruned = []
        for mtime, size, path in files:
            too_old = keep_days and now - mtime > keep_days * 86400
            too_much = max_bytes and total > max_bytes
            if not (too_old or too_much) or self.is_being_written(path.name):
                continue
            try:
                path.unlink()
            except FileNotFoundError:  # deleted meanwhile (the API): its room is free
                total -= size
                continue
            except OSError as error:
                logger.warning("cannot prune %s: %s", path.name, error.strerror)
                continue
            total -= size
            pruned.append(path.name)
            self._forget(path.name)
        if pruned:
            self._counts["pruned"] += len(pruned)
            logger.info("pruned %d old recordings: %s", len(pruned), ", ".join(pruned))
        return pruned
