"""Server settings: a frozen, validated Config; its defaults run a usable server.

`config_xml.load_config("flashphoner.xml")` reads the file into one (and its
warnings); every setting and its default is listed in flashphoner.xml.example.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

ANY_ADDRESS = ("", "0.0.0.0", "::")

# Stream ids (a contract: docs/ARCHITECTURE.md); a camera's id is the id of its stream.
STREAM_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
RTSP_SCHEMES = ("rtsp", "rtsps")
RTSP_TRANSPORTS = ("tcp", "udp")
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("human", "json")
# A cluster node's part: `origin` takes publishers and feeds edges, `edge` carries
# viewers, `both` does both.
CLUSTER_ROLES = ("both", "origin", "edge")
# What an auth hook's outage (timeout, no connection, a 5xx) means: refuse or let in.
HOOK_FAILURE_POLICIES = ("deny", "allow")
NODE_ID_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
# What a publisher may be asked to send, bounds for the bitrate settings.
MIN_BITRATE_KBPS = 100
MAX_BITRATE_KBPS = 100_000


class ConfigError(Exception):
    """A setting is wrong; the message names the file and line: `file:line: what`."""


def check_stream_id(text: str) -> str:
    """Return `text` if it is a valid stream id, else raise ValueError saying why."""
    if not STREAM_ID_RE.fullmatch(text):
        raise ValueError("must be 1-64 letters, digits, '_' or '-'")
    return text


def _has_host(text: str, schemes: tuple[str, ...]) -> bool:
    """Whether `text` is a URL of one of `schemes` with a host and a valid port."""
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        return False
    return parts.scheme in schemes and bool(parts.hostname)


def check_rtsp_url(text: str) -> str:
    """Return `text` if it is an rtsp:// or rtsps:// URL with a host, else raise ValueError."""
    if not _has_host(text, RTSP_SCHEMES):
        raise ValueError("must be an rtsp:// or rtsps:// URL with a host")
    return text


# Value parsers: text → value, or ValueError saying what the value must be
# (the caller adds where and what: `file:line: <element> must be ..., got "text"`).
Parse = Callable[[str], object]


def integer_in(low: int, high: int, note: str = "") -> Parse:
    """Make a parser of whole numbers from `low` to `high`."""

    def parse(text: str) -> int:
        if not re.fullmatch(r"[0-9]{1,9}", text) or not low <= int(text) <= high:
            raise ValueError(f"must be {low}-{high}{note}")
        return int(text)

    return parse


def number_in(low: float, high: float, unit: str) -> Parse:
    """Make a parser of numbers (decimals allowed) from `low` to `high`."""

    def parse(text: str) -> float:
        if not re.fullmatch(r"[0-9]{1,9}(\.[0-9]{1,9})?", text) or not (
            low <= float(text) <= high
        ):
            raise ValueError(f"must be {low:g}-{high:g} {unit}")
        return float(text)

    return parse


def seconds_in(low: float, high: float) -> Parse:
    """Make a parser of durations in seconds from `low` to `high`."""
    return number_in(low, high, "seconds")


def one_of(choices: tuple[str, ...]) -> Parse:
    """Make a parser of one of `choices`, ignoring case."""

    def parse(text: str) -> str:
        if text.lower() not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return text.lower()

    return parse


BOOLEANS = {
    "true": True,
    "yes": True,
    "1": True,
    "false": False,
    "no": False,
    "0": False,
}


def parse_bool(text: str) -> bool:
    """Read true/false, yes/no or 1/0."""
    if text.lower() not in BOOLEANS:
        raise ValueError("must be true or false")
    return BOOLEANS[text.lower()]


def parse_ip(text: str) -> str:
    """Read an IPv4 or IPv6 address."""
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise ValueError("must be an IP address") from None


def parse_public_ip(text: str) -> str:
    """Read the address announced in ICE candidates: an IP peers can send to."""
    address = parse_ip(text)
    if ipaddress.ip_address(address).is_unspecified:
        raise ValueError("must be a specific IP address, not 0.0.0.0 or ::")
    return address


def parse_port_range(text: str) -> tuple[int, int]:
    """Read an inclusive UDP port range `FIRST-LAST`."""
    match = re.fullmatch(r"([0-9]{1,5})\s*-\s*([0-9]{1,5})", text)
    if not match or not 1 <= int(match[1]) <= int(match[2]) <= 65535:
        raise ValueError("must be FIRST-LAST with 1 <= FIRST <= LAST <= 65535")
    return int(match[1]), int(match[2])


