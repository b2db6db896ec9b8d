"""The fuzz targets: one input in, through our code, only documented exceptions out.

Each `check_<target>(data)` catches exactly what the code under test documents (the
BadRequest of `parse_offer`, the ConfigError of `load_config`, the CameraError of
`RtspSession`) and lets anything else fail the test. Binary targets read one input as
several datagrams: `frames()` splits it on 2-byte big-endian length prefixes.
"""

from __future__ import annotations

import asyncio
import base64
import os
import struct
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from aioice import stun
from aiortc import (
    RTCCertificate,
    RTCDtlsFingerprint,
    RTCIceCandidate,
    RTCIceParameters,
    RTCRtpCodecParameters,
)
from aiortc import sdp as aiortc_sdp
from aiortc.rtp import (
    RTCP_PSFB_APP,
    RTCP_PSFB_PLI,
    RTCP_RTPFB_NACK,
    RtcpByePacket,
    RtcpPacket,
    RtcpPsfbPacket,
    RtcpReceiverInfo,
    RtcpRrPacket,
    RtcpRtpfbPacket,
    RtcpSdesPacket,
    RtcpSenderInfo,
    RtcpSourceInfo,
    RtcpSrPacket,
    RtpPacket,
    pack_remb_fci,
)
from aiortsp.rtsp.connection import RTSPConnection

from broadcast.config import ConfigError, RtspCamera, RtspOptions
from broadcast.config_xml import load_config
from broadcast.errors import BadRequest
from broadcast.ingest.camera import Camera, _unsupported
from broadcast.ingest.rtsp import CameraError, RtspSession, control_url, parse_sdp
from broadcast.media import (
    h264,
    keyframe_detect,
    resolution,
    udp_mux,
    ufrag_routing,
    vp8,
)
from broadcast.media.source_track import SourceTrack
from broadcast.media.transcode import split_access_units
from broadcast.media.transport import SecureTransport
from broadcast.media.upstream import BandwidthEstimate, UpstreamTrack
from broadcast.media.viewer_track import ViewerTrack
from broadcast.publisher import Publisher
from broadcast.signaling import whep, whip
from broadcast.signaling.sdp import (
    MediaAnswer,
    build_answer,
    describe_codecs,
    parse_offer,
)
from broadcast.viewer import Viewer

from .harness import seed_files

REPO = Path(__file__).parents[2]


def frames(data: bytes) -> list[bytes]:
    """Datagrams framed as [2-byte length][bytes]...; a short tail is one datagram."""
    out = []
    offset = 0
    while offset + 2 <= len(data):
        size = int.from_bytes(data[offset : offset + 2], "big")
        out.append(data[offset + 2 : offset + 2 + size])
        offset += 2 + size
    if offset < len(data):
        out.append(data[offset:])
    return out


def framed(*datagrams: bytes) -> bytes:
    return b"".join(len(d).to_bytes(2, "big") + d for d in datagrams)


# --- (1) SDP offers → answers, WHIP and WHEP ----------------------------------------

ANSWER_ICE = RTCIceParameters(usernameFragment="0123456789abcdef", password="p" * 24)
ANSWER_CANDIDATES = [
    RTCIceCandidate(
        component=1,
        foundation="1",
        ip="127.0.0.1",
        port=40000,
        priority=2130706431,
        protocol="udp",
        type="host",
    )
]
ANSWER_FINGERPRINTS = [RTCDtlsFingerprint("sha-256", ":".join(["AB"] * 32))]
HINTS = {"x-google-start-bitrate": 4000, "x-google-max-bitrate": 6000}


def _codec(
    mime: str,
    rate: int,
    pt: int,
    channels: int | None = None,
    **params: int | str | None,
) -> RTCRtpCodecParameters:
    return RTCRtpCodecParameters(
        mimeType=mime,
        clockRate=rate,
        channels=channels,
        payloadType=pt,
        parameters=params,
    )


def _stream(*codecs: RTCRtpCodecParameters) -> SimpleNamespace:
    tracks = {
        c.mimeType.split("/")[0]: SourceTrack(c.mimeType.split("/")[0], c)
        for c in codecs
    }
    return SimpleNamespace(id="fuzz", tracks=tracks)


