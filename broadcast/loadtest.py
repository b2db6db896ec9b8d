"""`broadcast loadtest`: many light WHEP viewers that measure what they get, decoding nothing.

A browser costs the machine that runs it far more than the server it watches, so the
viewers here are bare: aiortc's ICE and DTLS objects to connect (no RTCPeerConnection, no
RTCRtpReceiver: those start decoders), then the viewer takes the datagrams itself. STUN
still goes to aioice, which answers the server's consent checks (a viewer that stops
answering is reaped); RTP is counted from its plaintext header and only a few packets are
decrypted: those until the first keyframe, then 1 in 64 to check integrity.

Media flows between real sockets, so the target must be on this machine.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import resource
import secrets
import statistics
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import aiohttp
import pylibsrtp
from aiortc import (
    RTCCertificate,
    RTCDtlsTransport,
    RTCIceGatherer,
    RTCIceParameters,
    RTCIceTransport,
)
from aiortc import sdp as aiortc_sdp
from aiortc.rtcdtlstransport import RTCDtlsParameters
from aiortc.rtcicetransport import candidate_from_aioice
from aiortc.rtp import RTCP_PSFB_PLI, RtcpPsfbPacket

from broadcast.media.keyframe_detect import KeyframeTest, keyframe_test
from broadcast.rtp_stats import (
    NACK_RETRY_S,
    LossRecovery,
    RtpCounter,
    generic_nack,
    payload_digest,
    rtp_payload,
)
from broadcast.server_usage import process_cpu_s, process_rss_bytes

MAX_VIEWERS = 2000
MAX_DURATION_S = 3600.0
# After the first keyframe, every SAMPLE_EVERY-th packet of a viewer is decrypted.
SAMPLE_EVERY = 64
# Packets that arrive before our SRTP keys (the server may finish DTLS first), kept.
MAX_EARLY_PACKETS = 1000
LOOPBACK_HOSTS = {"127.0.0.1": "127.0.0.1", "localhost": "127.0.0.1", "::1": "::1"}

# What the viewer offers to receive: H.264 (both profiles aiortc publishes) and VP8,
# Opus. Payload types differ across kinds, so a packet's type says its kind.
OFFERED = {
    "video": (
        (102, "H264/90000", "packetization-mode=1;profile-level-id=42e01f"),
        (103, "H264/90000", "packetization-mode=1;profile-level-id=42001f"),
        (96, "VP8/90000", None),
    ),
    "audio": ((111, "opus/48000/2", "minptime=10;useinbandfec=1"),),
}
_RTP_FIELDS = struct.Struct("!HII")  # sequence number, timestamp, SSRC

# A viewer that gives up on a lost video packet asks for a keyframe (PLI), at most
# one a second, as a browser does when a picture cannot be completed.
PLI_INTERVAL_S = 1.0


class LoadtestError(Exception):
    """The load test cannot run: the stream is unknown, the server unreachable..."""


class _JoinFailed(Exception):
    """One viewer could not join; `reason` groups failures in the report."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(detail or reason)
        self.reason = reason


