"""Offers in, answers out: codec choice and SDP answers for WHIP and WHEP sessions.

We answer with exactly what we forward: one codec per kind (plus RTX from publishers),
the feedback we implement, no header extensions (we strip them when forwarding).
"""

from __future__ import annotations

import copy
import dataclasses
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field

from aiortc import RTCDtlsFingerprint, RTCIceCandidate, RTCIceParameters
from aiortc import sdp as aiortc_sdp
from aiortc.codecs import is_rtx
from aiortc.rtcdtlstransport import RTCDtlsParameters
from aiortc.rtcpeerconnection import is_codec_compatible
from aiortc.rtcrtpparameters import (
    RTCRtcpFeedback,
    RTCRtpCodecParameters,
    RTCRtpParameters,
)

from broadcast.errors import BadRequest

# What we forward, by kind, in our order of preference when the offer gives no order.
FORWARDED_CODECS = {
    "video": ("video/vp8", "video/h264"),
    "audio": ("audio/opus", "audio/pcma", "audio/pcmu"),
}
# Feedback we act on: from publishers we need NACK/PLI/FIR answered and REMB read;
# from viewers we answer NACK, PLI and FIR.
PUBLISHER_FEEDBACK = {
    ("nack", None),
    ("nack", "pli"),
    ("ccm", "fir"),
    ("goog-remb", None),
}
VIEWER_FEEDBACK = {("nack", None), ("nack", "pli"), ("ccm", "fir")}
# A simulcast publisher's layers are told apart by these RTP header extensions (RFC 8852,
# RFC 8843): answered with the ids it offered, on its simulcast m-line only.
MID_URI = "urn:ietf:params:rtp-hdrext:sdes:mid"
RID_URI = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"
REPAIRED_RID_URI = "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id"
SIMULCAST_EXTENSIONS = (MID_URI, RID_URI, REPAIRED_RID_URI)
# Layers taken from one simulcast offer: full, half and quarter size is what browsers
# and OBS send; more is not worth a SourceTrack each.
MAX_LAYERS = 4
_RID = r"[A-Za-z0-9_-]{1,32}"


@dataclass
class Offer:
    """A parsed offer and the session-wide transport parameters it carries."""

    description: aiortc_sdp.SessionDescription
    ice: RTCIceParameters
    ufrag: str
    candidates: list[RTCIceCandidate]
    candidates_complete: bool
    fingerprints: list[RTCDtlsFingerprint]
    dtls_role: str  # ours: "server" (a=setup:passive) unless the offerer is passive
    # mid -> the rids of a simulcast m-line (RFC 8853), in the offer's order.
    simulcast: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class MediaAnswer:
    """What we answer for one m-line; `codecs` empty means rejected."""

    offered: aiortc_sdp.MediaDescription
    direction: str = "inactive"
    codecs: list[RTCRtpCodecParameters] = field(default_factory=list)
    ssrc: int | None = None
    msid: str | None = None
    rids: list[str] = field(default_factory=list)  # simulcast layers we receive

    @property
    def accepted(self) -> bool:
        return bool(self.codecs)


def simulcast_rids(text: str) -> dict[str, list[str]]:
    """mid -> the layers each m-line offers to send as simulcast: the streams of
    `a=simulcast:send` (RFC 8853 §5.1) declared by `a=rid:<id> send` (RFC 8851), the
    first of each list of alternatives, paused ones (`~`) left out."""
    found: dict[str, list[str]] = {}
    for section in re.split(r"\r?\n(?=m=)", text)[1:]:
        mid = re.search(r"^a=mid:(\S+)", section, re.M)
        send = re.search(r"^a=simulcast:(?:.*\s)?send\s+(\S+)", section, re.M)
        if mid is None or send is None:
            continue
        declared = set(re.findall(rf"^a=rid:({_RID})\s+send\b", section, re.M))
        rids = []
        for alternatives in send.group(1).split(";"):
            rid = alternatives.split(",")[0]
            if rid in declared and rid not in rids:
                rids.append(rid)
        if len(rids) > 1:
            found[mid.group(1)] = rids[:MAX_LAYERS]
    return found


