"""Interop: GStreamer's WebRTC stack (webrtcbin, libnice, OpenSSL DTLS) publishes over WHIP.

Debian 12 has no WHIP element (whipsink/whipclientsink are in gst-plugins-rs) and its
simple-whip-client aborts (libsoup2 + libsoup3 in one process), so CLIENT drives webrtcbin
through GI and POSTs the offer itself. It runs under the system python (GI is a Debian package).
"""

import asyncio
import contextlib

import pytest

from broadcast.web_keys import REGISTRY
from tests.peers import wait_for, watch

PACKAGES = (
    "gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad"
    " gstreamer1.0-plugins-ugly gstreamer1.0-nice python3-gst-1.0 gir1.2-gst-plugins-bad-1.0"
)
VIDEO = {
    "vp8": "vp8enc deadline=1 ! rtpvp8pay pt=96 ! application/x-rtp,encoding-name=VP8,payload=96",
    "h264": "x264enc tune=zerolatency key-int-max=30 ! video/x-h264,profile=constrained-baseline"
    " ! rtph264pay config-interval=-1 pt=102 ! application/x-rtp,encoding-name=H264,payload=102",
}
CLIENT = r"""
import sys, urllib.request, gi
for lib in ("Gst", "GstWebRTC", "GstSdp"): gi.require_version(lib, "1.0")
from gi.repository import GLib, Gst, GstSdp, GstWebRTC as W
Gst.init(None)
pipe = Gst.parse_launch("webrtcbin name=w bundle-policy=max-bundle videotestsrc is-live=true"
    " ! video/x-raw,width=320,height=240,framerate=30/1 ! videoconvert ! queue ! " + sys.argv[2]
    + " ! w. audiotestsrc is-live=true ! audioconvert ! audioresample ! queue ! opusenc"
    " ! rtpopuspay pt=111 ! application/x-rtp,encoding-name=OPUS,payload=111 ! w.")
w = pipe.get_by_name("w")
for pad in w.sinkpads:
    pad.props.transceiver.props.direction = W.WebRTCRTPTransceiverDirection.SENDONLY
ice = w.props.ice_agent  # keep this reference: webrtcbin 1.22 leaves the agent floating
ice.props.ice_tcp = False
ice.emit("add-local-ip-address", "127.0.0.1")  # else libnice gathers no loopback candidate
def post():
    offer = w.props.local_description.sdp.as_text()
    req = urllib.request.Request(sys.argv[1], offer.encode(), {"Content-Type": "application/sdp"})
    _, answer = GstSdp.SDPMessage.new_from_text(urllib.request.urlopen(req).read().decode())
    answer = W.WebRTCSessionDescription.new(W.WebRTCSDPType.ANSWER, answer)
    w.emit("set-remote-description", answer, None)
def gathered(*_):
    if w.props.ice_gathering_state == W.WebRTCICEGatheringState.COMPLETE:
        GLib.idle_add(post)
def offered(promise):
    reply = promise.get_reply()  # must outlive the offer taken from it
    w.emit("set-local-description", reply.get_value("offer"), None)
w.connect("notify::ice-gathering-state", gathered)
w.connect("notify::connection-state", lambda *_: print(w.props.connection_state.value_nick))
w.connect("on-negotiation-needed",
          lambda _: w.emit("create-offer", None, Gst.Promise.new_with_change_func(offered)))
pipe.set_state(Gst.State.PLAYING)
GLib.MainLoop().run()
"""


@pytest.mark.parametrize("codec", ["vp8", "h264"])
async def test_gstreamer_publishes_over_whip(server, http, codec):
    url, out = str(server.make_url("/whip/gst")), asyncio.subprocess.PIPE
    command = ["/usr/bin/python3", "-u", "-c", CLIENT, url, VIDEO[codec]]
    client = await asyncio.create_subprocess_exec(*command, stdout=out, stderr=-2)
    try:
        # CLIENT prints webrtcbin's connection state each time it changes.
        log = b"\n"
        while not log.endswith((b"\nconnected\n", b"\nfailed\n")):
            line = b""
            with contextlib.suppress(TimeoutError):
                line = await asyncio.wait_for(client.stdout.readline(), 15)
            assert line, (
                f"GStreamer client died or hung (apt-get install {PACKAGES}?):{log.decode()}"
            )
            log += line
        assert log.endswith(b"\nconnected\n"), f"GStreamer client failed:{log.decode()}"
        viewer = await watch(http, str(server.make_url("/whep/gst")))
        frames = viewer.frames
        with contextlib.suppress(AssertionError):
            await wait_for(
                lambda: len(frames.get("video", [])) >= 10 and frames.get("audio")
            )
        counts = {kind: len(decoded) for kind, decoded in frames.items()}
        assert counts.get("video", 0) >= 10 and counts.get("audio"), (
            f"viewer got {counts}"
        )
        assert {(f.width, f.height) for f in frames["video"][-5:]} == {(320, 240)}
        # Its 1,400-byte packets all went out, those sent at connect (the keyframe
        # asked for at its offer) too: SRTP's buffer was widened before them.
        (session,) = server.app[REGISTRY].get("gst").viewers
        assert session.transport.failed_packets == 0
        await viewer.close()
    finally:
        with contextlib.suppress(ProcessLookupError):
            client.kill()
        await client.wait()
