"""RTSP client for IP cameras: DESCRIBE, SETUP each track, PLAY, keep-alive, watchdog.

aiortsp gives us the connection (auth, interleaved channels) and the RTP transports; its
session classes set up one media only, so the session dialogue is ours. Camera URLs carry
credentials: they go to aiortsp and nowhere else — every message here uses `redact()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit, urlunsplit

from aiortsp.rtsp.connection import RTSPConnection
from aiortsp.rtsp.errors import RTSPError, RTSPResponseError
from aiortsp.transport import TCPTransport, UDPTransport
from dpkt.rtp import RTP

logger = logging.getLogger(__name__)
# aiortsp logs requests with their Authorization header at DEBUG: keep it quiet.
QUIET = logging.getLogger("broadcast.ingest.aiortsp")
QUIET.setLevel(logging.WARNING)

REQUEST_TIMEOUT_S = 10.0
# A camera that sends nothing for this long is dead even if its socket is open.
MEDIA_TIMEOUT_S = 5.0
DEFAULT_SESSION_TIMEOUT_S = 60

PacketHandler = Callable[[int, bytes], None]


class CameraError(Exception):
    """A camera failure; the message is safe to show (it never holds credentials)."""


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


# Some cameras take credentials in the path or query (`/user=admin&password=x`).
SECRET_PARAMS = re.compile(
    r"(?i)\b(user(?:name)?|pass(?:word|wd)?|pwd|auth|token)=[^&;/]*"
)


def redact(url: str) -> str:
    """The URL without user, password or credential parameters: for logs and the API."""
    parts = urlsplit(url)
    path = SECRET_PARAMS.sub(r"\1=***", parts.path)
    query = SECRET_PARAMS.sub(r"\1=***", parts.query)
    return urlunsplit((parts.scheme, _host_port(url), path, query, ""))


def request_url(url: str) -> str:
    """The URL we send in requests: without user and password, path and query intact."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, _host_port(url), parts.path, parts.query, ""))


def _host_port(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"  # IPv6
    return f"{host}:{parts.port}" if parts.port else host


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


class _ForwardingTcp(TCPTransport):
    """aiortsp's TCP transport, handing us raw RTP (dpkt's payload keeps extensions)."""

    def __init__(self, *args: object, deliver: Callable[[bytes], None], **kw: object):
        super().__init__(*args, **kw)
        self._deliver = deliver

    def handle_rtp_data(self, data: bytes) -> None:
        self.stats.update(RTP(data))  # for the receiver reports aiortsp sends
        self._deliver(data)


class _ForwardingUdp(UDPTransport):
    def __init__(self, *args: object, deliver: Callable[[bytes], None], **kw: object):
        super().__init__(*args, **kw)
        self._deliver = deliver

    def handle_rtp_data(self, data: bytes) -> None:
        self.stats.update(RTP(data))
        self._deliver(data)


class RtspSession:
    """One connection to one camera, from DESCRIBE to TEARDOWN."""

    def __init__(self, url: str, transport: str, on_packet: PacketHandler) -> None:
        self._url = url
        self.name = redact(url)
        self._request_url = request_url(url)
        self._transport_kind = transport
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
            context = ssl.create_default_context()
            # IP cameras carry self-signed certificates: TLS here buys privacy, and
            # the camera's address is what the operator configured.
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        self._connection = RTSPConnection(
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
        except RTSPError:
            raise CameraError("cannot connect to the camera") from None
        options = await self._request("OPTIONS", self._request_url)
        public = options.headers.get("public", "")
        self._methods = {m.strip().upper() for m in str(public).split(",")}
        answer = await self._request(
            "DESCRIBE", self._request_url, {"Accept": "application/sdp"}
        )
        self._base = str(answer.headers.get("content-base", self._request_url))
        tracks = parse_sdp(str(answer.content or ""))
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
            # ValueError: aiortsp reads a malformed server_port (found by tests/fuzz).
            except (RTSPError, AssertionError, ValueError) as error:
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
    ):  # type: ignore[no-untyped-def]
        connection = self._connection
        if connection is None or not connection.running:
            raise CameraError("the camera closed the connection")
        try:
            return await connection.send_request(method, url, headers=headers or {})
        except RTSPResponseError as error:
            status = error.response.status
            if status == 401:
                raise CameraError("the camera refused our credentials (401)") from None
            raise CameraError(f"the camera answered {method} with {status}") from None
        except RTSPError as error:  # timeouts, lost connection: no credentials in these
            raise CameraError(
                f"no answer from the camera to {method} ({type(error).__name__})"
            ) from None

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


def _deliver_to(handler: PacketHandler, index: int) -> Callable[[bytes], None]:
    return lambda data: handler(index, data)