def ice_url(scheme: str) -> Parse:
    """Make a parser of `stun:`/`stuns:` or `turn:`/`turns:` URLs."""

    # RFC 7064 (stun:, stuns:) and RFC 7065 (turn:, turns:, ?transport=).
    query = r"(\?transport=(udp|tcp))?" if scheme == "turn" else ""
    pattern = (
        rf"{scheme}s?:(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:([0-9]{{1,5}}))?{query}"
    )

    def parse(text: str) -> str:
        match = re.fullmatch(pattern, text)
        if not match or int(match[3] or 1) not in range(1, 65536):
            raise ValueError(f"must be a URL like {scheme}:host.example.org:3478")
        return text

    return parse


def parse_origin(text: str) -> str:
    """Read a CORS origin: `*` or scheme://host[:port] with no path."""
    parts = urlsplit(text)
    if text != "*" and not (
        parts.scheme in ("http", "https") and parts.netloc and parts.path == ""
    ):
        raise ValueError("must be * or an origin like https://example.org")
    return text


def parse_redis_url(text: str) -> str:
    """Read a redis:// or rediss:// URL with a host (and maybe a password, a db)."""
    if not _has_host(text, ("redis", "rediss")):
        raise ValueError("must be a URL like redis://:PASSWORD@HOST:6379/0")
    return text


def parse_node_url(text: str) -> str:
    """Read a node's base URL: http(s)://host[:port], no path; kept without a `/`."""
    parts = urlsplit(text)
    if (
        not _has_host(text, ("http", "https"))
        or parts.path not in ("", "/")
        or parts.query
        or parts.username
    ):
        raise ValueError("must be a URL like https://edge1.example.org:8443")
    return text.rstrip("/")


def parse_hook_url(text: str) -> str:
    """Read a hook's URL: http(s) with a host; no user:password (the secret signs)."""
    if not _has_host(text, ("http", "https")) or urlsplit(text).username:
        raise ValueError("must be a URL like https://backend.example.org/hooks")
    return text


def parse_node_id(text: str) -> str:
    """Read a node's name in its cluster."""
    if not NODE_ID_RE.fullmatch(text):
        raise ValueError("must be 1-64 letters, digits, '.', '_' or '-'")
    return text


def parse_secret(text: str) -> str:
    """Read a key or secret: any text but empty."""
    if not text:
        raise ValueError("must not be empty")
    return text


def parse_existing_file(path: str) -> str:
    """Read the path of a file that must exist (a certificate, a key)."""
    if not os.path.isfile(path):
        raise ValueError("must be an existing file")
    return path


def parse_directory(path: str) -> str:
    """Read a directory we may write to; it is made at first use if it is missing."""
    existing = path
    while existing and not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not path or not os.path.isdir(existing or "."):
        raise ValueError("must be a directory (or a path one can be made at)")
    if not os.access(existing or ".", os.W_OK):
        raise ValueError(f"must be writable: {existing} is not")
    return path


@dataclass(frozen=True)
class RtspOptions:
    """How a camera is pulled."""

    # False (the default): connect at the first viewer, let go a while after the last.
    # True: pull from start, so the keyframe cache is warm and a picture shows at once.
    always_on: bool = False
    # RTP over the RTSP TCP connection passes NAT and firewalls; UDP has less delay.
    transport: str = "tcp"
    # Record it from its first packet (it is then pulled from start, like always_on).
    record: bool = False
    # rtsps://: check the camera's certificate (against `tls_ca` if given, a PEM file
    # with the camera's own certificate or its CA; else the system's CAs) and name.
    tls_verify: bool = True
    tls_ca: str | None = None

    @property
    def keep_on(self) -> bool:
        """Pulled from start and never let go."""
        return self.always_on or self.record

    def __post_init__(self) -> None:
        if self.transport not in RTSP_TRANSPORTS:
            raise ValueError(f"transport must be tcp or udp, got {self.transport!r}")


@dataclass(frozen=True)
class RtspCamera:
    """An IP camera pulled over RTSP and published as stream `id`."""

    id: str
    url: str
    options: RtspOptions = field(default_factory=RtspOptions)

    def __post_init__(self) -> None:
        check_stream_id(self.id)
        check_rtsp_url(self.url)


