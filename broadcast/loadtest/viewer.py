"""One light WHEP viewer of `broadcast loadtest`: it joins, counts and decodes nothing.

A browser costs the machine that runs it far more than the server it watches, so the
viewers here are bare: aiortc's ICE and DTLS objects to connect (no RTCPeerConnection, no
RTCRtpReceiver: those start decoders), then the viewer takes the datagrams itself. STUN
still goes to aioice, which answers the server's consent checks (a viewer that stops
answering is reaped); RTP is counted from its plaintext header and only a few packets are
decrypted: those until the first keyframe, then 1 in 64 to check integrity. What this
takes of aiortc's private attributes is in aiortc_internals.py.
"""

from __future__ import annotations

import asyncio
import json
import random
import secrets
import struct
import time
from dataclasses import dataclass, field
from urllib.parse import urljoin

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

from broadcast.loadtest import aiortc_internals as internals
from broadcast.loadtest.rtp_stats import (
    NACK_RETRY_S,
    LossRecovery,
    RtpCounter,
    generic_nack,
    payload_digest,
    rtp_payload,
)
from broadcast.media.keyframe_detect import KeyframeTest, keyframe_test

# After the first keyframe, every SAMPLE_EVERY-th packet of a viewer is decrypted.
SAMPLE_EVERY = 64
# Packets that arrive before our SRTP keys (the server may finish DTLS first), kept.
MAX_EARLY_PACKETS = 1000

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


class JoinFailed(Exception):
    """One viewer could not join; `reason` groups failures in the report."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(detail or reason)
        self.reason = reason


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
        for c in internals.local_candidates(gatherer)
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
class LatencySamples:
    """What all viewers of a run share: the sample log for latency matching."""

    sampling: bool = False
    samples: list[tuple[str, float]] = field(default_factory=list)
    max_samples: int = 0


class Viewer:
    """One WHEP session that counts what it receives and decodes nothing."""

    def __init__(
        self,
        url: str,
        address: str,
        certificate: RTCCertificate,
        shared: LatencySamples,
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
        """POST an offer, connect ICE (controlling) and DTLS; raise JoinFailed."""
        await internals.gather_on(self.gatherer, self.address)
        if not internals.local_candidates(self.gatherer):
            raise JoinFailed("no local candidate", f"cannot bind {self.address}")
        internals.take_media(self.gatherer, self._on_media)
        # The offerer controls ICE (RFC 8445 §6.1.1), from the start.
        internals.control_from_start(self.gatherer, self.ice)
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
            raise JoinFailed("ICE failed")
        # The answer's setup names the server's DTLS role; ours is the other one.
        role = "client" if dtls.role == "server" else "server"
        internals.set_dtls_role(self.dtls, role)
        self.phase = "DTLS"
        await self.dtls.start(dtls)
        if self.dtls.state != "connected":
            raise JoinFailed("DTLS failed")
        self.connected = True
        early, self.early = self.early, []
        srtp = internals.srtp_receiver(self.dtls)
        assert srtp is not None  # connected: the keys are there
        for data, arrival in early:
            self._count(data, arrival, srtp)

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
                        # After a cluster's 307 the session lives on the edge that
                        # answered: its relative Location resolves against that URL.
                        self.location = urljoin(
                            str(response.url), response.headers["Location"]
                        )
                        return aiortc_sdp.SessionDescription.parse(body)
                    retry_after = response.headers.get("Retry-After", "")
            except (aiohttp.ClientError, OSError) as error:
                raise JoinFailed("cannot reach the server", str(error)) from None
            except (ValueError, KeyError, AssertionError) as error:
                raise JoinFailed("unreadable answer", repr(error)) from None
            reason, detail = _http_error(response.status, body)
            wait = float(retry_after) if retry_after.isdigit() else None
            if (
                response.status not in (429, 503)
                or wait is None
                or time.monotonic() + wait > deadline
            ):
                raise JoinFailed(reason, detail)
            await asyncio.sleep(wait)

    def _learn(
        self, answer: aiortc_sdp.SessionDescription
    ) -> tuple[RTCIceParameters, RTCDtlsParameters]:
        """Payload types and keyframe tests from the answer; its ICE and DTLS parameters."""
        first = answer.media[0] if answer.media else None
        if first is None or first.ice is None or first.dtls is None:
            raise JoinFailed("unreadable answer", "no ICE or DTLS parameters")
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

    def _on_media(self, data: bytes, now: float) -> None:
        if len(data) < 12:
            return
        if 63 < data[1] & 0x7F < 96:  # RTCP: types 200-206 (RFC 5761 §4)
            self.rtcp_packets += 1
            return
        if self.loss and self.random.random() < self.loss:
            self.dropped += 1
            return
        srtp = internals.srtp_receiver(self.dtls)
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
            await internals.send_rtcp(self.dtls, data)
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
