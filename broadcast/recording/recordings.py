"""Recordings: which streams record.

Started by the API or the config (every stream, or a camera with `record="true"`),
a stream's recorder follows the stream's events: it taps the tracks when the stream goes
live (again, after a publisher's reconnect: the same file goes on), and finishes at
its end. Its files are `RecordingFiles`'.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable
from typing import Any

from aiohttp import web

from broadcast.config import Config
from broadcast.errors import Conflict, NotFound
from broadcast.events import Event, StreamEvents
from broadcast.recording.files import RecordingFiles
from broadcast.recording.recorder import FAILED, RECORDING, Recorder
from broadcast.recording.writer import RecordingFile
from broadcast.stream import ENDED, LIVE, Stream

logger = logging.getLogger(__name__)


class Recordings:
    """This process's recorders and the recordings directory."""

    def __init__(
        self,
        config: Config,
        events: StreamEvents,
        find_stream: Callable[[str], Stream | None],
    ) -> None:
        self._config = config
        self._events = events
        self._find_stream = find_stream
        self.recorders: dict[str, Recorder] = {}
        self.counts: Counter[str] = Counter()  # started, finished, failed, pruned
        self.files = RecordingFiles(config, self._files_written, self.counts)
        self._dropped_before = 0  # by recorders gone
        self._stop_listening = events.listen_all(self._on_event)
        # Stopped recorders finishing their files (waited for at shutdown).
        self._finishing: set[asyncio.Future[bool]] = set()

    @property
    def dropped_frames(self) -> int:
        """Frames left out of files (a lost packet), by every recorder since start."""
        return self._dropped_before + sum(
            r.dropped_frames for r in self.recorders.values()
        )

    def _files_written(self) -> list[RecordingFile]:
        return [r.file for r in list(self.recorders.values()) if r.file is not None]

    # Streams.

    def start(self, stream: Stream) -> Recorder:
        """Record `stream` from now (its latest keyframe); 409 if it is recording."""
        recorder = self.recorders.get(stream.id)
        if recorder is not None and recorder.state == RECORDING:
            raise Conflict(
                "already_recording", f"Stream '{stream.id}' is being recorded."
            )
        try:
            self.files.directory.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise Conflict(
                "recording_unavailable",
                f"Cannot make the recordings directory: {error.strerror}.",
            ) from None
        recorder = Recorder(
            stream.id,
            self.files.directory,
            self._config.recording_max_file_minutes * 60,
            self._recorder_changed,
        )
        if stream.id in self.recorders:
            self._dropped_before += self.recorders[stream.id].dropped_frames
        self.recorders[stream.id] = recorder
        recorder.attach(stream.tracks)
        stream.set_recorded(True)
        logger.info("%r started, into %s", recorder, self.files.directory)
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
        if change == "started" and file is not None:
            self.files.written(file, RECORDING)
            self.counts["started"] += 1
            logger.info("%r writing %s", recorder, name)
        elif change == "finished" and file is not None:
            self.files.written(file, "done")
            self.counts["finished"] += 1
            logger.info("%r finished %s (%.1f s)", recorder, name, file.duration_s)
        elif change == FAILED:
            if file is not None:
                self.files.written(file, FAILED)
            self.counts["failed"] += 1
            self._let_go(recorder)
        if change == "finished" and recorder.state == FAILED:
            return  # its "failed" said it
        self._publish(recorder, change, file)
        if change == "finished":
            asyncio.get_running_loop().run_in_executor(None, self.files.prune)

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

    async def close(self) -> None:
        """Stop every recorder and wait for its file to be finished."""
        self._stop_listening()
        self.files.stop_pruning()
        for recorder in self.recorders.values():
            if recorder.state == RECORDING:
                self._stop(recorder)
        self.recorders.clear()
        await asyncio.gather(*self._finishing)  # each gives up after FINISH_TIMEOUT_S


RECORDINGS = web.AppKey("recordings", Recordings)