@dataclass(frozen=True)
class Config:
    """Everything the server reads at start; the defaults run a usable server."""

    # <server>
    host: str = "0.0.0.0"
    port: int = 8080
    # Address announced in ICE candidates (NAT 1:1), when the server sits behind NAT.
    public_ip: str | None = None
    # HTTPS is served when a certificate and its key are configured.
    https_port: int | None = None
    tls_certificate: str | None = None
    tls_key: str | None = None

    # <http>
    cors_origins: tuple[str, ...] = ("*",)
    max_sdp_bytes: int = 64 * 1024

    # <media>
    # The one UDP port all sessions' media share (0: any free port, for tests).
    media_port: int = 8081
    # ICE-TCP (RFC 6544) on the same port number, for viewers whose UDP is blocked.
    ice_tcp: bool = True
    # Processes carrying viewers (0: one per core). Worker N (from 1) has its media on
    # media_port + N; the main process keeps HTTP, publishers and media_port.
    workers: int = 0
    # Inclusive UDP port range (first, last), one port per session, instead of the
    # shared port: for networks that need it. None: the shared port.
    media_ports: tuple[int, int] | None = None
    # Browsers publishing to us start at this bitrate and may climb to the maximum.
    # Chrome in its default (balanced) mode sends 720p only once its target passes
    # ~3 Mbit/s: starting at 4 Mbit/s gives native 1280x720 in ~2 s instead of ~4 s.
    start_bitrate_kbps: int = 4000
    max_bitrate_kbps: int = 6000
    # Take simulcast (several sizes of one camera) from publishers that offer it, and
    # let each viewer have the size it asks for (`?quality=`). False: the first only.
    simulcast: bool = True
    # A publisher that drops may come back within this time and keep its viewers.
    reconnect_grace_s: float = 30.0
    # A publisher that sends nothing for this long has gone (a closed laptop lid sends
    # no DTLS close): the stream turns `reconnecting` instead of waiting ~30 s for ICE.
    publisher_timeout_s: float = 10.0

    # <ice>: "stun:host:port" and "turn:host:port?transport=udp" URLs.
    stun_servers: tuple[str, ...] = field(default=())
    turn_servers: tuple[str, ...] = ()
    # TURN REST credentials (coturn `static-auth-secret`); None: no TURN credentials.
    turn_secret: str | None = None

    # <auth>: no publish key means open publishing.
    publish_keys: tuple[str, ...] = ()
    # Guards /api and /metrics; None: the admin API is closed.
    admin_key: str | None = None
    # Secret for signed, expiring publish and view tokens (broadcast/tokens.py).
    token_secret: str | None = None
    # Viewers need a view token (share links made at publish time carry one).
    private_viewing: bool = False

    # <limits>: 0 is unlimited.
    max_streams: int = 0
    max_viewers_per_stream: int = 0
    max_viewers_total: int = 0
    # Per client address and minute (burst: a third): publishes, refused requests and
    # sessions that never connect; also the cap on its sessions still connecting.
    sessions_per_client_per_minute: int = 300

    # <log>
    log_level: str = "info"
    log_format: str = "human"

    # <metrics>
    metrics_enabled: bool = True

    # <rtsp id= url=/>
    cameras: tuple[RtspCamera, ...] = ()

    # <recording>: files go to `recording_dir` (a config file's default: `recordings/`
    # beside it); `record_all` records every stream from its first packet.
    recording_dir: str = "recordings"
    record_all: bool = False
    # A new file at the first keyframe after this long (0: one file per broadcast).
    recording_max_file_minutes: float = 60.0
    # Oldest files are deleted past these (0: no limit).
    recording_max_total_gb: float = 0.0
    recording_keep_days: float = 0.0

    # <cluster>: None (the default) is one server on its own, no Redis needed.
    cluster_redis: str | None = None
    # Where browsers reach this node (viewers are redirected there) and its name.
    node_url: str | None = None
    node_id: str | None = None  # None: the host name and HTTP port
    cluster_role: str = "both"
    # What an edge shows its origin; None: one shared through Redis by the first node.
    cluster_secret: str | None = None
    # An edge keeps pulling a stream this long after its last viewer leaves.
    relay_linger_s: float = 30.0

    # <hooks>: the operator's back end, asked before a publish or a view (None: not
    # asked) and told what happened (broadcast/hooks/); `hooks_secret` signs each POST.
    hooks_publish_auth: str | None = None
    hooks_play_auth: str | None = None
    hooks_events: str | None = None
    hooks_secret: str | None = None
    hooks_timeout_s: float = 2.0
    hooks_on_failure: str = "deny"

    @property
    def clustered(self) -> bool:
        return self.cluster_redis is not None

    @property
    def node_name(self) -> str:
        """This node's id in its cluster."""
        return self.node_id or f"{socket.gethostname()}-{self.port}"

    @property
    def ice_addresses(self) -> list[str]:
        """Addresses to gather ICE candidates on; [] means every interface."""
        return [] if self.host in ANY_ADDRESS else [self.host]

    @property
    def processes(self) -> int:
        """Processes carrying viewers: `workers`, or when it is 0 one per core this
        server may run on (what `nproc` counts, as install.sh does)."""
        return self.workers or len(os.sched_getaffinity(0)) or 1
