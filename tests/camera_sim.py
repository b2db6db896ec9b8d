"""A real IP camera for tests: GStreamer's RTSP server (gst-rtsp-server) on 127.0.0.1.

The server runs under the system python (GI is a Debian package, not in the venv) as a
subprocess, so a test can kill it (camera reboot), restart it on the same port, or stop it
with SIGSTOP (a camera that hangs without closing its connections).

    async with start_camera(audio="pcma", username="admin", password="secret") as camera:
        ...  # camera.url == "rtsp://admin:secret@127.0.0.1:<port>/stream"
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import IO, Literal

PYTHON = "/usr/bin/python3"
READY_TIMEOUT_S = 15.0
PACKAGES = (
    "python3-gi gir1.2-gstreamer-1.0 gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base"
    " gstreamer1.0-plugins-good gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly"
)

Audio = Literal["pcma", "pcmu", "aac", "opus"] | None
Auth = Literal["basic", "digest"]
Protocols = Literal["udp", "tcp", "both"]

# Runs under /usr/bin/python3. argv[1]: JSON settings. Prints "ready <port>" once listening.
SERVER = r"""
import json, sys
cfg = json.loads(sys.argv[1])
try:
    import gi
    for lib in ("Gst", "GstRtsp", "GstRtspServer"):
        gi.require_version(lib, "1.0")
    from gi.repository import GLib, Gst, GstRtsp, GstRtspServer as S
except (ImportError, ValueError) as error:
    print("missing", error, flush=True)
    sys.exit(3)
Gst.init(None)
missing = [e for e in cfg["elements"] if Gst.ElementFactory.find(e) is None]
if missing:
    print("missing GStreamer elements", *missing, flush=True)
    sys.exit(3)

server = S.RTSPServer()
server.set_address("127.0.0.1")
server.set_service(str(cfg["port"]))
factory = S.RTSPMediaFactory()
factory.set_launch(cfg["launch"])
factory.set_shared(True)
trans = {"udp": GstRtsp.RTSPLowerTrans.UDP, "tcp": GstRtsp.RTSPLowerTrans.TCP,
         "both": GstRtsp.RTSPLowerTrans.UDP | GstRtsp.RTSPLowerTrans.TCP}
factory.set_protocols(trans[cfg["protocols"]])
if cfg["username"] is not None:
    auth = S.RTSPAuth()
    token = S.RTSPToken()
    token.set_string("media.factory.role", "viewer")
    if cfg["auth"] == "digest":
        auth.add_digest(cfg["username"], cfg["password"], token)
        auth.set_supported_methods(GstRtsp.RTSPAuthMethod.DIGEST)
    else:
        auth.add_basic(S.RTSPAuth.make_basic(cfg["username"], cfg["password"]), token)
        auth.set_supported_methods(GstRtsp.RTSPAuthMethod.BASIC)
    server.set_auth(auth)
    permissions = S.RTSPPermissions()
    permissions.add_permission_for_role("viewer", "media.factory.access", True)
    permissions.add_permission_for_role("viewer", "media.factory.construct", True)
    factory.set_permissions(permissions)
if cfg.get("tls_pem"):  # rtsps: TLS with this certificate and key
    from gi.repository import Gio
    auth = server.get_auth() or S.RTSPAuth()
    auth.set_tls_certificate(Gio.TlsCertificate.new_from_file(cfg["tls_pem"]))
    if cfg["username"] is None:  # no credentials asked: everyone may watch
        token = S.RTSPToken()
        token.set_string("media.factory.role", "viewer")
        auth.set_default_token(token)
        permissions = S.RTSPPermissions()
        permissions.add_permission_for_role("viewer", "media.factory.access", True)
        permissions.add_permission_for_role("viewer", "media.factory.construct", True)
        factory.set_permissions(permissions)
    server.set_auth(auth)
if cfg["session_timeout_s"]:
    def new_session(client, session):
        session.set_timeout(cfg["session_timeout_s"])
    server.connect("client-connected", lambda _, client: client.connect("new-session", new_session))
server.get_mount_points().add_factory(cfg["path"], factory)
if server.attach(None) == 0:
    print("cannot listen on port", cfg["port"], flush=True)
    sys.exit(4)
