"""Transport: what a session and its signaling use of its ICE + DTLS-SRTP transport.

Two kinds satisfy it: `SecureTransport` (media/transport.py), the real one in the
process carrying the session's media, and `RemoteTransport` (workers/remote.py), the
main process's stand-in for one that lives in a worker. Sessions, their signaling and
viewer tracks are typed against this, so neither kind needs passing off as the other.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from aiortc import RTCDtlsFingerprint, RTCIceCandidate, RTCIceParameters

from broadcast.media.udp_mux import MediaSocket

# What a transport offers the fan-out: socket, srtp_t address, peer, SRTP session.
NativeTarget = tuple[MediaSocket, int, tuple[str, int], Any]


class Transport(Protocol):
    """One session's ICE + DTLS-SRTP transport, as its session and signaling see it."""

    # --- signaling: gather, answer, trickle, end ------------------------------------

    async def gather(self) -> None:
        """Gather our candidates (before the answer is built)."""

    @property
    def local_ice(self) -> RTCIceParameters: ...

    @property
    def local_candidates(self) -> list[RTCIceCandidate]: ...

    @property
    def local_fingerprints(self) -> list[RTCDtlsFingerprint]: ...

    def start(
        self,
        remote_ice: RTCIceParameters,
        remote_candidates: Sequence[RTCIceCandidate],
        remote_fingerprints: Sequence[RTCDtlsFingerprint],
        candidates_complete: bool,
        dtls_role: str,
    ) -> None:
        """Connect in the background, as the answerer; `dtls_role` is ours."""

    async def add_remote_candidate(self, candidate: RTCIceCandidate | None) -> None:
        """A trickled candidate, or None for end-of-candidates."""

    async def restart_ice(
        self,
        remote_ice: RTCIceParameters,
        remote_candidates: Sequence[RTCIceCandidate],
        candidates_complete: bool,
    ) -> None:
        """ICE restart with the peer's new credentials: ours are new in `local_ice`
        after; DTLS and SRTP carry on. ConnectionError if it cannot be done."""

    async def close(self) -> None:
        """Stop; idempotent."""

    # --- the session: state, packets in and out, counts ------------------------------

    @property
    def state(self) -> str:
        """`new`, `connecting`, `connected`, `closed` or `failed`."""

    def on_state(self, handler: Callable[[str], None]) -> None:
        """Also call `handler(state)` on each change (handlers add up)."""

    def on_packets(
        self, rtp: Callable[[bytes], None], rtcp: Callable[[bytes], None]
    ) -> None:
        """Where decrypted RTP and RTCP from the peer go."""

    def on_path(self, handler: Callable[[], None]) -> None:
        """Also call `handler()` when media moves to another ICE pair (a restart)."""

    def send_rtp(self, data: bytes) -> None: ...

    def send_rtcp(self, data: bytes) -> None: ...

    def fan_out_target(self) -> NativeTarget | None:
        """This session for its socket's fan-out, or None: `send_rtp` then."""

    @property
    def remote_address(self) -> tuple[str, int] | None:
        """The peer's address on the selected ICE pair."""

    @property
    def on_tcp(self) -> bool:
        """The selected ICE pair is ICE-TCP: the link itself repairs loss."""

    @property
    def failed_packets(self) -> int: ...

    @property
    def foreign_packets(self) -> int: ...
