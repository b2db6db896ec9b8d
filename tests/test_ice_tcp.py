"""Interop: a WHEP viewer whose UDP is off receives media over ICE-TCP (RFC 6544, RFC 4571).

Networks that block UDP still let a browser reach the server over TCP: the server's media
port also listens on TCP and its answer carries a `tcptype passive` candidate. The viewer is
GStreamer's webrtcbin (libnice, a second ICE implementation, as in a real deployment) with
UDP gathering switched off, so media can only arrive over TCP. CLIENT runs under the system
python (GI is a Debian package), like the publisher in test_interop_gstreamer.py.
"""

import asyncio
import contextlib
import functools
import re
import shutil
import subprocess
import time

import pytest

from broadcast.web_keys import REGISTRY
from tests.peers import publish, wait_for
from tests.test_interop_gstreamer import PACKAGES

SYSTEM_PYTHON = "/usr/bin/python3"
ELEMENTS = "webrtcbin nicesrc nicesink rtpvp8depay vp8dec rtpopusdepay opusdec fakesink"
CHECK = f"""
import gi
for lib in ("Gst", "GstWebRTC", "GstSdp"): gi.require_version(lib, "1.0")
from gi.repository import Gst
Gst.init(None)
missing = [e for e in "{ELEMENTS}".split() if not Gst.ElementFactory.find(e)]
assert not missing, missing
"""
CLIENT = r"""
import sys, threading, urllib.request, gi
for lib in ("Gst", "GstWebRTC", "GstSdp"): gi.require_version(lib, "1.0")
from gi.repository import GLib, Gst, GstSdp, GstWebRTC as W
Gst.init(None)
url, answer_tcp, lifetime = sys.argv[1], sys.argv[2] == "keep", int(sys.argv[3])
pipe = Gst.Pipeline()
w = Gst.ElementFactory.make("webrtcbin", "w")
w.props.bundle_policy = "max-bundle"
pipe.add(w)
RECV = W.WebRTCRTPTransceiverDirection.RECVONLY
for caps in ("application/x-rtp,media=video,encoding-name=VP8,payload=96,clock-rate=90000",
             "application/x-rtp,media=audio,encoding-name=OPUS,payload=111,clock-rate=48000"
             ",encoding-params=(string)2"):
    w.emit("add-transceiver", RECV, Gst.Caps.from_string(caps))
ice = w.props.ice_agent  # keep this reference: webrtcbin 1.22 leaves the agent floating
ice.props.ice_tcp = True
ice.props.ice_udp = False  # libnice refuses to turn both off, so TCP first
ice.emit("add-local-ip-address", "127.0.0.1")  # else libnice gathers no loopback candidate
said = threading.Lock()  # streaming threads print too: one line at a time
def say(*words):
    with said:
        print(*words, flush=True)
counts = {}
def count(key, every):
    counts[key] = counts.get(key, 0) + 1
    if counts[key] % every == 1:
        say(key, counts[key])
def post():
    offer = w.props.local_description.sdp.as_text()
    for line in offer.splitlines():
        if line.startswith("a=candidate:"):
            say("offer", line)
    req = urllib.request.Request(url, offer.encode(), {"Content-Type": "application/sdp"})
    lines = urllib.request.urlopen(req, timeout=10).read().decode().splitlines()
    tcp = [l for l in lines if l.startswith("a=candidate:") and l.split()[2].lower() == "tcp"]
    lines = [l for l in lines if answer_tcp or l not in tcp]
    for line in lines:
        if line.startswith("a=candidate:"):
            say("answer", line)
    say("answered")
    answer = "\r\n".join(lines) + "\r\n"
    _, sdp = GstSdp.SDPMessage.new_from_text(answer)
    w.emit("set-remote-description",
           W.WebRTCSessionDescription.new(W.WebRTCSDPType.ANSWER, sdp), None)
def gathered(*_):
    if w.props.ice_gathering_state == W.WebRTCICEGatheringState.COMPLETE:
        GLib.idle_add(post)
def offered(promise):
    reply = promise.get_reply()  # must outlive the offer taken from it
    w.emit("set-local-description", reply.get_value("offer"), None)
def decode(chain, kind):
    bin = Gst.parse_bin_from_description(
        chain + " ! fakesink name=sink signal-handoffs=true sync=false", True)
    bin.get_by_name("sink").connect("handoff", lambda sink, buffer, pad: decoded(kind, pad))
    return bin
def decoded(kind, pad):
    count(kind + "-frames", 10)
    if kind == "video" and counts[kind + "-frames"] == 1:
        size = pad.get_current_caps().get_structure(0)
        say("video-size %dx%d" % (size.get_int("width")[1], size.get_int("height")[1]))
def pad_added(_, pad):
    if pad.direction != Gst.PadDirection.SRC:
        return
    caps = pad.get_current_caps() or pad.query_caps(None)
    name = caps.get_structure(0).get_string("encoding-name")
    kind = caps.get_structure(0).get_string("media")
    say("pad", kind, name)
    chain = {"VP8": "rtpvp8depay ! vp8dec", "OPUS": "rtpopusdepay ! opusdec"}[name]
    bin = decode("queue ! " + chain, kind)
    pipe.add(bin)
    bin.sync_state_with_parent()
    pad.add_probe(Gst.PadProbeType.BUFFER, lambda *_: count(kind + "-rtp", 50) or
                  Gst.PadProbeReturn.OK)
    pad.link(bin.get_static_pad("sink"))
w.connect("pad-added", pad_added)
w.connect("notify::ice-gathering-state", gathered)
w.connect("notify::connection-state", lambda *_: say("state", w.props.connection_state.value_nick))
w.connect("notify::ice-connection-state",
          lambda *_: say("ice", w.props.ice_connection_state.value_nick))
w.connect("on-negotiation-needed",
          lambda _: w.emit("create-offer", None, Gst.Promise.new_with_change_func(offered)))
pipe.set_state(Gst.State.PLAYING)
loop = GLib.MainLoop()
GLib.timeout_add_seconds(lifetime, loop.quit)  # never outlive the test
loop.run()
"""


