"""What a camera's SDP says, and what we tell the operator when we cannot use it."""

from __future__ import annotations

from broadcast.ingest.camera import _unsupported
from broadcast.ingest.rtsp import control_url, parse_sdp
from broadcast.redact import redact_url as redact

CAMERA_SDP = """v=0\r
o=- 1 1 IN IP4 192.0.2.7\r
s=Camera\r
t=0 0\r
a=control:*\r
m=video 0 RTP/AVP 96\r
a=rtpmap:96 H264/90000\r
a=fmtp:96 packetization-mode=1;profile-level-id=4D002A;sprop-parameter-sets=Z00AKp2o,aO48gA==\r
a=control:trackID=1\r
m=audio 0 RTP/AVP 97\r
a=rtpmap:97 MPEG4-GENERIC/16000/1\r
a=fmtp:97 streamtype=5;profile-level-id=15;mode=AAC-hbr;config=1408;sizelength=13;indexlength=3\r
a=control:rtsp://192.0.2.7/stream1/trackID=2\r
m=audio 0 RTP/AVP 8\r
m=application 0 RTP/AVP 107\r
"""


def test_camera_sdp_is_read_track_by_track():
    video, aac, pcma = parse_sdp(CAMERA_SDP)
    assert (video.kind, video.encoding, video.clock_rate) == ("video", "H264", 90000)
    assert video.fmtp["profile-level-id"] == "4D002A"
    assert (aac.encoding, aac.clock_rate, aac.channels) == ("MPEG4-GENERIC", 16000, 1)
    assert aac.fmtp["config"] == "1408"
    assert (pcma.encoding, pcma.clock_rate) == ("PCMA", 8000)  # static type, no rtpmap
    assert control_url("rtsp://h/s", video.control) == "rtsp://h/s/trackID=1"
    assert (
        control_url("rtsp://h/s/", aac.control) == "rtsp://192.0.2.7/stream1/trackID=2"
    )
    assert control_url("rtsp://h/s", "*") == "rtsp://h/s"


def test_lying_sdp_gives_no_tracks_rather_than_an_exception():
    for text in (
        "",
        "garbage",
        "m=video x y z\r\n",
        "m=video 0 RTP/AVP\r\na=rtpmap:96\r\n",
    ):
        assert parse_sdp(text) == []


def test_unsupported_cameras_are_told_what_to_change():
    h265 = parse_sdp("m=video 0 RTP/AVP 96\r\na=rtpmap:96 H265/90000\r\n")
    assert "set the camera to H.264" in _unsupported(h265)
    mjpeg = parse_sdp("m=video 0 RTP/AVP 26\r\na=rtpmap:26 JPEG/90000\r\n")
    assert "MJPEG" in _unsupported(mjpeg)
    assert "no video" in _unsupported(parse_sdp("m=audio 0 RTP/AVP 0\r\n"))


def test_credentials_are_redacted():
    assert (
        redact("rtsp://admin:pa55@192.0.2.7:554/s?x=1") == "rtsp://192.0.2.7:554/s?x=1"
    )


def test_credentials_in_paths_queries_and_ipv6_hosts_are_redacted_too():
    assert redact("rtsp://h/user=admin&password=x&channel=1") == (
        "rtsp://h/user=***&password=***&channel=1"
    )
    assert (
        redact("rtsp://h:554/live?pwd=x&stream=0")
        == "rtsp://h:554/live?pwd=***&stream=0"
    )
    assert redact("rtsp://a:b@[2001:db8::7]:554/s") == "rtsp://[2001:db8::7]:554/s"


def test_aac_tracks_with_bad_parameters_are_not_taken():
    from broadcast.ingest.camera import _is_aac

    def aac(**fmtp: str):
        text = "m=audio 0 RTP/AVP 97\r\na=rtpmap:97 MPEG4-GENERIC/16000/1\r\n"
        params = ";".join(f"{k}={v}" for k, v in {"mode": "AAC-hbr", **fmtp}.items())
        return parse_sdp(text + f"a=fmtp:97 {params}\r\n")[0]

    assert _is_aac(aac(config="1408"))
    for bad in (
        {"config": "zz"},
        {},
        {"config": "1408", "sizelength": "-1"},
        {"config": "1408", "sizelength": "abc"},
        {"config": "1408", "indexlength": "99"},
    ):
        assert not _is_aac(aac(**bad))