def loopback_address(url: str) -> str:
    """The local address to gather ICE on for `url`; ValueError unless it is loopback."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.path.strip("/"):
        raise ValueError("must be a WHEP URL such as http://127.0.0.1:8080/whep/<id>")
    address = LOOPBACK_HOSTS.get(parts.hostname or "")
    if address is None:
        raise ValueError(
            "must point at this machine (127.0.0.1, ::1 or localhost): a load test"
            " sends real media to every viewer"
        )
    return address


def _own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _offer(gatherer: RTCIceGatherer, certificate: RTCCertificate) -> str:
    """Our recvonly offer: BUNDLE, rtcp-mux, all candidates (no trickle)."""
    ice = gatherer.getLocalParameters()
    transport = [
        f"a=ice-ufrag:{ice.usernameFragment}",
        f"a=ice-pwd:{ice.password}",
        *(
            f"a=fingerprint:{f.algorithm} {f.value}"
            for f in certificate.getFingerprints()
        ),
        "a=setup:actpass",
    ]
    candidates = [
        f"a=candidate:{aiortc_sdp.candidate_to_sdp(candidate_from_aioice(c))}"
        for c in gatherer._connection.local_candidates
    ]
    lines = [
        "v=0",
        f"o=- {secrets.randbits(62)} 1 IN IP4 0.0.0.0",
        "s=-",
        "t=0 0",
        "a=group:BUNDLE 0 1",
    ]
    for mid, (kind, codecs) in enumerate(OFFERED.items()):
        lines += [
            f"m={kind} 9 UDP/TLS/RTP/SAVPF {' '.join(str(pt) for pt, _, _ in codecs)}",
            "c=IN IP4 0.0.0.0",
            f"a=mid:{mid}",
            "a=recvonly",
            "a=rtcp-mux",
            *transport,
        ]
        for pt, name, fmtp in codecs:
            lines.append(f"a=rtpmap:{pt} {name}")
            if fmtp:
                lines.append(f"a=fmtp:{pt} {fmtp}")
        if mid == 0:
            lines += [*candidates, "a=end-of-candidates"]
    return "\r\n".join(lines) + "\r\n"


@dataclass
class _Shared:
    """What all viewers of a run share: the sample log for latency matching."""

    sampling: bool = False
    samples: list[tuple[str, float]] = field(default_factory=list)
    max_samples: int = 0


class _Viewer:
    """One WHEP session that counts what it receives and decodes nothing."""

    def __init__(
        self,
        url: str,
        address: str,
        certificate: RTCCertificate,
        shared: _Shared,
        loss: float = 0.0,
    ) -> None:
        self.url = url
        self.address = address
        self.certificate = certificate
        self.shared = shared
        self.location: str | None = None
        self.gatherer = RTCIceGatherer(iceServers=[])
        self.ice = RTCIceTransport(self.gatherer)
        self.dtls = RTCDtlsTransport(self.ice, [certificate])
        self.kinds: dict[int, tuple[str, int]] = {}  # payload type -> kind, clock rate
        self.keyframe_tests: dict[int, KeyframeTest] = {}
        self.tracks: dict[int, RtpCounter] = {}  # by SSRC
        self.early: list[tuple[bytes, float]] = []
        self.packets = 0
        self.rtcp_packets = 0
        self.checked = 0
        self.integrity_failures = 0
        self.posted_at: float | None = None
        self.keyframe_at: float | None = None
        self.connected = False
        self.phase = "offer"  # where a join that times out was stuck
        # --loss: this share of RTP is dropped on arrival, and NACKed (and PLI'd).
        self.loss = loss
        self.random = random.Random()
        self.recovery: dict[int, LossRecovery] = {}  # by SSRC
        self.rtcp_ssrc = secrets.randbits(32) or 1
        self.dropped = self.nacks_sent = self.nacked = self.plis_sent = 0
        self._next_feedback = 0.0
        self._last_pli = -PLI_INTERVAL_S
        self._sending: set[asyncio.Task[None]] = set()

    # --- joining -------------------------------------------------------------------

    async def join(self, http: aiohttp.ClientSession, deadline: float) -> None:
        """POST an offer, connect ICE (controlling) and DTLS; raise _JoinFailed."""
        connection = self.gatherer._connection
        # aioice skips loopback when it gathers: gather on the target's address only.
        connection._local_candidates += await connection.get_component_candidates(
            component=1, addresses=[self.address]
        )
        connection._local_candidates_start = connection._local_candidates_end = True
        if not connection.local_candidates:
            raise _JoinFailed("no local candidate", f"cannot bind {self.address}")
        for protocol in connection._protocols:
            self._take_media(protocol)
        # The offerer controls ICE (RFC 8445 §6.1.1) from the start: the server's
        # checks may arrive before its answer does, and a controlled agent would
        # answer them with a role conflict that leaves both sides controlling.
        connection.ice_controlling = True
        self.ice._role_set = True
        answer = await self._post(
            http, _offer(self.gatherer, self.certificate), deadline
        )
        ice, dtls = self._learn(answer)
        self.phase = "ICE"
        for candidate in {  # BUNDLE repeats them per m-line; ICE-TCP is not ours
            (c.ip, c.port): c
            for m in answer.media
            for c in m.ice_candidates
            if c.protocol.lower() == "udp"
        }.values():
            await self.ice.addRemoteCandidate(candidate)
        await self.ice.addRemoteCandidate(None)
        await self.ice.start(ice)
        if self.ice.state != "completed":
            raise _JoinFailed("ICE failed")
        # The answer's setup names the server's DTLS role; ours is the other one.
        self.dtls._set_role("client" if dtls.role == "server" else "server")
        self.phase = "DTLS"
        await self.dtls.start(dtls)
        if self.dtls.state != "connected":
            raise _JoinFailed("DTLS failed")
        self.connected = True
        early, self.early = self.early, []
        for data, arrival in early:
            self._count(data, arrival, self.dtls._rx_srtp)

    async def _post(
        self, http: aiohttp.ClientSession, offer: str, deadline: float
    ) -> aiortc_sdp.SessionDescription:
        """POST the offer; wait and retry while the server says 429 or 503."""
        while True:
            self.posted_at = time.monotonic()
            try:
                async with http.post(
                    self.url, data=offer, headers={"Content-Type": "application/sdp"}
                ) as response:
                    body = await response.text()
                    if response.status == 201:
                        self.location = urljoin(self.url, response.headers["Location"])
                        return aiortc_sdp.SessionDescription.parse(body)
                    retry_after = response.headers.get("Retry-After", "")
            except (aiohttp.ClientError, OSError) as error:
                raise _JoinFailed("cannot reach the server", str(error)) from None
            except (ValueError, KeyError, AssertionError) as error:
                raise _JoinFailed("unreadable answer", repr(error)) from None
            reason, detail = _http_error(response.status, body)
            wait = float(retry_after) if retry_after.isdigit() else None
            if (
                response.status not in (429, 503)
                or wait is None
                or time.monotonic() + wait > deadline
            ):
                raise _JoinFailed(reason, detail)
            await asyncio.sleep(wait)

    def _learn(
        self, answer: aiortc_sdp.SessionDescription
    ) -> tuple[RTCIceParameters, RTCDtlsParameters]:
        """Payload types and keyframe tests from the answer; its ICE and DTLS parameters."""
        first = answer.media[0] if answer.media else None
        if first is None or first.ice is None or first.dtls is None:
            raise _JoinFailed("unreadable answer", "no ICE or DTLS parameters")
        for media in answer.media:
            if media.port == 0 or media.direction in ("recvonly", "inactive"):
                continue  # refused, or kept in the bundle with nothing to send
            for codec in media.rtp.codecs:
                if codec.payloadType is None:
                    continue
                self.kinds[codec.payloadType] = (media.kind, codec.clockRate)
                test = keyframe_test(codec.mimeType)
                if test is not None:
                    self.keyframe_tests[codec.payloadType] = test
        return first.ice, first.dtls

    # --- receiving -----------------------------------------------------------------

    def _take_media(self, protocol: Any) -> None:
        """Handle RTP and RTCP here; STUN and DTLS still go to aioice and aiortc."""
        stun_or_dtls = protocol.datagram_received

        def datagram_received(data: bytes, addr: tuple[Any, ...]) -> None:
            if data and 127 < data[0] < 192:  # RTP or RTCP (RFC 7983)
                self._on_media(data, time.monotonic())
            else:
                stun_or_dtls(data, addr)

        protocol.datagram_received = datagram_received

    def _on_media(self, data: bytes, now: float) -> None:
        if len(data) < 12:
            return
        if 63 < data[1] & 0x7F < 96:  # RTCP: types 200-206 (RFC 5761 §4)
            self.rtcp_packets += 1
            return
        if self.loss and self.random.random() < self.loss:
            self.dropped += 1
            return
        srtp = self.dtls._rx_srtp
        if srtp is None:
            if len(self.early) < MAX_EARLY_PACKETS:
                self.early.append((data, now))
            return
        self._count(data, now, srtp)

    def _count(self, data: bytes, now: float, srtp: pylibsrtp.Session) -> None:
        seq, ts, ssrc = _RTP_FIELDS.unpack_from(data, 2)
        track = self.tracks.get(ssrc)
        if track is None:
            kind, clock_rate = self.kinds.get(data[1] & 0x7F, ("unknown", 90000))
            track = self.tracks[ssrc] = RtpCounter(kind, clock_rate)
        if self.loss:
            recovery = self.recovery.setdefault(ssrc, LossRecovery())
            if not recovery.add(seq, now):
                return
            if now >= self._next_feedback and self.connected:
                self._feedback(now)
        track.add(seq, ts, len(data), data[1] >> 7, now)
        self.packets += 1
        if self.packets % SAMPLE_EVERY == 0 or (
            self.keyframe_at is None and self.keyframe_tests
        ):
            self._check(data, now, track, srtp)

    def _check(
        self, data: bytes, now: float, track: RtpCounter, srtp: pylibsrtp.Session
    ) -> None:
        """Decrypt one packet: integrity sample, keyframe, latency sample."""
        try:
            plain = srtp.unprotect(data)
        except pylibsrtp.Error:
            self.integrity_failures += 1
            return
        self.checked += 1
        if track.kind != "video":
            return
        if self.keyframe_at is None:
            test = self.keyframe_tests.get(data[1] & 0x7F)
            if test is not None and test(rtp_payload(plain)):
                self.keyframe_at = now
        shared = self.shared
        if shared.sampling and len(shared.samples) < shared.max_samples:
            shared.samples.append((payload_digest(plain), now))

    def _feedback(self, now: float) -> None:
        """NACK what is missing, PLI for video given up; SRTCP over the DTLS transport."""
        self._next_feedback = now + NACK_RETRY_S / 4
        compound = b""
        for ssrc, recovery in self.recovery.items():
            lost, given_up = recovery.due(now)
            if lost:
                compound += generic_nack(self.rtcp_ssrc, ssrc, lost)
                self.nacks_sent += 1
                self.nacked += len(lost)
            video = self.tracks[ssrc].kind == "video"
            if given_up and video and now - self._last_pli >= PLI_INTERVAL_S:
                self._last_pli = now
                compound += bytes(
                    RtcpPsfbPacket(
                        fmt=RTCP_PSFB_PLI, ssrc=self.rtcp_ssrc, media_ssrc=ssrc
                    )
                )
                self.plis_sent += 1
        if compound:
            task = asyncio.ensure_future(self._send_rtcp(compound))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    async def _send_rtcp(self, data: bytes) -> None:
        try:
            await self.dtls._send_rtp(data)  # protects RTCP as SRTCP
        except ConnectionError:
            pass  # closing

    def recovery_totals(self) -> dict[str, int]:
        """What --loss did: dropped, NACKed, recovered, given up, PLIs, duplicates."""
        sessions = self.recovery.values()
        return {
            "dropped": self.dropped,
            "nacks_sent": self.nacks_sent,
            "nacked": self.nacked,
            "plis_sent": self.plis_sent,
            "recovered": sum(r.recovered for r in sessions),
            "given_up": sum(r.given_up for r in sessions),
            "duplicates": sum(r.duplicates for r in sessions),
        }

    def totals(self) -> tuple[int, int, int, int, int]:
        """packets, bytes, expected, video frames, video packets: for window deltas."""
        tracks = self.tracks.values()
        return (
            sum(t.packets for t in tracks),
            sum(t.bytes for t in tracks),
            sum(t.expected for t in tracks),
            sum(t.frames for t in tracks if t.kind == "video"),
            sum(t.packets for t in tracks if t.kind == "video"),
        )

    # --- leaving -------------------------------------------------------------------

    async def close(self, http: aiohttp.ClientSession) -> bool:
        """DELETE the session and close the transports; True if the DELETE worked."""
        deleted = False
        if self.location is not None:
            try:
                async with http.delete(
                    self.location, timeout=aiohttp.ClientTimeout(total=5)
                ) as response:
                    deleted = response.status in (200, 204)
            except (TimeoutError, aiohttp.ClientError, OSError):
                pass
        await self.dtls.stop()
        await self.ice.stop()
        return deleted


def _http_error(status: int, body: str) -> tuple[str, str]:
    """A failure's group ("HTTP 404 stream_not_found") and the server's sentence."""
    try:
        error = json.loads(body)
        code, message = str(error["error"]), str(error["message"])
    except (ValueError, KeyError, TypeError):
        code, message = "", body.strip()[:200]
    return f"HTTP {status} {code}".strip(), f"answered {status}: {message}"


@dataclass
class Spread:
    """Percentiles of a measurement over viewers (or streams), None without values."""

    p50: float | None = None
    p95: float | None = None
    p99: float | None = None
    max: float | None = None
    count: int = 0

    @classmethod
    def of(cls, values: list[float]) -> Spread:
        if not values:
            return cls()
        if len(values) == 1:
            return cls(values[0], values[0], values[0], values[0], 1)
        cuts = statistics.quantiles(values, n=100, method="inclusive")
        return cls(cuts[49], cuts[94], cuts[98], max(values), len(values))


@dataclass
class ServerLoad:
    """A server process watched over the window (`--server-pid`)."""

    pid: int
    cpu_s: float
    cpu_percent: float
    rss_bytes: int
    us_per_packet_viewer: float | None


@dataclass
class LoadtestResult:
    """What the viewers received over the measured window, and what it cost."""

    url: str
    viewers: int
    connected: int
    failed: int
    failures: dict[str, int]
    window_s: float
    window_start: float  # time.monotonic() of this process: latency matching
    packets: int
    bytes: int
    packets_per_s: float
    bytes_per_s: float
    viewers_with_media: int
    video_fps_per_viewer: float
    loss_percent: float
    keyframes: int
    join_to_keyframe_ms: Spread
    video_jitter_ms: Spread
    audio_jitter_ms: Spread
    integrity_checked: int
    integrity_failures: int
    rtcp_packets: int
    deleted: int
    cpu_s: float
    cpu_percent: float
    us_per_packet: float | None
    server: ServerLoad | None = None
    samples: list[tuple[str, float]] = field(default_factory=list)
    # With loss_percent: what was dropped, NACKed, recovered (whole run, all viewers).
    recovery: dict[str, int] | None = None

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))


def _raise_open_files_limit(viewers: int) -> None:
    """A viewer holds a UDP socket and an HTTP connection: lift the soft limit if needed."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 3 * viewers + 100
    if soft != resource.RLIM_INFINITY and soft < wanted:
        limit = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))


