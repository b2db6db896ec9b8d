"""Stand-ins, in the main process, for a viewer that a worker process carries.

A `RemoteViewer` is in its stream (counts, limits, events), in the registry (its
session URL, the admin API, /metrics), and closes like any viewer; its
`RemoteTransport` answers what `answer_session` and WHEP PATCH/DELETE ask of a
transport by asking the worker. Media and RTCP never pass through here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from aiortc import RTCDtlsFingerprint, RTCIceCandidate, RTCIceParameters

from broadcast.media.source_track import SourceTrack
from broadcast.viewer import Viewer
from broadcast.workers.channel import RemoteError
from broadcast.workers.pool import WorkerProcess

logger = logging.getLogger(__name__)


class RemoteTransport:
    """A viewer's ICE + DTLS transport that lives in a worker: a `Transport` whose
    signaling asks the worker, and whose media never passes here."""

    def __init__(self, worker: WorkerProcess) -> None:
        self.worker = worker
        self.session_id = ""
        self.open_arguments: dict[str, Any] = {}
        self.local_ice = RTCIceParameters()
        self.local_candidates: list[RTCIceCandidate] = []
        self.local_fingerprints: list[RTCDtlsFingerprint] = []
        self.state = "new"
        self.closed = False
        self.closed_there = False  # the worker closed it: nothing to tell
        self.close_reason = self.close_cause = ""  # the session's, for the worker's log
        self.remote_address: tuple[str, int] | None = None
        self.failed_packets = self.foreign_packets = 0  # counted in the worker
        self.on_tcp = False  # its retransmissions are the worker's
        self._on_state: list[Callable[[str], None]] = []
        # The worker holds the viewer's tracks now: their packets may flow.
        self.opened: Callable[[], None] = lambda: None

    def on_packets(
        self, rtp: Callable[[bytes], None], rtcp: Callable[[bytes], None]
    ) -> None:
        """Media and RTCP from this viewer stay in the worker."""

    def on_state(self, handler: Callable[[str], None]) -> None:
        self._on_state.append(handler)

    def state_changed(self, state: str) -> None:
        self.state = state
        for handler in self._on_state:
            handler(state)

    async def gather(self) -> None:
        control = self.worker.control
        assert control is not None
        local = await control.call(
            "open_viewer", session=self.session_id, **self.open_arguments
        )
        self.local_ice = local["ice"]
        self.local_candidates = local["candidates"]
        self.local_fingerprints = local["fingerprints"]
        self.opened()

    def start(
        self,
        remote_ice: RTCIceParameters,
        remote_candidates: Sequence[RTCIceCandidate],
        remote_fingerprints: Sequence[RTCDtlsFingerprint],
        candidates_complete: bool,
        dtls_role: str,
    ) -> None:
        if self.worker.control is not None:
            self.worker.control.tell(
                "start_viewer",
                session=self.session_id,
                remote_ice=remote_ice,
                remote_candidates=list(remote_candidates),
                remote_fingerprints=list(remote_fingerprints),
                candidates_complete=candidates_complete,
                dtls_role=dtls_role,
            )

    async def add_remote_candidate(self, candidate: RTCIceCandidate | None) -> None:
        """Trickle to the worker; lost with the worker (its viewers close with it)."""
        if self.worker.control is None:
            return
        try:
            await self.worker.control.call(
                "add_candidate", session=self.session_id, candidate=candidate
            )
        except (OSError, TimeoutError, RemoteError) as exc:
            logger.info("%r: a trickled candidate was lost: %s", self.worker, exc)

    def send_rtp(self, data: bytes) -> None:
        """Never called: the worker sends this viewer's media."""

    def send_rtcp(self, data: bytes) -> None:
        """Never called: the worker sends this viewer's reports."""

    def fan_out_target(self) -> None:
        return None

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        control = self.worker.control
        if not self.closed_there and control is not None and not control.closed:
            try:
                await control.call(
                    "close_viewer",
                    session=self.session_id,
                    reason=self.close_reason,
                    cause=self.close_cause,
                )
            except (OSError, TimeoutError, RemoteError):
                logger.debug("%r: the worker could not close a viewer", self.worker)


class RemoteViewer(Viewer):
    """A viewer carried by a worker: here, its place in the stream and its numbers.

    A `WorkerViewer` for its worker, which tells it its transport's state, its join
    time, its stats and its end."""

    asks_for_keyframes = False

    def __init__(
        self,
        worker: WorkerProcess,
        stream_id: str,
        tracks: Mapping[str, SourceTrack],
        transport: RemoteTransport,
        remote_ufrag: str,
        payload_types: dict[str, int],
        cname: str,
        on_join: Callable[[float], None],
    ) -> None:
        super().__init__(
            stream_id,
            tracks,
            transport,
            remote_ufrag,
            payload_types,
            cname,
        )
        self.remote = transport
        self.worker = worker
        self.process = worker.index
        self.on_join = on_join
        self._remote_counters: dict[str, int] = {}
        transport.session_id = self.id
        transport.open_arguments = {
            "stream_id": stream_id,
            "tracks": {
                t.source.kind: (
                    worker.take(t.source),
                    t.source.codec,
                    t.source.ssrc,
                    t.source.can_answer_pli,
                )
                for t in self.tracks
            },
            "payload_types": payload_types,
            "remote_ufrag": remote_ufrag,
            "cname": cname,
        }
        transport.opened = self._feed
        worker.viewers[self.id] = self

    def _feed(self) -> None:
        if not self.closed:
            for track in self.tracks:
                self.worker.feed(track.source)

    async def close(self, reason: str, cause: str) -> None:
        if not self.closed:
            self.remote.close_reason, self.remote.close_cause = reason, cause
        await super().close(reason, cause)

    def transport_state(self, state: str) -> None:
        self.remote.state_changed(state)

    def joined(self, seconds: float) -> None:
        self.on_join(seconds)

    def gone_there(self) -> None:
        self.remote.closed_there = True

    def connected(self) -> None:
        """The worker's copy of the viewer is connected; it adds itself there."""

    def rtcp_report(self) -> bytes:
        return b""  # the worker reports to this viewer

    def take_stats(self, stats: dict[str, Any]) -> None:
        self._remote_counters = stats["counters"]
        self.remote.remote_address = stats["address"]
        self.fraction_lost = stats["fraction_lost"]
        self.rtt_s = stats["rtt_s"]
        self.bitrate_out_bps = stats["bitrate_out_bps"]
        for track, (waiting, retransmitted, _, _) in zip(
            self.tracks, stats["tracks"], strict=False
        ):
            track.waiting_for_keyframe = waiting
            track.retransmitted = retransmitted

    def counters(self) -> dict[str, int]:
        return dict(self._remote_counters)

    def detach(self) -> None:
        for track in self.tracks:
            self.worker.release(track.source)
        self.worker.viewers.pop(self.id, None)