def parse_offer(text: str) -> Offer:
    """Parse an SDP offer, or raise BadRequest saying what is wrong with it."""
    if not text.strip():
        raise BadRequest("empty_sdp", "The request body holds no SDP offer.")
    if not text.lstrip().startswith("v=0"):
        raise BadRequest("malformed_sdp", "The SDP offer must start with 'v=0'.")
    try:
        description = aiortc_sdp.SessionDescription.parse(text)
    # aiortc's parser raises whatever it trips on on untrusted input: ValueError,
    # KeyError, AssertionError, even StopIteration (found by tests/test_hostile.py).
    except Exception as exc:
        raise BadRequest(
            "malformed_sdp", f"The SDP offer cannot be parsed: {exc!r}."
        ) from exc
    media = [m for m in description.media if m.kind in ("audio", "video")]
    if not media:
        raise BadRequest("malformed_sdp", "The SDP offer has no audio or video m-line.")
    for m in media:
        # aiortc reads `a=rtpmap:-196 VP8/90000` as payload type -196, which we would
        # answer back; an RTP payload type is 7 bits (RFC 3550 §5.1). Found by tests/fuzz.
        m.rtp.codecs = [c for c in m.rtp.codecs if 0 <= (c.payloadType or 0) <= 127]
    first = media[0]
    if not first.ice or not first.ice.usernameFragment or not first.ice.password:
        raise BadRequest("malformed_sdp", "The SDP offer has no a=ice-ufrag/a=ice-pwd.")
    if not first.dtls or not first.dtls.fingerprints:
        raise BadRequest("malformed_sdp", "The SDP offer has no a=fingerprint.")
    if any(m.rtp.muxId is None for m in media):
        raise BadRequest("malformed_sdp", "Every m-line of the offer needs an a=mid.")
    if not all(m.rtcp_mux for m in media):
        # Our answer is BUNDLEd on one ICE component (RFC 8843 needs rtcp-mux): an
        # offerer without it would wait for an RTCP component that never connects.
        raise BadRequest(
            "rtcp_mux_required",
            "Every m-line of the offer needs a=rtcp-mux: RTP and RTCP share one port.",
        )
    candidates = usable_candidates(c for m in media for c in m.ice_candidates)
    return Offer(
        description=description,
        ice=first.ice,
        ufrag=first.ice.usernameFragment,
        candidates=candidates,
        candidates_complete=any(m.ice_candidates_complete for m in media),
        fingerprints=first.dtls.fingerprints,
        # Answering passive makes the offerer pick the DTLS cipher suites with our ECDSA
        # certificate in mind: as client, aiortc offers ECDSA suites only and fails
        # against peers with RSA certificates (GStreamer). RFC 8842 §5.3 allows either.
        dtls_role="client" if first.dtls.role == "server" else "server",
        simulcast=simulcast_rids(text),
    )


def usable_candidates(candidates: Iterable[RTCIceCandidate]) -> list[RTCIceCandidate]:
    """The peer's UDP candidates for our one ICE component (BUNDLE and rtcp-mux: RTP, 1).

    @eyevinn/whip-web-client numbers that component 0 (its index, tests/e2e/
    test_interop_npm.py): we read it as 1. A candidate of another component is dropped:
    aioice fails an assertion on every check from an address whose candidate is not of
    the component checked, so the session would never connect.
    """
    usable = []
    for candidate in candidates:
        if candidate.component == 0:
            candidate = dataclasses.replace(candidate, component=1)
        if candidate.protocol.lower() == "udp" and candidate.component == 1:
            usable.append(candidate)
    return usable


def _feedback(
    offered: RTCRtpCodecParameters, allowed: set[tuple[str, str | None]]
) -> list[RTCRtcpFeedback]:
    return [f for f in offered.rtcpFeedback if (f.type, f.parameter) in allowed]


def _forwardable(codec: RTCRtpCodecParameters) -> bool:
    mime = codec.mimeType.lower()
    if mime not in FORWARDED_CODECS["video"] + FORWARDED_CODECS["audio"]:
        return False
    if mime == "video/h264":
        # Mode 0 cannot carry a frame larger than the MTU (RFC 6184 §6.2).
        return str(codec.parameters.get("packetization-mode", "0")) == "1"
    return True