async def run_loadtest(
    url: str,
    viewers: int,
    duration_s: float,
    *,
    ramp_s: float = 0.0,
    settle_s: float = 2.0,
    connect_timeout_s: float = 10.0,
    server_pid: int | None = None,
    latency_samples: int = 0,
    loss_percent: float = 0.0,
) -> LoadtestResult:
    """Join `viewers` over `ramp_s`, wait `settle_s`, measure `duration_s`, leave.

    The first viewer joins alone: if the server refuses it (unknown stream, wrong URL)
    the run stops with LoadtestError before the others try. `latency_samples` keeps up
    to that many (payload digest, arrival time) pairs of video packets received in the
    window, for a publisher that logged its send times (bench/fanout.py).
    """
    address = loopback_address(url)
    if not 1 <= viewers <= MAX_VIEWERS:
        raise ValueError(f"viewers must be 1-{MAX_VIEWERS}")
    if not 0 < duration_s <= MAX_DURATION_S:
        raise ValueError(f"duration must be above 0, at most {MAX_DURATION_S:g} s")
    if not 0 <= loss_percent < 100:
        raise ValueError("loss must be 0-100 %, below 100")
    for name, value in (("ramp", ramp_s), ("settle", settle_s)):
        if not 0 <= value <= MAX_DURATION_S:
            raise ValueError(f"{name} must be 0-{MAX_DURATION_S:g} s")
    if server_pid is not None and not Path(f"/proc/{server_pid}/stat").exists():
        raise LoadtestError(f"there is no process {server_pid} to watch")
    _raise_open_files_limit(viewers)
    certificate = RTCCertificate.generateCertificate()
    shared = _Shared(max_samples=latency_samples)
    crowd = [
        _Viewer(url, address, certificate, shared, loss_percent / 100)
        for _ in range(viewers)
    ]
    failures: dict[str, int] = {}

    async def join(viewer: _Viewer, delay: float) -> None:
        await asyncio.sleep(delay)
        deadline = time.monotonic() + connect_timeout_s
        try:
            await asyncio.wait_for(viewer.join(http, deadline), connect_timeout_s)
        except _JoinFailed as error:
            failures[error.reason] = failures.get(error.reason, 0) + 1
            raise
        except TimeoutError:
            reason = f"connect timeout ({viewer.phase})"
            failures[reason] = failures.get(reason, 0) + 1
            raise _JoinFailed(
                reason, f"not connected in {connect_timeout_s:g} s"
            ) from None
        except Exception as error:  # counted, then gather() keeps it from the others
            reason = f"{type(error).__name__}: {error}"
            failures[reason] = failures.get(reason, 0) + 1
            raise

    async with aiohttp.ClientSession() as http:
        try:
            try:
                await join(crowd[0], 0)
            except _JoinFailed as error:
                raise LoadtestError(f"{url}: {error}") from None
            step = ramp_s / max(viewers - 1, 1)
            await asyncio.gather(
                *(join(v, i * step) for i, v in enumerate(crowd[1:], 1)),
                return_exceptions=True,
            )
            await asyncio.sleep(settle_s)
            window = await _Window.measure(crowd, duration_s, server_pid, shared)
        finally:
            deleted = sum(await asyncio.gather(*(v.close(http) for v in crowd)))
    result = window.result(url, crowd, failures, deleted, shared.samples)
    if loss_percent:
        totals = [v.recovery_totals() for v in crowd]
        result.recovery = {k: sum(t[k] for t in totals) for k in totals[0]}
    return result


