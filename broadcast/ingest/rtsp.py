"""RTSP client for IP cameras: DESCRIBE, SETUP each track, PLAY, keep-alive, watchdog.

aiortsp gives us the connection (auth, interleaved channels) and the RTP transports; its
session classes set up one media only, so the session dialogue is ours. Camera URLs carry
credentials: they go to aiortsp and nowhere else — every message here uses `redact_url()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from aiortsp.rtsp.connection import RTSPConnection
from aiortsp.rtsp.errors import (
    RTSPConnectionError,
    RTSPError,
    RTSPResponseError,
    RTSPTimeoutError,
)
from aiortsp.rtsp.parser import HTTPLikeMsg, RTSPMessage
from aiortsp.transport import TCPTransport, UDPTransport
from dpkt.rtp import RTP

from broadcast.config import RtspOptions
from broadcast.redact import host_port, redact_url
from broadcast.source import SourceUnavailable

logger = logging.getLogger(__name__)
# aiortsp logs requests with their Authorization header at DEBUG: keep it quiet.
QUIET = logging.getLogger("broadcast.ingest.aiortsp")
QUIET.setLevel(logging.WARNING)

REQUEST_TIMEOUT_S = 10.0
# A camera that sends nothing for this long is dead even if its socket is open.
MEDIA_TIMEOUT_S = 5.0
DEFAULT_SESSION_TIMEOUT_S = 60
# What one RTSP message from a camera may hold. Real cameras send a few hundred bytes of
# headers and a DESCRIBE body (the SDP) of a few KiB; past these limits the camera is
# broken or hostile, and the connection is dropped before it can make us buffer more.
MAX_HEADER_BYTES = 64 * 1024  # status line and headers
MAX_BODY_BYTES = 64 * 1024  # the body (aiortsp's own buffer is this size, too)
# Bytes from the camera are parsed this many at a time: aiortsp's parser copies the rest
# of its input once per message, so a 256 KiB read of tiny messages (empty interleaved
# frames, blank lines, header lines) would hold up the event loop for a good fraction of
# a second.
PARSE_SLICE_BYTES = 4096

PacketHandler = Callable[[int, bytes], None]


class CameraError(SourceUnavailable):
    """A camera failure; the message is safe to show (it never holds credentials)."""

    code = "camera_unavailable"


class CameraProtocolError(RTSPConnectionError):
    """The camera broke RTSP; the connection is dropped. The message is safe to show."""


@dataclass
class CameraTrack:
    """One m-section of a camera's SDP."""

    kind: str
    payload_type: int
    encoding: str  # upper case: H264, PCMA, MPEG4-GENERIC, ...
    clock_rate: int
    channels: int = 1
    fmtp: dict[str, str] = field(default_factory=dict)
    control: str | None = None


