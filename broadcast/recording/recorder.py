"""Recorder: one stream's recording, fed by taps on its tracks, written by a thread.

The hot path only appends each packet to a bounded queue (no lock, no disk): a thread
of the recorder's own turns packets into frames and frames into files. A recorder that
falls behind by more than the queue holds, or whose disk fails or fills, stops with a
reason; the stream and its viewers never wait for it.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import av

from broadcast.media.source_track import SourceTrack
from broadcast.recording.frames import DEPACKETIZERS, Frame, FrameAssembler
from broadcast.recording.writer import RecordingFile, TrackSpec, container_for

logger = logging.getLogger(__name__)

# Packets waiting for the thread: ~5 s of an 8 Mbit/s stream. A disk that stalls
# longer fails the recording rather than the server's memory.
MAX_QUEUED_PACKETS = 4000
IDLE_WAIT_S = 0.02
# How long a stop (the API's DELETE, shutdown) waits for the thread to finish its file.
FINISH_TIMEOUT_S = 10.0
RECORDING, STOPPED, FAILED = "recording", "stopped", "failed"


def file_name(stream_id: str, started: datetime, extension: str, taken: Path) -> Path:
    """`<stream>-<UTC start>.<ext>` in `taken`'s directory; `-2`, `-3` if it exists."""
    stem = f"{stream_id}-{started.strftime('%Y%m%dT%H%M%SZ')}"
    path = taken / f"{stem}.{extension}"
    number = 1
    while path.exists():
        number += 1
        path = taken / f"{stem}-{number}.{extension}"
    return path