def _answer_parses(offer: Any, answers: list[MediaAnswer]) -> None:
    text = build_answer(
        offer, answers, ANSWER_ICE, ANSWER_CANDIDATES, ANSWER_FINGERPRINTS, "fuzz"
    )
    aiortc_sdp.SessionDescription.parse(text)  # what we answer, a peer can read


def check_sdp_offer(data: bytes) -> None:
    """`parse_offer` raises BadRequest only; any offer it accepts gets a readable
    answer from WHIP (new stream and republish) and from WHEP (VP8 and H.264 streams)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return  # read_body answers 400 before the SDP is parsed
    try:
        offer = parse_offer(text)
    except BadRequest:
        return
    describe_codecs(offer.description.media)
    # WHIP: a new stream, then a republish to a stream whose codecs are fixed.
    answers = whip._choose_codecs(offer, None, HINTS, True)
    _answer_parses(offer, answers)
    new_stream = SimpleNamespace(id="fuzz", tracks={}, layers={})
    for answer in answers:
        if answer.accepted:
            whip._upstream_tracks(new_stream, answer)  # type: ignore[arg-type]
    for existing in (
        _stream(_codec("video/VP8", 90000, 96), _codec("audio/opus", 48000, 111, 2)),
        _stream(
            _codec("video/H264", 90000, 102, None, **{"packetization-mode": "1"}),
            _codec("audio/PCMU", 8000, 0),
        ),
    ):
        _answer_parses(offer, whip._choose_codecs(offer, existing, HINTS, True))  # type: ignore[arg-type]
        answers, _ = whep._choose_codecs(offer, existing, existing.tracks)  # type: ignore[arg-type]
        _answer_parses(offer, answers)
        for track in existing.tracks.values():
            track.close()


# --- (2) RTP from a publisher: header extensions, padding, RTX ------------------------

VIDEO_SSRC, RTX_SSRC, AUDIO_SSRC = 0x0A0A0A0A, 0x0B0B0B0B, 0x0C0C0C0C
OUR_VIDEO_SSRC, OUR_AUDIO_SSRC = 0x11111111, 0x22222222


class FakeTransport:
    """What a Session needs of a Transport (media/transport_protocol.py), recording
    what it sends."""

    state = "connected"
    failed_packets = 0
    foreign_packets = 0
    remote_address = None
    on_tcp = False

    def __init__(self) -> None:
        self.rtp: list[bytes] = []
        self.rtcp: list[bytes] = []

    def on_packets(self, rtp: Any, rtcp: Any) -> None:
        pass

    def on_state(self, handler: Any) -> None:
        pass

    def on_path(self, handler: Any) -> None:
        pass

    def send_rtp(self, data: bytes) -> None:
        self.rtp.append(data)

    def send_rtcp(self, data: bytes) -> None:
        self.rtcp.append(data)

    def fan_out_target(self) -> None:
        return None


def _rtp(
    pt: int, seq: int, ts: int, ssrc: int, payload: bytes, marker: int = 0
) -> bytes:
    return RtpPacket(
        payload_type=pt,
        sequence_number=seq,
        timestamp=ts,
        ssrc=ssrc,
        payload=payload,
        marker=marker,
    ).serialize()


def _with_extension(packet: bytes, profile: int, words: bytes) -> bytes:
    """Set X and put a header extension (RFC 8285) after the fixed header."""
    words += bytes(-len(words) % 4)  # padding (RFC 8285 §4.2)
    header = bytes([packet[0] | 0x10]) + packet[1:12]
    extension = struct.pack("!HH", profile, len(words) // 4) + words
    return header + extension + packet[12:]


def _with_padding(packet: bytes, count: int) -> bytes:
    return bytes([packet[0] | 0x20]) + packet[1:] + bytes(count - 1) + bytes([count])


VP8_KEY = bytes.fromhex("908001") + bytes.fromhex("5002009d012a8002e001") + bytes(40)
VP8_DELTA = bytes.fromhex("9080020100") + bytes(60)
SPS = bytes.fromhex("6742c01fda0280bfe584000003000400000300c83c60ca80")
PPS = bytes.fromhex("68ce3c80")
IDR = bytes.fromhex("6588840021") + bytes(80)
STAP_A = b"\x18" + len(SPS).to_bytes(2, "big") + SPS + len(PPS).to_bytes(2, "big") + PPS
FU_A_START = bytes([0x7C, 0x85]) + bytes.fromhex("88840021") + bytes(100)
FU_A_END = bytes([0x7C, 0x45]) + bytes(50)


def _rtp_seeds() -> list[bytes]:
    key = _rtp(96, 100, 9000, VIDEO_SSRC, VP8_KEY, 1)
    delta = _rtp(96, 101, 12000, VIDEO_SSRC, VP8_DELTA, 1)
    gap = _rtp(96, 105, 15000, VIDEO_SSRC, VP8_DELTA, 1)
    rtx = _rtp(97, 7, 12000, RTX_SSRC, (102).to_bytes(2, "big") + VP8_DELTA)
    rtx_probe = _with_padding(_rtp(97, 8, 12000, RTX_SSRC, b""), 200)
    opus = _rtp(111, 1, 960, AUDIO_SSRC, bytes.fromhex("fcff") + bytes(60))
    one_byte = _with_extension(key, 0xBEDE, bytes.fromhex("10ff2201e2403001"))
    two_byte = _with_extension(delta, 0x1000, bytes.fromhex("0103abcdef"))
    csrc = (
        bytes([key[0] | 0x02])
        + key[1:12]
        + bytes.fromhex("0000000100000002")
        + key[12:]
    )
    padded = _with_padding(delta, 4)
    everything = _with_padding(one_byte, 17)
    stray = _rtp(45, 1, 1, 0x0D0D0D0D, b"x")
    return [
        framed(key, delta, gap, rtx, opus),
        framed(one_byte, two_byte, padded, everything),
        framed(csrc, rtx_probe, stray, delta),
        framed(*[_rtp(96, s, s * 3000, VIDEO_SSRC, VP8_DELTA) for s in (1, 2, 900, 3)]),
        framed(key, _rtp(96, 101, 9000, 0x0E0E0E0E, VP8_DELTA)),  # a new SSRC
        *[framed(p) for p in (key, one_byte, two_byte, everything, rtx, csrc)],
    ]


def _publisher(transport: FakeTransport) -> tuple[Publisher, list[SourceTrack]]:
    video = SourceTrack("video", _codec("video/VP8", 90000, 96))
    audio = SourceTrack("audio", _codec("audio/opus", 48000, 111, 2))
    video.ssrc, audio.ssrc = OUR_VIDEO_SSRC, OUR_AUDIO_SSRC
    upstream = [
        UpstreamTrack(video, 96, 97, (VIDEO_SSRC, RTX_SSRC)),
        UpstreamTrack(audio, 111, None, (AUDIO_SSRC,)),
    ]
    stream = SimpleNamespace(id="fuzz", tracks={"video": video, "audio": audio})
    publisher = Publisher(
        stream,
        transport,  # type: ignore[arg-type]
        "remote",
        upstream,
        BandwidthEstimate(4_000_000, 6_000_000),
        10.0,
    )
    return publisher, [video, audio]


async def _check_rtp(data: bytes) -> None:
    transport = FakeTransport()
    publisher, sources = _publisher(transport)
    sent: list[bytes] = []
    for source in sources:
        # A viewer under another payload type, so that rewrite runs too.
        track = ViewerTrack(source, sent.append, 100)
        source.add_viewer(track)
    for datagram in frames(data):
        publisher.receive_rtp(datagram)
    report = publisher.rtcp_report()
    for packet in sent:
        RtpPacket.parse(packet)  # what viewers get is well-formed RTP
    for packet in [report, *transport.rtcp]:
        if packet:
            RtcpPacket.parse(packet)
    for source in sources:
        source.close()


def check_rtp(data: bytes) -> None:
    """`Publisher.receive_rtp` takes any decrypted datagram without raising (it drops
    what it cannot parse); viewers and the publisher get well-formed RTP/RTCP."""
    asyncio.run(_check_rtp(data))


# --- (3) RTCP compound packets, at a publisher and at a viewer --------------------------


def _rtcp_seeds() -> list[bytes]:
    sr = RtcpSrPacket(
        ssrc=VIDEO_SSRC,
        sender_info=RtcpSenderInfo(
            ntp_timestamp=0xE5A1B2C3D4E5F607,
            rtp_timestamp=123456,
            packet_count=10,
            octet_count=1000,
        ),
        reports=[
            RtcpReceiverInfo(
                ssrc=OUR_VIDEO_SSRC,
                fraction_lost=12,
                packets_lost=3,
                highest_sequence=1000,
                jitter=20,
                lsr=0x1234,
                dlsr=0x10,
            )
        ],
    )
    rr = RtcpRrPacket(ssrc=1, reports=list(sr.reports))
    sdes = RtcpSdesPacket(chunks=[RtcpSourceInfo(ssrc=1, items=[(1, b"cname")])])
    bye = RtcpByePacket(sources=[VIDEO_SSRC, AUDIO_SSRC])
    pli = RtcpPsfbPacket(fmt=RTCP_PSFB_PLI, ssrc=1, media_ssrc=OUR_VIDEO_SSRC)
    fir = RtcpPsfbPacket(
        fmt=4,
        ssrc=1,
        media_ssrc=0,
        fci=OUR_VIDEO_SSRC.to_bytes(4, "big") + b"\x01\0\0\0",
    )
    remb = RtcpPsfbPacket(
        fmt=RTCP_PSFB_APP, ssrc=1, media_ssrc=0, fci=pack_remb_fci(500000, [VIDEO_SSRC])
    )
    nack = RtcpRtpfbPacket(fmt=RTCP_RTPFB_NACK, ssrc=1, media_ssrc=OUR_VIDEO_SSRC)
    nack.lost = [1, 2, 3, 17, 40, 1000, 65535]
    packets = [bytes(p) for p in (sr, rr, sdes, bye, pli, fir, remb, nack)]
    return [
        framed(b"".join(packets)),
        framed(bytes(sr) + bytes(sdes), bytes(rr) + bytes(nack)),
        framed(bytes(nack), bytes(pli), bytes(fir)),
        *[framed(p) for p in packets],
    ]


async def _check_rtcp(data: bytes) -> None:
    transport = FakeTransport()
    publisher, sources = _publisher(transport)
    viewer_transport = FakeTransport()
    viewer = Viewer(
        "fuzz",
        {s.kind: s for s in sources},
        viewer_transport,  # type: ignore[arg-type]
        "remote",
        {"video": 100, "audio": 111},
        "fuzz",
    )
    viewer.connected()
    for seq in range(20):  # history for NACKs, a keyframe first to open the gate
        payload = VP8_KEY if seq == 0 else VP8_DELTA
        publisher.receive_rtp(_rtp(96, seq, seq * 3000, VIDEO_SSRC, payload))
    for datagram in frames(data):
        publisher._receive_rtcp_data(datagram)
        viewer._receive_rtcp_data(datagram)
    for report in (publisher.rtcp_report(), viewer.rtcp_report()):
        if report:
            RtcpPacket.parse(report)
    for packet in viewer_transport.rtp:
        RtpPacket.parse(packet)
    for source in sources:
        source.close()


def check_rtcp(data: bytes) -> None:
    """Publisher and Viewer RTCP handling (`Session._receive_rtcp_data`) drop what they
    cannot parse and raise nothing; the reports they send next stay well-formed."""
    asyncio.run(_check_rtcp(data))


# --- (4) STUN at the shared media port ------------------------------------------------

UFRAG = b"fuzzufrag0123456"
PASSWORD = "fuzzpassword0123456789ab"
PEERS: list[tuple[Any, ...]] = [
    ("127.0.0.1", 50000),
    ("127.0.0.1", 50001),
    ("::1", 50000, 0, 0),
]
_CERTIFICATE: list[RTCCertificate] = []


def _stun(
    method: int, cls: int, attributes: dict[str, Any], key: bytes | None
) -> bytes:
    message = stun.Message(
        message_method=stun.Method(method),
        message_class=stun.Class(cls),
        transaction_id=b"fuzztransact",
    )
    message.attributes.update(attributes)
    if key is not None:
        message.add_message_integrity(key)
    message.add_fingerprint()
    return bytes(message)


def _stun_seeds() -> list[bytes]:
    check = {
        "USERNAME": UFRAG.decode() + ":peer",
        "PRIORITY": 1853817087,
        "ICE-CONTROLLING": 0x1234567890ABCDEF,
        "USE-CANDIDATE": None,
    }
    signed = _stun(0x001, 0x000, check, PASSWORD.encode())
    unsigned = _stun(0x001, 0x000, {"USERNAME": UFRAG.decode() + ":x"}, None)
    response = _stun(0x001, 0x100, {"XOR-MAPPED-ADDRESS": ("127.0.0.1", 4000)}, b"k")
    error = _stun(0x001, 0x110, {"ERROR-CODE": (487, "Role Conflict")}, None)
    indication = _stun(0x001, 0x010, {}, None)
    dtls = bytes.fromhex("16fefd000000000000000000") + bytes(40)
    srtp = _rtp(96, 1, 1, 1, bytes(30))
    return [
        framed(signed, unsigned, response, error, indication, dtls, srtp),
        framed(signed, signed, srtp),
        *[framed(m) for m in (signed, unsigned, response, error, indication)],
    ]


async def _check_stun(data: bytes) -> None:
    import socket

    if not _CERTIFICATE:
        _CERTIFICATE.append(RTCCertificate.generateCertificate())
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        media = udp_mux.MediaSocket(sock, sender=lambda sock, outbox: len(outbox))
        for datagram in frames(data):
            # The routing helpers, on their own, then the socket with no session.
            if ufrag_routing.looks_like_stun(datagram):
                ufrag_routing.stun_class(datagram)
                ufrag_routing.stun_username(datagram)
            media.datagram_received(datagram, PEERS[0])
        # One session on the socket, as after a WHIP/WHEP answer: its ufrag routes.
        transport = SecureTransport(_CERTIFICATE[0], [], "fuzz", media_sockets=[media])
        await transport.gather()
        ports = media._by_ufrag.ports
        port = ports.pop(next(iter(ports)))
        port.ufrag = UFRAG
        ports[UFRAG] = port
        connection = transport._connection
        connection._local_username = UFRAG.decode()
        connection._local_password = PASSWORD
        media.learn(PEERS[1], port)
        media.expect(b"fuzztransact", port)
        for index, datagram in enumerate(frames(data)):
            media.datagram_received(datagram, PEERS[index % len(PEERS)])
        await asyncio.sleep(0)  # the replies leave
        await transport.close()


def check_stun(data: bytes) -> None:
    """`MediaSocket.datagram_received` routes or drops any datagram without raising,
    with no session and with one (whose aioice parses the STUN routed to it)."""
    asyncio.run(_check_stun(data))


# --- (5) RTSP responses to our requests -----------------------------------------------

CAMERA_SDP = (
    b"v=0\r\no=- 1 1 IN IP4 192.0.2.7\r\ns=Camera\r\nt=0 0\r\na=control:*\r\n"
    b"m=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n"
    b"a=fmtp:96 packetization-mode=1;profile-level-id=4D002A;"
    b"sprop-parameter-sets=Z00AKp2o,aO48gA==\r\na=control:trackID=1\r\n"
    b"m=audio 0 RTP/AVP 8\r\na=control:trackID=2\r\n"
)
SEPARATOR = b"\x1e"  # between the answers to our successive requests


def _response(status: str, headers: list[str], body: bytes = b"") -> bytes:
    lines = [f"RTSP/1.0 {status}", "CSeq: {cseq}", *headers]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def _rtsp_seeds() -> list[bytes]:
    options = _response(
        "200 OK", ["Public: OPTIONS, DESCRIBE, SETUP, PLAY, GET_PARAMETER"]
    )
    describe = _response(
        "200 OK",
        ["Content-Base: rtsp://192.0.2.7/stream1/", "Content-Type: application/sdp"],
        CAMERA_SDP,
    )
    setup_video = _response(
        "200 OK",
        [
            "Transport: RTP/AVP/TCP;unicast;interleaved=0-1",
            "Session: 12345678;timeout=60",
        ],
    )
    setup_audio = _response(
        "200 OK",
        ["Transport: RTP/AVP/TCP;unicast;interleaved=2-3", "Session: 12345678"],
    )
    rtp = _rtp(96, 1, 1, 1, bytes.fromhex("6588840021") + bytes(20))
    play = _response("200 OK", ["Range: npt=0.000-", "RTP-Info: url=trackID=1;seq=1"])
    play += b"$\x00" + len(rtp).to_bytes(2, "big") + rtp
    setup_udp = _response(
        "200 OK",
        [
            "Transport: RTP/AVP;unicast;client_port=5000-5001;server_port=6970-6971",
            "Session: 12345678;timeout=60",
        ],
    )
    unauthorized = _response(
        "401 Unauthorized", ['WWW-Authenticate: Basic realm="cam"']
    )
    teardown = _response("200 OK", [])
    full = [options, describe, setup_video, setup_audio, play, teardown]
    return [
        SEPARATOR.join(full),
        SEPARATOR.join([options, unauthorized]),
        SEPARATOR.join([options, describe, _response("461 Unsupported Transport", [])]),
        SEPARATOR.join([options, describe.replace(b"\r\n", b"\n", 3)]),
        SEPARATOR.join([options, describe, setup_udp, setup_udp, play, teardown]),
    ]


async def _scripted_prepare(connection: RTSPConnection) -> None:
    """Instead of connecting: answer each request from the input, in order."""
    # A request the camera never answers times out as in production, only sooner.
    connection.default_timeout = 0.01
    connection.connection_made(_ScriptedSocket(connection, _RESPONSES.pop()))


_RESPONSES: list[list[bytes]] = []


class _ScriptedSocket(asyncio.Transport):
    def __init__(self, connection: RTSPConnection, responses: list[bytes]) -> None:
        super().__init__()
        self._connection = connection
        self._responses = responses
        self._closed = False

    def write(self, data: Any) -> None:
        connection = self._connection
        cseq = connection._cseq - 1  # the request being sent
        if self._responses:
            answer = self._responses.pop(0).replace(b"{cseq}", str(cseq).encode())
            connection.data_received(answer)
        if not self._closed and not self._responses:
            self.close()  # the camera hangs up: nothing is left to answer with

    def get_write_buffer_size(self) -> int:
        return 0

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._connection.connection_lost(None)

    def is_closing(self) -> bool:
        return self._closed


async def _check_rtsp(data: bytes, transport: str) -> None:
    _RESPONSES[:] = [data.split(SEPARATOR)]
    received: list[tuple[int, bytes]] = []
    session = RtspSession(
        "rtsp://admin:secret@127.0.0.1/stream1",
        RtspOptions(transport=transport),
        lambda i, d: received.append((i, d)),
    )
    # aiortsp's connection (or our subclass of it), parser and all, minus the socket.
    original = RTSPConnection.prepare
    RTSPConnection.prepare = _scripted_prepare
    try:
        tracks = await session.describe()
        await session.play(tracks)
    except CameraError:
        pass
    finally:
        RTSPConnection.prepare = original
        await session.close()


def check_rtsp(data: bytes) -> None:
    """`RtspSession.describe`, `play` and `close` raise CameraError only, whatever the
    camera answers (through aiortsp's parser, as in production)."""
    for transport in ("tcp", "udp"):
        asyncio.run(asyncio.wait_for(_check_rtsp(data, transport), 10))


# --- (6) a camera's SDP (the DESCRIBE answer) -------------------------------------------


def check_camera_sdp(data: bytes) -> None:
    """`parse_sdp` takes any text; routing its tracks raises CameraError at most."""
    tracks = parse_sdp(data.decode("utf-8", "replace"))
    _unsupported(tracks)
    camera = Camera(
        RtspCamera("fuzz", "rtsp://192.0.2.7/stream1"),
        SimpleNamespace(tracks={}),
    )
    for track in tracks:
        control_url("rtsp://192.0.2.7/stream1/", track.control)
        try:
            camera._route(track)
        except CameraError:
            pass


# --- (7) H.264 and VP8 payloads -------------------------------------------------------

MAX_PAYLOADS = [1200, 3, 4, 17, 100, 65535]


def _codec_seeds() -> list[bytes]:
    return [
        b"\x00" + framed(STAP_A, IDR, FU_A_START, FU_A_END, VP8_KEY),
        b"\x01" + framed(SPS, PPS, IDR * 20, FU_A_START, FU_A_END),
        b"\x02" + framed(VP8_KEY, VP8_DELTA, bytes.fromhex("90e08001") + bytes(10)),
        b"\x03" + framed(bytes([0x7C, 0x85]) + IDR * 40, bytes([0x7C, 0x05]), FU_A_END),
        b"\x04" + framed(bytes.fromhex("0010") + bytes.fromhex("00b00800") + bytes(60)),
        b"\x05" + framed(STAP_A + b"\x00\x05" + IDR[:5], bytes([0x19, 0, 1]), b"\x67"),
    ]


def check_codec_payloads(data: bytes) -> None:
    """Keyframe tests, resolution parsers, VP8 picture ids and the H.264 repacketizer
    take any payload; repacketized payloads fit the budget and are single NAL units,
    STAP-A or FU-A."""
    if not data:
        return
    max_payload = MAX_PAYLOADS[data[0] % len(MAX_PAYLOADS)]
    payloads = frames(data[1:])
    repacketizer = h264.H264Repacketizer(
        ",".join(base64.b64encode(p).decode() for p in payloads[:2]), max_payload
    )
    for index, payload in enumerate(payloads):
        # An auto viewer's switch reads and shifts VP8 picture ids in place (at
        # `start`, the payload's offset): within the packet, and back exactly.
        packet = bytearray(payload)
        ids = vp8.picture_ids(packet, 0)
        vp8.shift_picture_ids(packet, 1 + index, 7 * index, 0)
        assert len(packet) == len(payload)
        vp8.shift_picture_ids(packet, -1 - index, -7 * index, 0)
        assert packet == payload and vp8.picture_ids(packet, 0) == ids
        keyframe_detect.vp8_starts_keyframe(payload)
        keyframe_detect.h264_starts_keyframe(payload)
        resolution.keyframe_resolution("video/VP8", payload)
        resolution.keyframe_resolution("video/H264", payload)
        resolution.h264_resolution(payload)
        split_access_units(payload, 13, 3)
        split_access_units(payload, 1 + index % 32, index % 33)
        for out in repacketizer.push(
            payload, index // 3, index % 3 == 2, index % 7 == 6
        ):
            assert 0 < len(out.payload) <= max_payload, (len(out.payload), max_payload)
            nal_type = out.payload[0] & 0x1F
            assert 1 <= nal_type <= 24 or nal_type == 28, nal_type


# --- (8) the XML config ---------------------------------------------------------------

_CONFIG_DIR = tempfile.mkdtemp(prefix="broadcast-fuzz-")


def _config_seeds() -> list[bytes]:
    example = (REPO / "flashphoner.xml.example").read_bytes()
    small = b"""<?xml version="1.0"?>
<flashphoner>
  <server><ip>203.0.113.10</ip><http_port>8080</http_port><https_port>8443</https_port>
    <tls_certificate>cert.pem</tls_certificate><tls_key>key.pem</tls_key></server>
  <media><media_ports>40000-40100</media_ports><start_bitrate_kbps>7000</start_bitrate_kbps></media>
  <ice><stun_server>stun:stun.example.org:3478</stun_server><turn_server>turn:t.example.org:3478?transport=udp</turn_server></ice>
  <auth><publish_key>secret</publish_key><publish_key>other</publish_key>
    <admin_key>a</admin_key><private_viewing>true</private_viewing></auth>
  <limits><max_streams>0</max_streams></limits>
  <log><level>debug</level><format>json</format></log>
  <rtsp id="gate" url="rtsp://user:pass@192.0.2.7/stream1" always_on="true" transport="udp"/>
  <rtsp id="gate2" url="rtsps://[2001:db8::1]:322/s" transport="tcp"/>
</flashphoner>
"""
    hostile = (
        b'<?xml version="1.0"?>\n<!DOCTYPE x [<!ENTITY a "aaaa">]>\n'
        b"<flashphoner>&a;</flashphoner>\n"
    )
    return [example, small, hostile]


def check_config(data: bytes) -> None:
    """`load_config` raises ConfigError only, whatever the file holds."""
    path = os.path.join(_CONFIG_DIR, "flashphoner.xml")
    with open(path, "wb") as file:
        file.write(data)
    try:
        load_config(path)
    except ConfigError:
        pass


# --- the table ------------------------------------------------------------------------

TARGETS = {
    "sdp_offer": (check_sdp_offer, lambda: [], True),
    "rtp": (check_rtp, _rtp_seeds, False),
    "rtcp": (check_rtcp, _rtcp_seeds, False),
    "stun": (check_stun, _stun_seeds, False),
    "rtsp": (check_rtsp, _rtsp_seeds, True),
    "camera_sdp": (check_camera_sdp, lambda: [CAMERA_SDP], True),
    "codec_payloads": (check_codec_payloads, _codec_seeds, False),
    "config_xml": (check_config, _config_seeds, True),
}


def seeds(target: str) -> list[bytes]:
    """Built-in seeds, those in `seeds/<target>/`, and the crashes found so far."""
    return TARGETS[target][1]() + seed_files(target)
