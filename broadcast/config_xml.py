"""flashphoner.xml → Config, with errors and warnings that name the file and line.

The file is read with defusedxml's expat SAX parser: no DTD, so no entity expansion
(billion laughs) and no external entity (a file reading /etc/passwd). SAX, unlike
ElementTree, tells us the line of each start tag, so every message can point at it.
"""

from __future__ import annotations

import dataclasses
import difflib
import io
import os
from dataclasses import dataclass, field
from typing import Any
from xml.sax import SAXParseException
from xml.sax.handler import ContentHandler, feature_external_ges
from xml.sax.xmlreader import AttributesImpl, InputSource

from defusedxml import DefusedXmlException
from defusedxml.expatreader import DefusedExpatParser

from broadcast.config import (
    CLUSTER_ROLES,
    HOOK_FAILURE_POLICIES,
    LOG_FORMATS,
    LOG_LEVELS,
    MAX_BITRATE_KBPS,
    MIN_BITRATE_KBPS,
    RTSP_TRANSPORTS,
    Config,
    ConfigError,
    Parse,
    RtspCamera,
    RtspOptions,
    check_rtsp_url,
    check_stream_id,
    ice_url,
    integer_in,
    number_in,
    one_of,
    parse_bool,
    parse_directory,
    parse_existing_file,
    parse_hook_url,
    parse_ip,
    parse_node_id,
    parse_node_url,
    parse_origin,
    parse_port_range,
    parse_public_ip,
    parse_redis_url,
    parse_secret,
    seconds_in,
)

ROOT = "flashphoner"
CAMERA = "rtsp"
# A config file is a few kilobytes; anything this big is the wrong file.
MAX_CONFIG_BYTES = 1024 * 1024
MAX_LIMIT = 1_000_000


@dataclass
class Element:
    """One XML element and the line of its start tag."""

    tag: str
    attributes: dict[str, str]
    line: int
    text: str = ""
    children: list[Element] = field(default_factory=list)


class _TreeBuilder(ContentHandler):
    """Build Elements from SAX events, asking the parser for each start tag's line."""

    def __init__(self, parser: DefusedExpatParser) -> None:
        super().__init__()
        self._parser = parser
        self._open: list[Element] = []
        self.root: Element | None = None

    def startElement(self, name: str, attrs: AttributesImpl) -> None:
        element = Element(name, dict(attrs), self._parser.getLineNumber())
        if self._open:
            self._open[-1].children.append(element)
        else:
            self.root = element
        self._open.append(element)

    def endElement(self, name: str) -> None:
        self._open.pop()

    def characters(self, content: str) -> None:
        if self._open:
            self._open[-1].text += content


def read_xml(path: str) -> Element:
    """Parse `path` safely into Elements; raise ConfigError naming the line."""
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_CONFIG_BYTES + 1)
    except OSError as error:
        raise ConfigError(f"{path}: cannot read: {error.strerror or error}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES} bytes")
    parser = DefusedExpatParser(
        forbid_dtd=True, forbid_entities=True, forbid_external=True
    )
    parser.setFeature(feature_external_ges, False)
    builder = _TreeBuilder(parser)
    parser.setContentHandler(builder)
    source = InputSource(path)
    source.setByteStream(io.BytesIO(data))
    try:
        parser.parse(source)
    except SAXParseException as error:
        message = f"malformed XML: {error.getMessage()}"
        raise ConfigError(f"{path}:{error.getLineNumber()}: {message}") from None
    except DefusedXmlException:
        message = "<!DOCTYPE> is not allowed: no DTDs, entities or external references"
        raise ConfigError(f"{path}:{parser.getLineNumber()}: {message}") from None
    except LookupError as error:  # <?xml encoding="..."?> that Python does not know
        raise ConfigError(f"{path}:1: malformed XML: {error}") from None
    assert builder.root is not None  # expat rejects a document without an element
    return builder.root


@dataclass(frozen=True)
class Setting:
    """How one element maps to a Config field."""

    field: str
    parse: Parse
    repeat: bool = False  # the element may repeat; the field is a tuple
    path: bool = False  # a relative path is relative to the config file