def request_url(url: str) -> str:
    """The URL we send in requests: without user and password, path and query intact."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, host_port(url), parts.path, parts.query, ""))


def parse_sdp(text: str) -> list[CameraTrack]:
    """The audio and video tracks of a camera's SDP (RFC 8866), ignoring what we cannot use.

    Parsed here rather than by aiortsp, which misreads `MPEG4-GENERIC/16000/1`.
    """
    tracks: list[CameraTrack] = []
    current: CameraTrack | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("m="):
            current = None
            fields = line[2:].split()
            if (
                len(fields) >= 4
                and fields[0] in ("audio", "video")
                and fields[3].isdigit()
            ):
                current = CameraTrack(fields[0], int(fields[3]), "", 0)
                tracks.append(current)
        elif current is None or not line.startswith("a="):
            continue
        elif line.startswith("a=rtpmap:"):
            pt, _, spec = line[9:].partition(" ")
            if pt.strip() == str(current.payload_type):
                name, _, rest = spec.partition("/")
                rate, _, channels = rest.partition("/")
                current.encoding = name.strip().upper()
                current.clock_rate = int(rate) if rate.isdigit() else 0
                current.channels = int(channels) if channels.isdigit() else 1
        elif line.startswith("a=fmtp:"):
            pt, _, params = line[7:].partition(" ")
            if pt.strip() == str(current.payload_type):
                for param in params.split(";"):
                    key, _, value = param.strip().partition("=")
                    if key:
                        current.fmtp[key.lower()] = value.strip()
        elif line.startswith("a=control:"):
            current.control = line[10:].strip()
    for track in tracks:
        if not track.encoding:  # static payload types need no rtpmap (RFC 3551)
            track.encoding, track.clock_rate = {
                0: ("PCMU", 8000),
                8: ("PCMA", 8000),
            }.get(track.payload_type, ("", 0))
    return tracks


def control_url(base: str, control: str | None) -> str:
    """Where to SETUP a track (RFC 2326 §C.1.1): absolute, `*`, or relative to base."""
    if not control or control == "*":
        return base
    if "://" in control:
        return control
    return base.rstrip("/") + "/" + control


class _GuardedConnection(RTSPConnection):
    """aiortsp's connection, with limits and plain errors for what a camera sends.

    A message past MAX_HEADER_BYTES or MAX_BODY_BYTES, or one that is not RTSP, drops the
    connection with a CameraProtocolError saying why (aiortsp would log the raw bytes,
    print a traceback, and report only "invalid data"). Answers to no pending request
    (a wrong CSeq) are counted, so that the request's timeout can say so.
    """

    def __init__(self, *args: object, **kw: object) -> None:
        super().__init__(*args, **kw)
        self.stray_responses = 0
        self._header_of: RTSPMessage | None = None
        self._header_bytes = 0

    def data_received(self, data: bytes) -> None:
        if self.result.done():
            return  # dropped already
        try:
            for start in range(0, len(data), PARSE_SLICE_BYTES):
                piece = data[start : start + PARSE_SLICE_BYTES]
                for message in self.parser.parse(piece):
                    self._dispatch(message)
                self._check_limits(len(piece))
        except CameraProtocolError as error:
            self._fail(error)
        except Exception:  # noqa: BLE001 - aiortsp's parser: ValueError, AssertionError...
            self._fail(CameraProtocolError("the camera sent a malformed RTSP message"))

    def _dispatch(self, message: RTSPMessage) -> None:
        if message.type == "response":
            if message.content_length < 0:
                raise CameraProtocolError("the camera sent a negative Content-Length")
            request = self.active_requests.get(message.cseq)
            if request is None or request.done():
                self.stray_responses += 1
            else:
                request.set_result(message)
        elif message.type == "binary":
            handler = self.binary_handlers.get(message.id)
            if handler is not None:
                handler(message)
        elif message.type == "request":  # we serve none (aiortsp logs its body)
            self.send_response(message, 551, "Option not supported")
            if self._transport and self._transport.get_write_buffer_size() > (
                MAX_HEADER_BYTES
            ):
                raise CameraProtocolError(
                    "the camera sends requests and does not read the answers"
                )

    def _check_limits(self, size: int) -> None:
        pending = self.parser.pending_msg
        if not isinstance(pending, HTTPLikeMsg):
            return
        if pending.headers is None:  # still in the headers: count them
            if pending is not self._header_of:
                self._header_of, self._header_bytes = pending, 0
            self._header_bytes += size
            if self._header_bytes > MAX_HEADER_BYTES:
                raise CameraProtocolError(
                    f"the camera sent more than {MAX_HEADER_BYTES // 1024} KiB of"
                    " headers in one message"
                )
        elif pending.content_length > MAX_BODY_BYTES:
            raise CameraProtocolError(
                f"the camera's answer is too large ({pending.content_length} bytes;"
                f" at most {MAX_BODY_BYTES // 1024} KiB is accepted)"
            )

    def _fail(self, error: CameraProtocolError) -> None:
        if not self.result.done():
            self.result.set_exception(error)
        if self._transport:
            self._transport.close()

    async def send_request(self, *args: object, **kw: object):  # type: ignore[no-untyped-def]
        try:
            return await super().send_request(*args, **kw)
        except RTSPError:
            raise
        except Exception:  # noqa: BLE001 - aiortsp's auth, reading the challenge
            raise CameraProtocolError(
                "the camera asks for credentials in a way we cannot answer (401)"
            ) from None


class _Forwarding:
    """Hands us raw RTP (dpkt's payload keeps extensions); drops what is not RTP/RTCP.

    aiortsp parses first and would drop the whole connection on a malformed packet.
    """

    stats: object
    _deliver: Callable[[bytes], None]

    def handle_rtp_data(self, data: bytes) -> None:
        with contextlib.suppress(Exception):  # for the receiver reports aiortsp sends
            self.stats.update(RTP(data))  # type: ignore[attr-defined]
        self._deliver(data)

    def handle_rtcp_data(self, data: bytes) -> None:
        with contextlib.suppress(Exception):
            super().handle_rtcp_data(data)  # type: ignore[misc]


class _ForwardingTcp(_Forwarding, TCPTransport):
    def __init__(self, *args: object, deliver: Callable[[bytes], None], **kw: object):
        super().__init__(*args, **kw)
        self._deliver = deliver


class _ForwardingUdp(_Forwarding, UDPTransport):
    def __init__(self, *args: object, deliver: Callable[[bytes], None], **kw: object):
        super().__init__(*args, **kw)
        self._deliver = deliver


class RtspSession:
    """One connection to one camera, from DESCRIBE to TEARDOWN."""

    def __init__(
        self, url: str, options: RtspOptions, on_packet: PacketHandler
    ) -> None:
        self._url = url
        self.name = redact_url(url)
        self._request_url = request_url(url)
        self._transport_kind = options.transport
        self._tls_verify = options.tls_verify
        self._tls_ca = options.tls_ca
        self._on_packet = on_packet
        self._connection: RTSPConnection | None = None
        self._transports: list[TCPTransport | UDPTransport] = []
        self._base = self._request_url
        self._session_id: str | None = None
        self._keepalive_s = DEFAULT_SESSION_TIMEOUT_S * 0.9
        self._methods: set[str] = set()

    async def describe(self) -> list[CameraTrack]:
        """Connect and DESCRIBE: the camera's tracks."""
        parts = urlsplit(self._url)
        context = None
        if parts.scheme == "rtsps":
            context = ssl.create_default_context(cafile=self._tls_ca)
            if not self._tls_verify:  # the operator said so: privacy, not identity
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
        self._connection = _GuardedConnection(
            parts.hostname,
            parts.port or (322 if parts.scheme == "rtsps" else 554),
            unquote(parts.username) if parts.username else None,
            unquote(parts.password) if parts.password else None,
            logger=QUIET,
            ssl=context,
            timeout=REQUEST_TIMEOUT_S,
        )
        try:
            await self._connection.prepare()
        except RTSPError as error:
            refused = error.__cause__  # aiortsp wraps what the socket raised
            if isinstance(refused, ssl.SSLCertVerificationError):
                raise CameraError(
                    "the camera's TLS certificate is not trusted"
                    f" ({refused.verify_message}): give its certificate or CA in"
                    ' tls_ca="...", or set tls_verify="false"'
                ) from None
            raise CameraError("cannot connect to the camera") from None
        options = await self._request("OPTIONS", self._request_url)
        public = options.headers.get("public", "")
        self._methods = {m.strip().upper() for m in str(public).split(",")}
        answer = await self._request(
            "DESCRIBE", self._request_url, {"Accept": "application/sdp"}
        )
        self._base = str(answer.headers.get("content-base", self._request_url))
        tracks = parse_sdp(answer.data.decode("utf-8", "replace"))
        if not tracks:
            raise CameraError("the camera described no audio or video track")
        return tracks

    async def play(self, tracks: list[CameraTrack]) -> None:
        """SETUP each of `tracks` (index order = packet handler's track index), PLAY."""
        assert self._connection is not None
        for index, track in enumerate(tracks):
            deliver = _deliver_to(self._on_packet, index)
            kind = _ForwardingUdp if self._transport_kind == "udp" else _ForwardingTcp
            transport = kind(
                self._connection, deliver=deliver, logger=QUIET, timeout=MEDIA_TIMEOUT_S
            )
            await transport.prepare()
            self._transports.append(transport)
            headers: dict[str, str] = {}
            if self._session_id:
                headers["Session"] = self._session_id
            transport.on_transport_request(headers)
            answer = await self._request(
                "SETUP", control_url(self._base, track.control), headers
            )
            # aiortsp lists the values of a header the camera repeats: the first counts.
            answered = {
                name: str(value[0] if isinstance(value, list) else value)
                for name, value in answer.headers.items()
            }
            try:
                transport.on_transport_response(answered)
            # aiortsp reads a malformed server_port ("6970", "x-y", no "=") with a
            # ValueError or an AttributeError (found by tests/fuzz).
            except (RTSPError, AssertionError, ValueError, AttributeError) as error:
                raise CameraError(
                    f"the camera refused our transport: {error}"
                ) from None
            self._save_session(answered.get("session", ""))
            await transport.warmup()
        await self._request(
            "PLAY", self._base, {"Session": self._session_id or "", "Range": "npt=0-"}
        )

    def _save_session(self, header: str) -> None:
        session_id, *params = header.split(";")
        if not session_id.strip():
            raise CameraError("the camera answered SETUP without a session")
        self._session_id = session_id.strip()
        for param in params:
            key, _, value = param.strip().partition("=")
            if key == "timeout" and value.isdigit():
                self._keepalive_s = max(int(value) * 0.9, 1.0)

    async def run(self) -> None:
        """Keep the session alive until the camera drops it; raise CameraError why."""
        assert self._connection is not None
        ended = [self._connection.result, *(t.result for t in self._transports)]
        keepalive = asyncio.create_task(self._keep_alive())
        try:
            done, _ = await asyncio.wait(ended, return_when=asyncio.FIRST_COMPLETED)
        finally:
            keepalive.cancel()
            with contextlib.suppress(asyncio.CancelledError, CameraError):
                await keepalive
        for future in done:
            error = future.exception()
            if isinstance(error, CameraProtocolError):
                raise CameraError(str(error))
            if isinstance(error, TimeoutError):
                raise CameraError("the camera stopped sending media")
        raise CameraError("the camera closed the connection")

    async def _keep_alive(self) -> None:
        method = "GET_PARAMETER" if "GET_PARAMETER" in self._methods else "OPTIONS"
        while True:
            await asyncio.sleep(self._keepalive_s)
            await self._request(method, self._base, {"Session": self._session_id or ""})

    async def _request(
        self, method: str, url: str, headers: dict[str, str] | None = None
    ) -> Any:  # aiortsp's RTSPResponse (untyped)
        connection = self._connection
        if connection is None or not connection.running:
            raise _lost(connection, method)
        try:
            return await connection.send_request(method, url, headers=headers or {})
        except RTSPResponseError as error:
            status = error.response.status
            if status == 401 and not urlsplit(self._url).username:
                raise CameraError(
                    "the camera asks for credentials (401); the camera URL has none"
                ) from None
            if status == 401:
                raise CameraError("the camera refused our credentials (401)") from None
            raise CameraError(f"the camera answered {method} with {status}") from None
        except RTSPTimeoutError:
            if (
                isinstance(connection, _GuardedConnection)
                and connection.stray_responses
            ):
                raise CameraError(
                    f"the camera answered {method} with the wrong CSeq"
                ) from None
            raise CameraError(
                f"the camera did not answer {method} within {REQUEST_TIMEOUT_S:g} s"
            ) from None
        except CameraProtocolError as error:
            raise CameraError(str(error)) from None
        except RTSPError:  # the connection dropped: our protocol error, if it was ours
            raise _lost(connection, method) from None

    async def close(self) -> None:
        """TEARDOWN when the camera still listens; close everything, even if cancelled."""
        connection = self._connection
        try:
            if connection is not None and connection.running and self._session_id:
                with contextlib.suppress(CameraError, asyncio.TimeoutError):
                    await asyncio.wait_for(
                        self._request(
                            "TEARDOWN", self._base, {"Session": self._session_id}
                        ),
                        2.0,
                    )
        finally:
            for transport in self._transports:
                with contextlib.suppress(AttributeError):  # a UDP one never prepared
                    transport.close()
            if connection is not None:
                connection.close()
                if connection.result.done() and not connection.result.cancelled():
                    connection.result.exception()  # retrieved: no "never retrieved" log


def _lost(connection: RTSPConnection | None, method: str) -> CameraError:
    """Why a request could not go out or be answered: the connection is gone."""
    if connection is not None and connection.result.done():
        error = None if connection.result.cancelled() else connection.result.exception()
        if isinstance(error, CameraProtocolError):
            return CameraError(str(error))
    return CameraError(f"the camera closed the connection during {method}")


def _deliver_to(handler: PacketHandler, index: int) -> Callable[[bytes], None]:
    return lambda data: handler(index, data)