def choose_publisher_codec(
    media: aiortc_sdp.MediaDescription,
    required: RTCRtpCodecParameters | None,
    video_hints: dict[str, int],
) -> list[RTCRtpCodecParameters]:
    """The codec (and its RTX) we take from a publisher's m-line; [] if none fits.

    `required` is the stream's codec when the stream already has viewers: a republish
    must keep it, since viewers negotiated it.
    """
    for offered in media.rtp.codecs:
        if is_rtx(offered) or not _forwardable(offered):
            continue
        if required is not None and not is_codec_compatible(required, offered):
            continue
        codec = copy.deepcopy(offered)
        codec.rtcpFeedback = _feedback(offered, PUBLISHER_FEEDBACK)
        if media.kind == "video":
            codec.parameters.update(video_hints)
        chosen = [codec]
        for rtx in media.rtp.codecs:
            if is_rtx(rtx) and rtx.parameters.get("apt") == offered.payloadType:
                chosen.append(copy.deepcopy(rtx))
                break
        return chosen
    return []


def choose_viewer_codec(
    media: aiortc_sdp.MediaDescription, source: RTCRtpCodecParameters
) -> RTCRtpCodecParameters | None:
    """The viewer's payload type for the stream's codec, with the stream's parameters."""
    for offered in media.rtp.codecs:
        if is_rtx(offered) or not is_codec_compatible(source, offered):
            continue
        if offered.mimeType.lower() == "video/h264" and not _forwardable(offered):
            continue
        codec = copy.deepcopy(source)
        codec.payloadType = offered.payloadType
        codec.rtcpFeedback = _feedback(offered, VIEWER_FEEDBACK)
        return codec
    return None


def describe_codec(codec: RTCRtpCodecParameters) -> str:
    """A codec as an error message names it: H.264 with its profile and packetization
    mode, which decide whether a viewer (Safari) can take it."""
    if codec.mimeType.lower() != "video/h264":
        return codec.mimeType
    profile = codec.parameters.get("profile-level-id", "42001f")
    mode = codec.parameters.get("packetization-mode", "0")
    return f"{codec.mimeType} (profile-level-id {profile}, packetization-mode {mode})"


def describe_codecs(media: list[aiortc_sdp.MediaDescription]) -> str:
    """Name the codecs of an offer, for error messages."""
    names = {describe_codec(c) for m in media for c in m.rtp.codecs if not is_rtx(c)}
    return ", ".join(sorted(names)) or "none"


def build_answer(
    offer: Offer,
    answers: list[MediaAnswer],
    ice: RTCIceParameters,
    candidates: list[RTCIceCandidate],
    fingerprints: list[RTCDtlsFingerprint],
    cname: str,
) -> str:
    """Our SDP answer: BUNDLEd, rtcp-mux, full candidates."""
    description = _description("answer")
    bundle = aiortc_sdp.GroupDescription(semantic="BUNDLE", items=[])
    for answer in answers:
        offered = answer.offered
        codecs = answer.codecs or _placeholder(offered)
        # An m-line we have nothing for stays in the bundle as `inactive` with one of
        # its codecs: some stacks (aiortc) fail on a rejected, codec-less m-line.
        bundled = bool(codecs)
        media = aiortc_sdp.MediaDescription(
            kind=offered.kind,
            port=candidates[0].port if bundled and candidates else 0,
            profile=offered.profile,
            fmt=[c.payloadType for c in codecs] or offered.fmt[:1],
        )
        media.host = candidates[0].ip if candidates else "0.0.0.0"
        media.direction = answer.direction
        media.rtp = RTCRtpParameters(codecs=codecs, muxId=offered.rtp.muxId)
        # aiortc prints a=rtcp-mux only along with an a=rtcp line (RFC 5761 §5.1.3).
        media.rtcp_port, media.rtcp_host, media.rtcp_mux = 9, "0.0.0.0", True
        media.ice = ice
        media.dtls = RTCDtlsParameters(fingerprints=fingerprints, role=offer.dtls_role)
        if answer.rids:
            media.rtp.headerExtensions = [
                ext
                for ext in offered.rtp.headerExtensions
                if ext.uri in SIMULCAST_EXTENSIONS
            ]
        if bundled:
            bundle.items.append(offered.rtp.muxId)
            media.ice_candidates = candidates
            media.ice_candidates_complete = True
            if answer.accepted and answer.ssrc is not None:
                media.msid = answer.msid
                media.ssrc = [aiortc_sdp.SsrcDescription(ssrc=answer.ssrc, cname=cname)]
        description.media.append(media)
    if bundle.items:
        description.group.append(bundle)
    return _with_simulcast(str(description), answers)