_PORT = integer_in(1, 65535)
_LIMIT = integer_in(0, MAX_LIMIT, " (0: unlimited)")
_BITRATE = integer_in(MIN_BITRATE_KBPS, MAX_BITRATE_KBPS)

SETTINGS: dict[str, dict[str, Setting]] = {
    "server": {
        "ip": Setting("public_ip", parse_public_ip),
        "bind": Setting("host", parse_ip),
        "http_port": Setting("port", _PORT),
        "https_port": Setting("https_port", _PORT),
        "tls_certificate": Setting("tls_certificate", parse_existing_file, path=True),
        "tls_key": Setting("tls_key", parse_existing_file, path=True),
    },
    "http": {
        "cors_origin": Setting("cors_origins", parse_origin, repeat=True),
        "max_sdp_bytes": Setting("max_sdp_bytes", integer_in(1024, 1024 * 1024)),
    },
    "media": {
        "media_port": Setting("media_port", _PORT),
        "media_ports": Setting("media_ports", parse_port_range),
        "ice_tcp": Setting("ice_tcp", parse_bool),
        "workers": Setting("workers", integer_in(0, 256)),
        "start_bitrate_kbps": Setting("start_bitrate_kbps", _BITRATE),
        "max_bitrate_kbps": Setting("max_bitrate_kbps", _BITRATE),
        "simulcast": Setting("simulcast", parse_bool),
        "reconnect_grace_s": Setting("reconnect_grace_s", seconds_in(0, 3600)),
        "publisher_timeout_s": Setting("publisher_timeout_s", seconds_in(1, 600)),
    },
    "ice": {
        "stun_server": Setting("stun_servers", ice_url("stun"), repeat=True),
        "turn_server": Setting("turn_servers", ice_url("turn"), repeat=True),
        "turn_secret": Setting("turn_secret", parse_secret),
    },
    "auth": {
        "publish_key": Setting("publish_keys", parse_secret, repeat=True),
        "admin_key": Setting("admin_key", parse_secret),
        "token_secret": Setting("token_secret", parse_secret),
        "private_viewing": Setting("private_viewing", parse_bool),
    },
    "limits": {
        "max_streams": Setting("max_streams", _LIMIT),
        "max_viewers_per_stream": Setting("max_viewers_per_stream", _LIMIT),
        "max_viewers_total": Setting("max_viewers_total", _LIMIT),
        "sessions_per_client_per_minute": Setting(
            "sessions_per_client_per_minute", _LIMIT
        ),
    },
    "log": {
        "level": Setting("log_level", one_of(LOG_LEVELS)),
        "format": Setting("log_format", one_of(LOG_FORMATS)),
    },
    "metrics": {"enabled": Setting("metrics_enabled", parse_bool)},
    "cluster": {
        "redis": Setting("cluster_redis", parse_redis_url),
        "node_url": Setting("node_url", parse_node_url),
        "node_id": Setting("node_id", parse_node_id),
        "role": Setting("cluster_role", one_of(CLUSTER_ROLES)),
        "secret": Setting("cluster_secret", parse_secret),
        "linger_seconds": Setting("relay_linger_s", seconds_in(0, 3600)),
    },
    "recording": {
        "dir": Setting("recording_dir", parse_directory, path=True),
        "auto": Setting("record_all", parse_bool),
        "max_file_minutes": Setting(
            "recording_max_file_minutes", number_in(0, 10_000, "minutes (0: no limit)")
        ),
        "max_total_gb": Setting(
            "recording_max_total_gb", number_in(0, 1_000_000, "GB (0: no limit)")
        ),
        "keep_days": Setting(
            "recording_keep_days", number_in(0, 100_000, "days (0: forever)")
        ),
    },
    "hooks": {
        "publish_auth": Setting("hooks_publish_auth", parse_hook_url),
        "play_auth": Setting("hooks_play_auth", parse_hook_url),
        "events": Setting("hooks_events", parse_hook_url),
        "secret": Setting("hooks_secret", parse_secret),
        "timeout_seconds": Setting("hooks_timeout_s", seconds_in(0.1, 60)),
        "on_failure": Setting("hooks_on_failure", one_of(HOOK_FAILURE_POLICIES)),
    },
}
CLUSTER_FIELDS = tuple(setting.field for setting in SETTINGS["cluster"].values())
HOOK_URLS = ("hooks_publish_auth", "hooks_play_auth", "hooks_events")
CAMERA_ATTRIBUTES: dict[str, Parse] = {
    "id": check_stream_id,
    "url": check_rtsp_url,
    "always_on": parse_bool,
    "transport": one_of(RTSP_TRANSPORTS),
    "record": parse_bool,
    "tls_verify": parse_bool,
    "tls_ca": parse_existing_file,
}
CAMERA_PATHS = ("tls_ca",)  # relative to the config file, as other paths