@dataclass
class _Window:
    """Counters at the start and the end of the measured window."""

    start: float
    end: float
    before: list[tuple[int, int, int, int, int]]
    after: list[tuple[int, int, int, int, int]]
    cpu_s: float
    server_pid: int | None
    server_cpu_s: float

    @classmethod
    async def measure(
        cls,
        crowd: list[_Viewer],
        duration_s: float,
        server_pid: int | None,
        shared: _Shared,
    ) -> _Window:
        def server_cpu() -> float:
            return process_cpu_s(server_pid) if server_pid is not None else 0.0

        before = [v.totals() for v in crowd]
        cpu, server, start = _own_cpu_s(), server_cpu(), time.monotonic()
        shared.sampling = True
        await asyncio.sleep(duration_s)
        shared.sampling = False
        window = cls(
            start,
            time.monotonic(),
            before,
            [v.totals() for v in crowd],
            _own_cpu_s() - cpu,
            server_pid,
            server_cpu() - server,
        )
        return window

    def result(
        self,
        url: str,
        crowd: list[_Viewer],
        failures: dict[str, int],
        deleted: int,
        samples: list[tuple[str, float]],
    ) -> LoadtestResult:
        seconds = self.end - self.start
        deltas = [
            [b - a for a, b in zip(first, last, strict=True)]
            for first, last in zip(self.before, self.after, strict=True)
        ]
        packets, size, expected, frames = (sum(d[i] for d in deltas) for i in range(4))
        connected = [v for v in crowd if v.connected]
        with_video = sum(1 for d in deltas if d[4])
        keyframe_ms = [
            1000 * (v.keyframe_at - v.posted_at)
            for v in connected
            if v.keyframe_at is not None and v.posted_at is not None
        ]

        def jitter(kind: str) -> Spread:
            return Spread.of(
                [
                    t.jitter_ms
                    for v in connected
                    for t in v.tracks.values()
                    if t.kind == kind
                ]
            )

        server = None
        if self.server_pid is not None:
            server = ServerLoad(
                pid=self.server_pid,
                cpu_s=self.server_cpu_s,
                cpu_percent=100 * self.server_cpu_s / seconds,
                rss_bytes=process_rss_bytes(self.server_pid),
                us_per_packet_viewer=1e6 * self.server_cpu_s / packets
                if packets
                else None,
            )
        return LoadtestResult(
            url=url,
            viewers=len(crowd),
            connected=len(connected),
            failed=len(crowd) - len(connected),
            failures=failures,
            window_s=seconds,
            window_start=self.start,
            packets=packets,
            bytes=size,
            packets_per_s=packets / seconds,
            bytes_per_s=size / seconds,
            viewers_with_media=sum(1 for d in deltas if d[0]),
            video_fps_per_viewer=frames / seconds / with_video if with_video else 0.0,
            loss_percent=100 * max(expected - packets, 0) / expected
            if expected
            else 0.0,
            keyframes=len(keyframe_ms),
            join_to_keyframe_ms=Spread.of(keyframe_ms),
            video_jitter_ms=jitter("video"),
            audio_jitter_ms=jitter("audio"),
            integrity_checked=sum(v.checked for v in crowd),
            integrity_failures=sum(v.integrity_failures for v in crowd),
            rtcp_packets=sum(v.rtcp_packets for v in crowd),
            deleted=deleted,
            cpu_s=self.cpu_s,
            cpu_percent=100 * self.cpu_s / seconds,
            us_per_packet=1e6 * self.cpu_s / packets if packets else None,
            server=server,
            samples=samples,
        )


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def format_result(result: LoadtestResult) -> str:
    """The report for people."""
    r = result
    per_viewer = r.packets_per_s / r.connected if r.connected else 0.0
    k, vj, aj = r.join_to_keyframe_ms, r.video_jitter_ms, r.audio_jitter_ms
    failures = "".join(
        f"\n  {count} x {reason}" for reason, count in r.failures.items()
    )
    lines = [
        f"viewers            {r.connected} connected, {r.failed} failed{failures}",
        f"window             {r.window_s:.1f} s, {r.viewers_with_media} viewers got media",
        f"received           {r.packets_per_s:,.0f} packets/s ({per_viewer:.0f} per viewer),"
        f" {8 * r.bytes_per_s / 1e6:.1f} Mbit/s, {r.video_fps_per_viewer:.1f} video frames/s"
        " per viewer",
        f"loss               {r.loss_percent:.2f} %",
        f"join to keyframe   p50 {_ms(k.p50)}, p95 {_ms(k.p95)}, max {_ms(k.max)}"
        f" ({r.keyframes} of {r.connected} viewers saw one)",
        f"jitter             video p50 {_ms(vj.p50)}, p95 {_ms(vj.p95)};"
        f" audio p50 {_ms(aj.p50)}, p95 {_ms(aj.p95)}",
        f"integrity          {r.integrity_failures} failures in {r.integrity_checked:,}"
        " decrypted packets",
        f"sessions deleted   {r.deleted} of {r.viewers}",
        f"load generator     {r.cpu_percent:.0f} % of a core, "
        + ("-" if r.us_per_packet is None else f"{r.us_per_packet:.1f} µs per packet"),
    ]
    if r.recovery is not None:
        c = r.recovery
        lines.insert(
            4,
            f"simulated loss     {c['dropped']:,} dropped; {c['nacks_sent']:,} NACKs"
            f" for {c['nacked']:,} packets, {c['recovered']:,} recovered,"
            f" {c['given_up']:,} given up, {c['plis_sent']} PLIs",
        )
    if r.server is not None:
        s = r.server
        lines.append(
            f"server (pid {s.pid})  {s.cpu_percent:.0f} % of a core,"
            f" RSS {s.rss_bytes / 2**20:.0f} MiB, "
            + (
                "-"
                if s.us_per_packet_viewer is None
                else f"{s.us_per_packet_viewer:.1f} µs/pkt-viewer"
            )
        )
    return "\n".join(lines)