def _with_simulcast(sdp: str, answers: list[MediaAnswer]) -> str:
    """Add `a=rid:<id> recv` and `a=simulcast:recv` to the m-lines we take simulcast
    on (aiortc's writer knows neither)."""
    if not any(answer.rids for answer in answers):
        return sdp
    head, *sections = sdp.split("\r\nm=")
    for index, answer in enumerate(answers):
        if answer.rids and answer.accepted:
            lines = [f"a=rid:{rid} recv" for rid in answer.rids]
            lines.append("a=simulcast:recv " + ";".join(answer.rids))
            last = index == len(sections) - 1
            sections[index] = "\r\n".join([sections[index].rstrip("\r\n"), *lines]) + (
                "\r\n" if last else ""
            )
    return "\r\nm=".join([head, *sections])


# What an edge offers its origin: every codec we forward, by kind (the origin answers
# its stream's), with the feedback the origin answers. The origin answers H.264 only
# with a profile the offer names (`is_codec_compatible`), so every profile a publisher
# may send is here: Constrained Baseline, Baseline, Main, Constrained High, High (what
# browsers and OBS send), High 4:4:4 Predictive.
PullCodec = tuple[str, int, int | None, int, dict[str, str]]
PULL_CODECS: dict[str, list[PullCodec]] = {
    "audio": [
        ("opus", 48000, 2, 111, {}),
        ("PCMA", 8000, None, 8, {}),
        ("PCMU", 8000, None, 0, {}),
    ],
    "video": [
        ("VP8", 90000, None, 96, {}),
        *(
            (
                "H264",
                90000,
                None,
                102 + index,
                {
                    "packetization-mode": "1",
                    "profile-level-id": profile,
                    "level-asymmetry-allowed": "1",
                },
            )
            for index, profile in enumerate(
                ("42e01f", "42001f", "4d001f", "640c1f", "64001f", "f4001f")
            )
        ),
    ],
}


def build_offer(
    ice: RTCIceParameters,
    candidates: list[RTCIceCandidate],
    fingerprints: list[RTCDtlsFingerprint],
    kinds: tuple[str, ...] = ("video", "audio"),
) -> str:
    """An edge's offer to pull a stream from its origin: receive-only, BUNDLEd,
    rtcp-mux, full candidates, DTLS `actpass`."""
    description = _description("offer")
    bundle = aiortc_sdp.GroupDescription(semantic="BUNDLE", items=[])
    feedback = [
        RTCRtcpFeedback(type=t, parameter=p)
        for t, p in sorted(VIEWER_FEEDBACK, key=str)
    ]
    for index, kind in enumerate(kinds):
        codecs = [
            RTCRtpCodecParameters(
                mimeType=f"{kind}/{name}",
                clockRate=rate,
                channels=channels,
                payloadType=payload_type,
                rtcpFeedback=feedback if kind == "video" else [],
                parameters=dict(parameters),
            )
            for name, rate, channels, payload_type, parameters in PULL_CODECS[kind]
        ]
        media = aiortc_sdp.MediaDescription(
            kind=kind,
            port=candidates[0].port if candidates else 9,
            profile="UDP/TLS/RTP/SAVPF",
            fmt=[c.payloadType for c in codecs],
        )
        media.host = candidates[0].ip if candidates else "0.0.0.0"
        media.direction = "recvonly"
        media.rtp = RTCRtpParameters(codecs=codecs, muxId=str(index))
        media.rtcp_port, media.rtcp_host, media.rtcp_mux = 9, "0.0.0.0", True
        media.ice = ice
        media.dtls = RTCDtlsParameters(fingerprints=fingerprints, role="auto")
        media.ice_candidates = candidates
        media.ice_candidates_complete = True
        bundle.items.append(str(index))
        description.media.append(media)
    description.group.append(bundle)
    return str(description)


def _description(kind: str) -> aiortc_sdp.SessionDescription:
    """An empty offer or answer of ours (its m-lines follow)."""
    description = aiortc_sdp.SessionDescription()
    description.origin = f"- {secrets.randbits(62)} 1 IN IP4 0.0.0.0"
    description.msid_semantic.append(
        aiortc_sdp.GroupDescription(semantic="WMS", items=["*"])
    )
    description.type = kind
    return description


def _placeholder(offered: aiortc_sdp.MediaDescription) -> list[RTCRtpCodecParameters]:
    """One offered codec, to answer an m-line `inactive` rather than reject it."""
    if offered.kind not in ("audio", "video"):
        return []
    for codec in offered.rtp.codecs:
        if not is_rtx(codec):
            placeholder = copy.deepcopy(codec)
            placeholder.rtcpFeedback = []
            return [placeholder]
    return []