def load_config(path: str) -> tuple[Config, list[str]]:
    """Read `path` into a Config; return it with warnings about unknown settings."""
    reader = _Reader(path)
    return reader.read(read_xml(path)), reader.warnings


class _Reader:
    """Walk the Elements of one file, collecting Config fields and warnings."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.directory = os.path.dirname(os.path.abspath(path))
        self.warnings: list[str] = []
        self.values: dict[str, Any] = {}
        self.lines: dict[str, int] = {}  # field → line of its first element

    def error(self, line: int, message: str) -> ConfigError:
        return ConfigError(f"{self.path}:{line}: {message}")

    def warn(self, line: int, message: str) -> None:
        self.warnings.append(f"{self.path}:{line}: {message}")

    def read(self, root: Element) -> Config:
        if root.tag != ROOT:
            raise self.error(
                root.line, f"the top element must be <{ROOT}>, got <{root.tag}>"
            )
        self.check_attributes(root, ())
        cameras: dict[str, RtspCamera] = {}
        for element in root.children:
            if element.tag == CAMERA:
                camera = self.camera(element, cameras)
                cameras[camera.id] = camera
            elif element.tag in SETTINGS:
                self.group(element)
            else:
                self.unknown(element, None)
        if cameras:
            self.values["cameras"] = tuple(cameras.values())
        self.values.setdefault(
            "recording_dir", os.path.join(self.directory, Config.recording_dir)
        )
        for name, value in self.values.items():
            if isinstance(value, list):
                self.values[name] = tuple(value)
        return self.check_together(dataclasses.replace(Config(), **self.values))

    def group(self, group: Element) -> None:
        self.check_attributes(group, ())
        if group.text.strip():
            self.warn(group.line, f"<{group.tag}> holds settings: its text is ignored")
        for element in group.children:
            setting = SETTINGS[group.tag].get(element.tag)
            if setting is None:
                self.unknown(element, group.tag)
                continue
            self.check_attributes(element, ())
            for child in element.children:
                self.warn(
                    child.line, f"<{element.tag}> holds a value: <{child.tag}> ignored"
                )
            value = self.value(element, setting)
            if setting.repeat:
                values = self.values.setdefault(setting.field, [])
                assert isinstance(values, list)
                values.append(value)
            elif setting.field in self.lines:
                first = self.lines[setting.field]
                raise self.error(
                    element.line,
                    f"<{element.tag}> is set twice (first on line {first})",
                )
            else:
                self.values[setting.field] = value
            self.lines.setdefault(setting.field, element.line)

    def value(self, element: Element, setting: Setting) -> object:
        text = element.text.strip()
        try:
            if setting.path:
                return setting.parse(os.path.join(self.directory, text) if text else "")
            return setting.parse(text)
        except ValueError as error:
            raise self.error(
                element.line, f'<{element.tag}> {error}, got "{text}"'
            ) from None

    def camera(self, element: Element, cameras: dict[str, RtspCamera]) -> RtspCamera:
        self.check_attributes(element, tuple(CAMERA_ATTRIBUTES))
        for child in element.children:
            self.warn(
                child.line, f"<{CAMERA}> takes attributes only: <{child.tag}> ignored"
            )
        values: dict[str, object] = {}
        for name, parse in CAMERA_ATTRIBUTES.items():
            if name not in element.attributes:
                continue
            text = element.attributes[name].strip()
            if name in CAMERA_PATHS and text:
                text = os.path.join(self.directory, text)
            try:
                values[name] = parse(text)
            except ValueError as error:
                message = f'<{CAMERA} {name}> {error}, got "{text}"'
                raise self.error(element.line, message) from None
        for required in ("id", "url"):
            if required not in values:
                raise self.error(
                    element.line, f"<{CAMERA}> needs a {required}= attribute"
                )
        camera_id = str(values["id"])
        if camera_id in cameras:
            raise self.error(element.line, f'<{CAMERA} id> "{camera_id}" is used twice')
        options = RtspOptions(
            always_on=bool(values.get("always_on", RtspOptions.always_on)),
            transport=str(values.get("transport", RtspOptions.transport)),
            record=bool(values.get("record", RtspOptions.record)),
            tls_verify=bool(values.get("tls_verify", RtspOptions.tls_verify)),
            tls_ca=str(values["tls_ca"]) if "tls_ca" in values else None,
        )
        return RtspCamera(camera_id, str(values["url"]), options)

    def check_attributes(self, element: Element, known: tuple[str, ...]) -> None:
        for name in element.attributes:
            if name not in known:
                match = difflib.get_close_matches(name, known, n=1)
                hint = f"; did you mean {match[0]}=?" if match else ""
                self.warn(
                    element.line, f"unknown attribute {name}= on <{element.tag}>{hint}"
                )

    def unknown(self, element: Element, group: str | None) -> None:
        """Warn about an element we do not know, naming the nearest one we do."""
        here = list(SETTINGS[group]) if group else [*SETTINGS, CAMERA]
        elsewhere = {
            name: other
            for other, names in SETTINGS.items()
            if other != group
            for name in names
        }
        if match := difflib.get_close_matches(element.tag, here, n=1):
            hint = f"; did you mean <{match[0]}>?"
        elif match := difflib.get_close_matches(element.tag, list(elsewhere), n=1):
            hint = f"; did you mean <{match[0]}> in <{elsewhere[match[0]]}>?"
        else:
            hint = ""
        self.warn(element.line, f"unknown setting <{element.tag}>{hint}")

    def check_together(self, config: Config) -> Config:
        """Check settings that depend on each other, pointing at the line to change."""
        lines = self.lines
        if "start_bitrate_kbps" not in lines:
            start = min(config.start_bitrate_kbps, config.max_bitrate_kbps)
            config = dataclasses.replace(config, start_bitrate_kbps=start)
        elif config.start_bitrate_kbps > config.max_bitrate_kbps:
            raise self.error(
                lines["start_bitrate_kbps"],
                "<start_bitrate_kbps> must not exceed <max_bitrate_kbps>"
                f' ({config.max_bitrate_kbps}), got "{config.start_bitrate_kbps}"',
            )
        tls = ("https_port", "tls_certificate", "tls_key")  # fields named as elements
        given = [name for name in tls if name in lines]
        if given and len(given) < len(tls):
            missing = " and ".join(f"<{name}>" for name in tls if name not in lines)
            raise self.error(lines[given[0]], f"<{given[0]}> needs {missing} too")
        if config.https_port == config.port:
            raise self.error(
                lines["https_port"], "<https_port> must differ from <http_port>"
            )
        cluster = [name for name in CLUSTER_FIELDS if name in lines]
        if "cluster_redis" in lines and "node_url" not in lines:
            raise self.error(
                lines["cluster_redis"],
                "<redis> needs <node_url> too: where browsers reach this node",
            )
        if cluster and "cluster_redis" not in lines:
            # `serve --cluster` may name the Redis; `check-config` alone cannot know.
            self.warn(
                lines[cluster[0]],
                "<cluster> settings apply only with <redis> (or serve --cluster)",
            )
        hooks = [name for name in HOOK_URLS if name in lines]
        if hooks and "hooks_secret" not in lines:
            self.warn(
                lines[hooks[0]],
                "<hooks> without <secret>: the receiver cannot tell our calls apart",
            )
        if config.private_viewing and not config.token_secret:
            raise self.error(
                lines["private_viewing"], "<private_viewing> needs <token_secret> too"
            )
        return config
