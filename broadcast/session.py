"""Session: what Publisher and Viewer share — a transport behind a session URL."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable

from aiortc.rtp import RtcpPacket

from broadcast.media.transport_protocol import Transport

logger = logging.getLogger(__name__)

# RFC 3550 §6.2 suggests 5 s for large groups; 1 s keeps sender/receiver reports useful
# for lip sync and loss feedback at a few hundred bytes per second.
RTCP_INTERVAL_S = 1.0


class Session:
    """One WHIP or WHEP session, addressed by an unguessable token in its URL."""

    kind = "session"

    def __init__(self, stream_id: str, transport: Transport, remote_ufrag: str) -> None:
        self.id = secrets.token_urlsafe(16)
        self.stream_id = stream_id
        self.transport = transport
        self.remote_ufrag = remote_ufrag
        self.retired_ufrags: set[str] = set()  # the peer's before its ICE restarts
        self.etag = f'"{secrets.token_hex(8)}"'
        self.closed = False
        self.close_reason = ""
        # Why it ended, from a short fixed list (a metrics label): client, transport,
        # timeout, stream_ended, shutdown, error.
        self.close_cause = ""
        self.started_at = time.monotonic()
        self.connected_at: float | None = None
        self.on_close: list[Callable[[Session], None]] = []
        self._rtcp_task: asyncio.Task[None] | None = None
        transport.on_packets(self.receive_rtp, self._receive_rtcp_data)
        transport.on_state(self._on_transport_state)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.stream_id}/{self.id[:6]})"

    def _on_transport_state(self, state: str) -> None:
        logger.debug("%r transport %s", self, state)
        if state == "connected":
            self.connected_at = time.monotonic()
            self.connected()
            self._rtcp_task = asyncio.create_task(self._run_rtcp())
        elif state in ("closed", "failed") and not self.closed:
            asyncio.get_running_loop().create_task(
                self.close(f"transport {state}", "transport")
            )

    def connected(self) -> None:
        """The transport is up: media may flow."""

    def receive_rtp(self, data: bytes) -> None:
        """One decrypted RTP packet from the peer."""

    def receive_rtcp(self, packet: object) -> None:
        """One RTCP packet (of a compound) from the peer."""

    def failure(self) -> str | None:
        """Why this session should be closed now, checked every RTCP interval."""
        return None

    def rtcp_report(self) -> bytes:
        """The periodic RTCP compound packet we send to the peer (may be empty)."""
        return b""

    def _receive_rtcp_data(self, data: bytes) -> None:
        try:
            packets = RtcpPacket.parse(data)
        except ValueError as exc:
            logger.debug("%r dropped malformed RTCP: %s", self, exc)
            return
        for packet in packets:
            self.receive_rtcp(packet)

    async def _run_rtcp(self) -> None:
        while not self.closed:
            await asyncio.sleep(RTCP_INTERVAL_S)
            failure = self.failure()
            if failure is not None:
                asyncio.get_running_loop().create_task(self.close(failure, "timeout"))
                return
            try:
                report = self.rtcp_report()
            except Exception:
                # Reports are best effort; losing one must not stop the next ones.
                logger.exception("%r could not build its RTCP report", self)
                continue
            if report:
                self.transport.send_rtcp(report)

    def counters(self) -> dict[str, int]:
        """Monotonic counts of this session's media, summed into server totals."""
        return {
            "packets_dropped": self.transport.failed_packets,
            "foreign_packets_dropped": self.transport.foreign_packets,
        }

    @property
    def remote_address(self) -> str | None:
        """The peer's address on the selected ICE pair, `host:port`."""
        address = self.transport.remote_address
        return f"{address[0]}:{address[1]}" if address else None

    async def close(self, reason: str, cause: str) -> None:
        """End the session; idempotent. `reason` goes to the log, `cause` to metrics."""
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason
        self.close_cause = cause
        logger.info("%r closed: %s", self, reason)
        if self._rtcp_task is not None:
            self._rtcp_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._rtcp_task
        self.detach()
        for callback in self.on_close:
            callback(self)
        await self.transport.close()

    async def hang_up(self) -> None:
        """The client ended the session (HTTP DELETE)."""
        await self.close("ended by the client", "client")

    def detach(self) -> None:
        """Let go of the stream's tracks (called once, on close)."""