class Recorder:
    """Records one stream into `directory`, rolling to a new file at a keyframe after
    `max_file_s` (0: never). A change of picture size stays in the file (a browser
    adapts its size to its network all the time; the keyframe carries the new size).

    Lives in the event loop; its thread only writes. `on_change(recorder, event, file)`
    is called in the loop for each file started or finished, and once when it fails.
    """

    def __init__(
        self,
        stream_id: str,
        directory: Path,
        max_file_s: float,
        on_change: Callable[[Recorder, str, RecordingFile | None], None],
    ) -> None:
        self.stream_id = stream_id
        self.directory = directory
        self.state = RECORDING
        self.reason: str | None = None
        self.started = datetime.now(UTC)
        self.file: RecordingFile | None = None  # the file being written
        self.dropped_frames = 0
        self._max_file_s = max_file_s
        self._on_change = on_change
        self._loop = asyncio.get_running_loop()
        self._queue: collections.deque[tuple[str, bytes, float]] = collections.deque()
        self._taps: dict[SourceTrack, Callable[[bytes], None]] = {}
        self._specs: dict[str, TrackSpec] = {}
        self._assemblers: dict[str, FrameAssembler] = {}
        self._stopping = False
        self._thread = threading.Thread(
            target=self._run, name=f"recorder-{stream_id}", daemon=True
        )
        self._thread.start()

    def __repr__(self) -> str:
        return f"Recorder({self.stream_id})"

    def attach(self, tracks: dict[str, SourceTrack]) -> None:
        """Tap the stream's tracks not tapped yet; a video track's cached GOP is queued
        first, so the recording starts at the latest keyframe, not the next one."""
        if self.state != RECORDING:
            return
        new = {
            kind: track
            for kind, track in tracks.items()
            if track not in self._taps and kind not in self._specs
        }
        for kind, track in list(new.items()):
            if track.codec.mimeType.lower() not in DEPACKETIZERS:
                logger.warning("%r: %s is not recorded", self, track.codec.mimeType)
                del new[kind]
                continue
            self._assemblers[kind] = FrameAssembler(
                track.codec.mimeType, kind == "video"
            )
        # The thread opens a file with the tracks it knows: all of them at once.
        self._specs = {
            **self._specs,
            **{
                kind: TrackSpec(
                    kind,
                    track.codec.mimeType,
                    track.clock_rate,
                    track.codec.channels or 2,
                )
                for kind, track in new.items()
            },
        }
        for kind, track in new.items():
            if kind == "video" and track.gop:
                arrived_at = track.gop_arrived_at
                self._queue.extend((kind, packet, arrived_at) for packet in track.gop)
            tap = self._tap(kind)
            self._taps[track] = tap
            track.taps.append(tap)

    def _tap(self, kind: str) -> Callable[[bytes], None]:
        queue = self._queue

        def tap(packet: bytes) -> None:
            if len(queue) < MAX_QUEUED_PACKETS:
                queue.append((kind, packet, time.monotonic()))
            elif self.state == RECORDING:
                self._fail("fell behind: the disk is too slow")

        return tap

    def stop(self) -> None:
        """Stop taking packets; the thread writes what is queued and closes the file."""
        self._detach()
        self._stopping = True

    async def stopped(self) -> bool:
        """Wait for the thread to finish the file; False if it has not after
        FINISH_TIMEOUT_S (a disk that hangs: NFS gone, a dying drive)."""
        await asyncio.to_thread(self._thread.join, FINISH_TIMEOUT_S)
        if self._thread.is_alive():
            logger.error(
                "%r: the file is not finished after %.0f s: the disk hangs",
                self,
                FINISH_TIMEOUT_S,
            )
            return False
        return True

    def _detach(self) -> None:
        # Not from inside a track's loop over its taps: in the next turn of the loop.
        taps, self._taps = self._taps, {}
        self._loop.call_soon(_remove_taps, taps)

    def _fail(self, reason: str) -> None:
        """In the loop: stop for good, with a reason (the file so far is kept)."""
        if self.state != RECORDING:
            return
        self.state, self.reason = FAILED, reason
        logger.error("%r failed: %s", self, reason)
        self._queue.clear()
        self.stop()
        self._on_change(self, FAILED, self.file)

    # The thread.

    def _run(self) -> None:
        try:
            while True:
                if self._queue:
                    self._take(*self._queue.popleft())
                elif self._stopping:
                    break
                else:
                    time.sleep(IDLE_WAIT_S)
        except (OSError, av.FFmpegError) as error:
            self._loop.call_soon_threadsafe(self._fail, _reason(error))
        finally:
            self._finish()

    def _take(self, kind: str, packet: bytes, arrived_at: float) -> None:
        assembler = self._assemblers[kind]
        frames = assembler.push(packet, arrived_at)
        self.dropped_frames = sum(a.dropped for a in self._assemblers.values())
        for frame in frames:
            self._write(kind, frame)

    def _write(self, kind: str, frame: Frame) -> None:
        if kind == "video" and frame.keyframe and self._should_roll():
            self._finish()
        if self.file is None:
            if not self._may_open_at(kind, frame):
                return
            self.file = self._open(frame)
            if self.file is None:
                return
            self._loop.call_soon_threadsafe(self._on_change, self, "started", self.file)
        self.file.write(kind, frame)

    def _may_open_at(self, kind: str, frame: Frame) -> bool:
        """A file starts at a video keyframe, or at any audio frame of a stream
        without video."""
        if "video" in self._specs:
            return kind == "video" and frame.keyframe
        return True

    def _should_roll(self) -> bool:
        file = self.file
        return (
            file is not None
            and bool(self._max_file_s)
            and file.duration_s >= self._max_file_s
        )

    def _open(self, first: Frame) -> RecordingFile | None:
        specs = list(self._specs.values())
        extension = container_for(specs)
        if extension is None:
            return None
        started = datetime.now(UTC)
        path = file_name(self.stream_id, started, extension, self.directory)
        try:
            return RecordingFile(path, specs, first)
        except ValueError as error:  # no SPS/PPS, an odd size: try the next keyframe
            logger.warning("%r cannot start a file here: %s", self, error)
            path.unlink(missing_ok=True)
            return None

    def _finish(self) -> None:
        file, self.file = self.file, None
        if file is None:
            return
        try:
            file.close()
        except (OSError, av.FFmpegError) as error:
            self._loop.call_soon_threadsafe(self._fail, _reason(error))
        self._loop.call_soon_threadsafe(self._on_change, self, "finished", file)


def _remove_taps(taps: dict[SourceTrack, Callable[[bytes], None]]) -> None:
    for track, tap in taps.items():
        if tap in track.taps:
            track.taps.remove(tap)


def _reason(error: Exception) -> str:
    """What an operator can act on: a full disk said plainly."""
    if getattr(error, "errno", None) == 28:  # ENOSPC
        return "disk full"
    return f"write failed: {error}"