class Viewer:
    """CLIENT as a subprocess, and the lines it has printed so far."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: list[str] = []

    def count(self, key: str) -> int:
        """The last count CLIENT printed for `key` (e.g. `video-rtp`), else 0."""
        counts = [re.fullmatch(rf"{key} (\d+)", line) for line in self.lines]
        return max((int(m[1]) for m in counts if m), default=0)

    def candidates(self, side: str) -> list[list[str]]:
        """The `a=candidate` lines of the offer or the answer, split into fields."""
        prefix = f"{side} a=candidate:"
        return [line.split()[1:] for line in self.lines if line.startswith(prefix)]

    async def read_until(self, done, timeout: float) -> bool:
        """Collect lines until `done()` or `timeout` s (or CLIENT exits); `done()`."""
        deadline, stdout = time.monotonic() + timeout, self.process.stdout
        assert stdout is not None
        while not done() and (left := deadline - time.monotonic()) > 0:
            try:
                line = await asyncio.wait_for(stdout.readline(), left)
            except TimeoutError:
                break
            if not line:
                break
            self.lines.append(line.decode(errors="replace").rstrip())
        return bool(done())

    def __repr__(self) -> str:
        return "\n".join(["CLIENT printed:", *self.lines[-40:]])


@contextlib.asynccontextmanager
async def viewer(url: str, answer_tcp: str, lifetime: float):
    """Run CLIENT against WHEP `url`; killed on exit, and by itself after `lifetime` s.

    `answer_tcp` is `keep`, or `drop` to take the answer's TCP candidates out.
    """
    command = [SYSTEM_PYTHON, "-u", "-c", CLIENT, url, answer_tcp, str(int(lifetime))]
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        yield Viewer(process)
    finally:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()


@functools.cache
def missing_gstreamer() -> str:
    """Why CLIENT cannot run here (GI or a GStreamer element missing), else ``."""
    if not shutil.which(SYSTEM_PYTHON):
        return f"no {SYSTEM_PYTHON}"
    check = subprocess.run(
        [SYSTEM_PYTHON, "-c", CHECK], capture_output=True, timeout=30
    )
    if check.returncode:
        return f"GStreamer is missing ({check.stderr.decode()[-300:]}): apt-get install {PACKAGES}"
    return ""


def need_gstreamer() -> None:
    if reason := missing_gstreamer():
        pytest.skip(reason)


async def live_stream(server, http, stream_id: str):
    """An aiortc publisher (VP8 + Opus, what CLIENT asks for) on `stream_id`."""
    publisher = await publish(http, str(server.make_url(f"/whip/{stream_id}")))
    await publisher.wait_connected()
    return publisher


async def test_viewer_without_udp_receives_media_over_tcp(server, http):
    """UDP off in the viewer: ICE can only succeed on the answer's TCP candidate,
    and decoded 320x240 frames prove the media (DTLS-SRTP over RFC 4571) is real."""
    need_gstreamer()
    publisher = await live_stream(server, http, "tcp")
    try:
        async with viewer(str(server.make_url("/whep/tcp")), "keep", 40) as client:
            await client.read_until(lambda: "answered" in client.lines, 10)
            offer, answer = client.candidates("offer"), client.candidates("answer")
            assert offer, f"CLIENT gathered nothing\n{client}"
            assert {c[2].lower() for c in offer} == {"tcp"}, f"UDP is not off\n{client}"
            assert answer, f"CLIENT got no answer\n{client}"
            tcp = [c for c in answer if c[2].lower() == "tcp"]
            assert tcp, f"the answer has no TCP candidate\n{client}"
            udp_ports = {c[5] for c in answer if c[2].lower() == "udp"}
            for _, _, _, _, address, port, *kind in tcp:
                assert address == "127.0.0.1", client
                assert kind == ["typ", "host", "tcptype", "passive"], client
                assert port in udp_ports, "TCP listens on the UDP media port's number"

            def enough() -> bool:
                return (
                    client.count("video-rtp") >= 51
                    and client.count("video-frames") >= 31
                    and client.count("audio-frames") >= 11
                )

            received = await client.read_until(enough, 20)
            assert received, f"no media over ICE-TCP within 20 s\n{client}"
            assert "video-size 320x240" in client.lines, client
            # The server side: the viewer's nominated ICE pair is the TCP one.
            viewers = [
                s for s in server.app[REGISTRY].sessions.values() if s.kind == "whep"
            ]
            assert len(viewers) == 1
            pair = viewers[0].transport._connection._nominated.get(1)
            assert pair is not None and pair.local_candidate.transport == "tcp", pair
            assert viewers[0].transport.on_tcp, "no spare NACK answers on TCP"
            # The viewer's process dies: its TCP connection closes, and the session
            # ends with it (ICE consent would take ~30 s to notice).
            client.process.kill()
            await wait_for(
                lambda: viewers[0].closed, timeout=5, message="the session outlived TCP"
            )
    finally:
        await publisher.close()


async def test_viewer_without_udp_gets_nothing_from_a_udp_only_answer(server, http):
    """The control: the same viewer, with the answer's TCP candidate taken out, must
    not connect; so the test above can fail, and UDP really is off in CLIENT.

    (Not "UDP and TCP both off": libnice refuses that and keeps TCP on.) libnice has
    no pair to check and never says `failed`, so this waits its 5 s in full.
    """
    need_gstreamer()
    publisher = await live_stream(server, http, "udp")
    try:
        async with viewer(str(server.make_url("/whep/udp")), "drop", 10) as client:
            await client.read_until(lambda: "state connected" in client.lines, 5)
            answer = client.candidates("answer")
            assert answer, f"CLIENT got no answer\n{client}"
            assert {c[2].lower() for c in answer} == {"udp"}, client
            assert "state connected" not in client.lines, client
            assert client.count("video-rtp") == client.count("audio-rtp") == 0, client
    finally:
        await publisher.close()
