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

from aiortc import (
    RTCDtlsFingerprint,
    RTCIceCandidate,
    RTCIceParameters,
    RTCRtpCodecParameters,
)

from broadcast.errors import ServiceUnavailable
from broadcast.media.source_track import SourceTrack
from broadcast.viewer import ViewerSession
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

    def on_path(self, handler: Callable[[], None]) -> None:
        """The path is the worker's concern: its own viewer follows it."""

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

    async def restart_ice(
        self,
        remote_ice: RTCIceParameters,
        remote_candidates: Sequence[RTCIceCandidate],
        candidates_complete: bool,
    ) -> None:
        """Restart ICE on the worker's transport, and learn its new credentials."""
        if self.worker.control is None:
            raise ConnectionError(f"{self.worker!r} is gone")
        try:
            self.local_ice = await self.worker.control.call(
                "restart_ice",
                session=self.session_id,
                remote_ice=remote_ice,
                remote_candidates=list(remote_candidates),
                candidates_complete=candidates_complete,
            )
        except (OSError, TimeoutError, RemoteError) as exc:
            raise ConnectionError(
                f"{self.worker!r} did not restart ICE: {exc}"
            ) from exc

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


class RemoteViewer(ViewerSession):
    """A viewer carried by a worker: here, its place in the stream and its numbers.

    The worker holds the real `Viewer` (its tracks, RTCP, NACK answers, keyframe gate)
    under this session's id; this one holds the source tracks the worker taps for it,
    and what the worker tells it as a `WorkerViewer`: its transport's state, its join
    time, its stats and its end."""

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
        layers: Sequence[tuple[str, SourceTrack]] = (),
        on_layer_switch: Callable[[bool], None] = lambda up: None,
        pinned: bool = False,
    ) -> None:
        """`layers`, `pinned`: as for a `Viewer`, switched between in the worker."""
        super().__init__(stream_id, transport, remote_ufrag)
        self.remote = transport
        self.worker = worker
        self.process = worker.index
        self.on_join = on_join
        self.on_layer_switch = on_layer_switch
        self.sources = [tracks[kind] for kind in payload_types]
        switched = layers if "video" in payload_types and len(layers) > 1 else ()
        self.sources += [t for _, t in switched if t not in self.sources]
        self._switches = bool(switched)
        numbers = {source: worker.take(source) for source in self.sources}
        self._remote_counters: dict[str, int] = {}
        self._retransmissions = self._tracks_waiting = 0
        self._estimate_bps: int | None = None
        transport.session_id = self.id

        def described(t: SourceTrack) -> tuple[int, RTCRtpCodecParameters, int, bool]:
            return numbers[t], t.codec, t.ssrc, t.can_answer_pli

        transport.open_arguments = {
            "stream_id": stream_id,
            "tracks": {kind: described(tracks[kind]) for kind in payload_types},
            "layers": [(rid, *described(t)) for rid, t in switched],
            "pinned": pinned,
            "payload_types": payload_types,
            "remote_ufrag": remote_ufrag,
            "cname": cname,
        }
        transport.opened = self._feed
        worker.viewers[self.id] = self

    def _feed(self) -> None:
        if not self.closed:
            for source in self.sources:
                self.worker.feed(source)

    @property
    def retransmissions(self) -> int:
        return self._retransmissions

    @property
    def tracks_waiting(self) -> int:
        return self._tracks_waiting

    @property
    def estimate_bps(self) -> int | None:
        return self._estimate_bps

    async def close(self, reason: str, cause: str) -> None:
        if not self.closed:
            self.remote.close_reason, self.remote.close_cause = reason, cause
        await super().close(reason, cause)

    def transport_state(self, state: str) -> None:
        self.remote.state_changed(state)

    def joined(self, seconds: float) -> None:
        self.on_join(seconds)

    async def set_quality(self, quality: str) -> None:
        control = self.worker.control
        if not self._switches:
            await super().set_quality(quality)
            return
        if control is None or control.closed:
            raise ServiceUnavailable("worker_gone", f"{self.worker!r} is gone.")
        try:
            await control.call("set_quality", session=self.id, quality=quality)
        except (OSError, TimeoutError, RemoteError) as exc:
            raise ServiceUnavailable(
                "worker_gone", f"{self.worker!r} did not take the quality: {exc}."
            ) from exc

    def switched_layer(self, layer: str, up: bool) -> None:
        self.layer = layer
        self.on_layer_switch(up)

    def gone_there(self) -> None:
        self.remote.closed_there = True

    def take_stats(self, stats: dict[str, Any]) -> None:
        self._remote_counters = stats["counters"]
        self.remote.remote_address = stats["address"]
        self.fraction_lost = stats["fraction_lost"]
        self.rtt_s = stats["rtt_s"]
        self.bitrate_out_bps = stats["bitrate_out_bps"]
        self._retransmissions = stats["retransmissions"]
        self._tracks_waiting = stats["tracks_waiting"]
        self._estimate_bps = stats["estimate_bps"]

    def counters(self) -> dict[str, int]:
        return dict(self._remote_counters)

    def detach(self) -> None:
        for source in self.sources:
            self.worker.release(source)
        self.worker.viewers.pop(self.id, None)