print("ready", server.get_bound_port(), flush=True)
GLib.MainLoop().run()
"""


@dataclass(frozen=True)
class CameraSettings:
    """What the simulated camera sends and how it lets clients in."""

    width: int = 640
    height: int = 360
    fps: int = 30
    profile: str = "constrained-baseline"
    audio: Audio = None
    username: str | None = None
    password: str | None = None
    auth: Auth = "digest"
    protocols: Protocols = "both"
    path: str = "/stream"
    inband_sps: bool = True
    gop_s: float = 1.0
    # None: a ball on a plain background, a few hundred kbit/s. A number: noise, which
    # x264 encodes at that bitrate, as a busy scene fills a real camera's bitrate.
    bitrate_kbps: int | None = None
    session_timeout_s: int | None = None
    # A PEM file with the camera's certificate and key: it then speaks rtsps://.
    tls_pem: str | None = None

    def launch(self) -> str:
        """Return the gst-rtsp-server launch line: pay0 video, pay1 audio."""
        # One IDR every gop_s (1 s by default, as the GOP-cache tests assume).
        # x264 writes no SPS/PPS in band (repeat-headers=0) and the payloader adds them
        # (config-interval=-1: before every IDR; 0: only in sprop-parameter-sets).
        gop_frames = max(round(self.fps * self.gop_s), 1)
        pattern, bitrate = "ball", ""
        if self.bitrate_kbps is not None:
            pattern, bitrate = "snow", f" bitrate={self.bitrate_kbps}"
        video = (
            f"videotestsrc is-live=true pattern={pattern}"
            f" ! video/x-raw,width={self.width},height={self.height},"
            f"framerate={self.fps}/1 ! videoconvert"
            f" ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max={gop_frames}"
            f"{bitrate} aud=false option-string=repeat-headers=0"
            f" ! video/x-h264,profile={self.profile},stream-format=avc,alignment=au"
            f" ! rtph264pay name=pay0 pt=96"
            f" config-interval={-1 if self.inband_sps else 0}"
        )
        source = "audiotestsrc is-live=true wave=sine freq=440 ! audioconvert ! audioresample"
        audio = {
            None: "",
            # 160 samples at 8 kHz: 20 ms packets, as cameras send them.
            "pcma": f" {source} ! audio/x-raw,rate=8000,channels=1 ! alawenc"
            " ! rtppcmapay name=pay1 pt=8 min-ptime=20000000 max-ptime=20000000",
            "pcmu": f" {source} ! audio/x-raw,rate=8000,channels=1 ! mulawenc"
            " ! rtppcmupay name=pay1 pt=0 min-ptime=20000000 max-ptime=20000000",
            "aac": f" {source} ! audio/x-raw,rate=16000,channels=1 ! voaacenc"
            " ! rtpmp4gpay name=pay1 pt=97",
            # 20 ms Opus frames, stereo at 48 kHz: "OPUS/48000/2" in the SDP (RFC 7587).
            "opus": f" {source} ! audio/x-raw,rate=48000,channels=2 ! opusenc"
            " ! rtpopuspay name=pay1 pt=111",
        }[self.audio]
        return f"( {video}{audio} )"

    def elements(self) -> list[str]:
        """Return the GStreamer elements the launch line needs."""
        names = ["videotestsrc", "x264enc", "rtph264pay", "videoconvert"]
        audio = {
            "pcma": ["alawenc", "rtppcmapay"],
            "pcmu": ["mulawenc", "rtppcmupay"],
            "aac": ["voaacenc", "rtpmp4gpay"],
            "opus": ["opusenc", "rtpopuspay"],
            None: [],
        }[self.audio]
        if audio:
            names += ["audiotestsrc", "audioconvert", "audioresample", *audio]
        return names


class Camera:
    """A running simulated RTSP camera: one subprocess, one port kept across restarts."""

    def __init__(self, settings: CameraSettings) -> None:
        self.settings = settings
        self.port = 0  # 0 until the first start: the server picks a free port
        self._process: asyncio.subprocess.Process | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        """Return rtsp://[user:pass@]127.0.0.1:port/path."""
        s = self.settings
        credentials = f"{s.username}:{s.password}@" if s.username is not None else ""
        scheme = "rtsps" if s.tls_pem else "rtsp"
        return f"{scheme}://{credentials}127.0.0.1:{self.port}{s.path}"

    @property
    def running(self) -> bool:
        """Return whether the server process is alive (frozen counts as alive)."""
        return self._process is not None and self._process.returncode is None

    async def start(self) -> None:
        """Start the server and return once it listens."""
        if self.running:
            return
        s = self.settings
        config = {
            "port": self.port,
            "launch": s.launch(),
            "elements": s.elements(),
            "path": s.path,
            "protocols": s.protocols,
            "username": s.username,
            "password": s.password,
            "auth": s.auth,
            "session_timeout_s": s.session_timeout_s,
            "tls_pem": s.tls_pem,
        }
        self._log = tempfile.TemporaryFile()  # stderr: GStreamer warnings, tracebacks
        try:
            self._process = await asyncio.create_subprocess_exec(
                PYTHON, "-u", "-c", SERVER, json.dumps(config),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=self._log,
            )  # fmt: skip
        except FileNotFoundError as error:
            await self._stop_and_read_log()
            raise RuntimeError(
                f"camera simulator needs {PYTHON}: apt-get install {PACKAGES}"
            ) from error
        assert self._process.stdout is not None
        line = b""
        with contextlib.suppress(TimeoutError):
            line = await asyncio.wait_for(
                self._process.stdout.readline(), READY_TIMEOUT_S
            )
        if not line.startswith(b"ready "):
            output = line + await self._stop_and_read_log()
            raise RuntimeError(
                "camera simulator (GStreamer RTSP server) did not start"
                f" (apt-get install {PACKAGES}?):\n{output.decode(errors='replace')}"
            )
        self.port = int(line.split()[1])

    async def stop(self) -> None:
        """Kill the server at once, like a camera losing power."""
        await self._stop_and_read_log()

    async def restart(self) -> None:
        """Stop, then start again on the same port (a camera reboot)."""
        await self.stop()
        await self.start()

    def freeze(self) -> None:
        """Stop sending without closing anything (SIGSTOP): a hung camera."""
        assert self._process is not None and self.running, "camera is not running"
        os.kill(self._process.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        """Resume a frozen camera (SIGCONT)."""
        assert self._process is not None and self.running, "camera is not running"
        os.kill(self._process.pid, signal.SIGCONT)

    async def _stop_and_read_log(self) -> bytes:
        process, self._process = self._process, None
        if process is not None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()  # SIGKILL also ends a frozen (SIGSTOPped) process
            await process.wait()
            # Read to EOF (the error line of a failed start): the transport then closes.
            assert process.stdout is not None
            rest = await process.stdout.read()
        else:
            rest = b""
        log, self._log = self._log, None
        if log is None:
            return rest
        log.seek(0)
        text = log.read()
        log.close()
        return rest + text


@contextlib.asynccontextmanager
async def start_camera(
    *,
    width: int = 640,
    height: int = 360,
    fps: int = 30,
    profile: str = "constrained-baseline",
    audio: Audio = None,
    username: str | None = None,
    password: str | None = None,
    auth: Auth = "digest",
    protocols: Protocols = "both",
    path: str = "/stream",
    inband_sps: bool = True,
    gop_s: float = 1.0,
    bitrate_kbps: int | None = None,
    session_timeout_s: int | None = None,
    tls_pem: str | None = None,
) -> AsyncIterator[Camera]:
    """Run a simulated H.264 RTSP camera on 127.0.0.1 for the duration of the block."""
    settings = CameraSettings(
        width=width,
        height=height,
        fps=fps,
        profile=profile,
        audio=audio,
        username=username,
        password=password,
        auth=auth,
        protocols=protocols,
        path=path,
        inband_sps=inband_sps,
        gop_s=gop_s,
        bitrate_kbps=bitrate_kbps,
        session_timeout_s=session_timeout_s,
        tls_pem=tls_pem,
    )
    camera = Camera(settings)
    await camera.start()
    try:
        yield camera
    finally:
        await camera.stop()
