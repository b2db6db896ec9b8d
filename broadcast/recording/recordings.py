"""Recordings: which streams record, the recordings directory and what is in it.

Started by the API or the config (every stream, or a camera with `record="true"`),
a stream's recorder follows the stream's events: it taps the tracks when the stream goes
live (again, after a publisher's reconnect: the same file goes on), and finishes at
its end. Files are pruned oldest first past `max_total_gb` and `keep_days`.
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
from aiohttp import web

from broadcast.config import Config
from broadcast.errors import BadRequest, Conflict, NotFound
from broadcast.events import Event, StreamEvents
from broadcast.recording.recorder import FAILED, RECORDING, Recorder
from broadcast.recording.writer import RecordingFile, mime_type
from broadcast.stream import ENDED, LIVE, Stream

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


class Recordings:
    """This process's recorders and the recordings directory."""

    def __init__(
        self,
        config: Config,
        events: StreamEvents,
        find_stream: Callable[[str], Stream | None],
    ) -> None:
        self.directory = Path(config.recording_dir)
        self._config = config
        self._events = events
        self._find_stream = find_stream
        self.recorders: dict[str, Recorder] = {}
        # Files this run wrote: their state, and why one failed.
        self._states: dict[str, str] = {}
        self._written: dict[str, FileInfo] = {}
        self._probed: dict[str, tuple[tuple[int, float], FileInfo]] = {}
        self.counts: Counter[str] = Counter()  # started, finished, failed, pruned
        self._dropped_before = 0  # by recorders gone
        self._stop_listening = events.listen_all(self._on_event)
        self._pruner: asyncio.Task[None] | None = None
        self._pruning = (
            threading.Lock()
        )  # the timer's and a finished file's, one at once
        # Stopped recorders finishing their files (waited for at shutdown).
        self._finishing: set[asyncio.Future[bool]] = set()

    @property
    def dropped_frames(self) -> int:
        """Frames left out of files (a lost packet), by every recorder since start."""
        return self._dropped_before + sum(
            r.dropped_frames for r in self.recorders.values()
        )

    def start_pruning(self) -> None:
        self._pruner = asyncio.get_running_loop().create_task(self._prune_forever())

    # Streams.

    def start(self, stream: Stream) -> Recorder:
        """Record `stream` from now (its latest keyframe); 409 if it is recording."""
        recorder = self.recorders.get(stream.id)
        if recorder is not None and recorder.state == RECORDING:
            raise Conflict(
                "already_recording", f"Stream '{stream.id}' is being recorded."
            )
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise Conflict(
                "recording_unavailable",
                f"Cannot make the recordings directory: {error.strerror}.",
            ) from None
        recorder = Recorder(
            stream.id,
            self.directory,
            self._config.recording_max_file_minutes * 60,
            self._recorder_changed,
        )
        if stream.id in self.recorders:
            self._dropped_before += self.recorders[stream.id].dropped_frames
        self.recorders[stream.id] = recorder
        recorder.attach(stream.tracks)
        stream.set_recorded(True)
        logger.info("%r started, into %s", recorder, self.directory)
        return recorder

    def stop(self, stream_id: str) -> Recorder:
        """Stop recording `stream_id`; 404 if it is not recording."""
        recorder = self.recorders.get(stream_id)
        if recorder is None or recorder.state != RECORDING:
            raise NotFound(
                "not_recording", f"Stream '{stream_id}' is not being recorded."
            )
        self._stop(recorder)
        return recorder

    def _stop(self, recorder: Recorder) -> None:
        recorder.stop()
        recorder.state = "stopped"
        self._let_go(recorder)
        logger.info("%r stopped", recorder)
        finishing = asyncio.ensure_future(recorder.stopped())
        self._finishing.add(finishing)
        finishing.add_done_callback(self._finishing.discard)

    def _let_go(self, recorder: Recorder) -> None:
        """A stream no longer recorded lets an on-demand camera go again."""
        stream = self._find_stream(recorder.stream_id)
        if (
            stream is not None
            and stream.state != ENDED
            and self.recorders.get(stream.id) in (recorder, None)
        ):
            stream.set_recorded(False)

    def _on_event(self, event: Event) -> None:
        if event["type"] != "state":
            return
        stream = self._find_stream(event["stream"])
        recorder = self.recorders.get(event["stream"])
        if event["state"] == ENDED:
            if recorder is not None:
                del self.recorders[event["stream"]]
                self._dropped_before += recorder.dropped_frames
                if recorder.state == RECORDING:
                    self._stop(recorder)
        elif event["state"] == LIVE and stream is not None:
            if recorder is not None and recorder.state == RECORDING:
                recorder.attach(stream.tracks)  # a track it has not seen yet
            elif recorder is None and self._records_from_start(stream):
                self.start(stream)

    def _records_from_start(self, stream: Stream) -> bool:
        source = stream.source
        if source is None or source.kind == "relay":  # recorded where it is published
            return False
        return self._config.record_all or source.record_from_start

    def _recorder_changed(
        self, recorder: Recorder, change: str, file: RecordingFile | None
    ) -> None:
        """A recorder's file started or finished, or it failed: tell pages and logs."""
        name = file.path.name if file is not None else None
        if change == "started" and name is not None:
            self._states[name] = RECORDING
            self.counts["started"] += 1
            logger.info("%r writing %s", recorder, name)
        elif change == "finished" and name is not None:
            if self._states.get(name) != FAILED:
                self._states[name] = "done"
            self.counts["finished"] += 1
            logger.info("%r finished %s (%.1f s)", recorder, name, file.duration_s)  # type: ignore[union-attr]
        elif change == FAILED:
            if name is not None:
                self._states[name] = FAILED
            self.counts["failed"] += 1
            self._let_go(recorder)
        if file is not None:
            self._written[file.path.name] = self._info_of(file)
        if change == "finished" and recorder.state == FAILED:
            return  # its "failed" said it
        self._publish(recorder, change, file)
        if change == "finished":
            asyncio.get_running_loop().run_in_executor(None, self.prune)

    def _publish(
        self, recorder: Recorder, change: str, file: RecordingFile | None
    ) -> None:
        event = {"started": "started", "finished": "stopped", FAILED: "failed"}[change]
        self._events.publish(
            {
                "type": "recording",
                "stream": recorder.stream_id,
                "event": event,
                "file": file.path.name if file is not None else None,
                "duration": round(file.duration_s, 1) if file is not None else None,
                "reason": recorder.reason if change == FAILED else None,
            }
        )

    def _info_of(self, file: RecordingFile) -> FileInfo:
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

    def summary(self, stream_id: str) -> dict[str, Any] | None:
        """A stream's recording as `/api/streams` shows it."""
        recorder = self.recorders.get(stream_id)
        if recorder is None or recorder.state not in (RECORDING, FAILED):
            return None
        file = recorder.file
        return {
            "state": recorder.state,
            "file": file.path.name if file is not None else None,
            "start": recorder.started.isoformat().replace("+00:00", "Z"),
            "reason": recorder.reason,
        }

    # Files.

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
        return any(
            r.file is not None and r.file.path.name == name
            for r in self.recorders.values()
        )

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
        for recorder in list(self.recorders.values()):
            file = recorder.file
            if file is not None and file.path.name == name:
                return self._info_of(file)
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
            self.counts["pruned"] += len(pruned)
            logger.info("pruned %d old recordings: %s", len(pruned), ", ".join(pruned))
        return pruned

    async def close(self) -> None:
        """Stop every recorder and wait for its file to be finished."""
        self._stop_listening()
        if self._pruner is not None:
            self._pruner.cancel()
        for recorder in self.recorders.values():
            if recorder.state == RECORDING:
                self._stop(recorder)
        self.recorders.clear()
        await asyncio.gather(*self._finishing)  # each gives up after FINISH_TIMEOUT_S


RECORDINGS = web.AppKey("recordings", Recordings)
