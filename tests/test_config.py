"""flashphoner.xml: every setting read, every mistake named by file and line, CLI order."""

from __future__ import annotations

import json
import logging
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from broadcast import cli
from broadcast.cli import main
from broadcast.config import Config, ConfigError, RtspCamera, RtspOptions
from broadcast.config_xml import load_config
from broadcast.logs import JsonFormatter

EXAMPLE = Path(__file__).resolve().parent.parent / "flashphoner.xml.example"


@pytest.fixture
def write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Write flashphoner.xml in a fresh working directory; return its name as given."""
    monkeypatch.chdir(tmp_path)

    def write(body: str, name: str = "flashphoner.xml") -> str:
        Path(name).write_text(body)
        return name

    return write


def wrap(group: str, inner: str) -> str:
    """A file whose line 3 is `inner`, inside `<group>` (line 2)."""
    return f"<flashphoner>\n<{group}>\n{inner}\n</{group}>\n</flashphoner>\n"


def test_example_file_loads_to_the_defaults_without_warnings() -> None:
    config, warnings = load_config(str(EXAMPLE))
    assert warnings == []
    # A config file's recordings go beside it, not to the current directory.
    beside = str(EXAMPLE.parent / "recordings")
    assert config == replace(Config(), recording_dir=beside)


def test_example_file_passes_check_config(capsys: pytest.CaptureFixture[str]) -> None:
    main(["check-config", str(EXAMPLE)])
    assert capsys.readouterr().out == f"{EXAMPLE}: ok\n"


def test_example_optional_settings_load_when_uncommented(write: Any) -> None:
    Path("cert.pem").write_text("x")
    Path("key.pem").write_text("x")
    text = re.sub(r"<!-- (<[a-z].*/?>) -->", r"\1", EXAMPLE.read_text())
    text = re.sub(
        r">/etc/letsencrypt/live/example.org/fullchain.pem<", ">cert.pem<", text
    )
    text = re.sub(r">/etc/letsencrypt/live/example.org/privkey.pem<", ">key.pem<", text)
    text = text.replace(">/var/lib/broadcast/recordings<", ">rec<")
    Path("hall-camera.pem").write_text("x")
    config, warnings = load_config(write(text))
    assert warnings == []
    assert config.public_ip == "203.0.113.10"
    assert config.https_port == 8443
    assert config.media_ports == (40000, 40100)
    assert [camera.id for camera in config.cameras] == ["gate", "yard", "door", "hall"]
    assert config.cameras[3].options.tls_ca == str(Path("hall-camera.pem").resolve())
    assert config.cameras[2].options.record and config.cameras[2].options.keep_on
    assert config.recording_dir == str(Path("rec").resolve())
    assert config.record_all and config.recording_max_file_minutes == 60
    assert (config.recording_max_total_gb, config.recording_keep_days) == (100, 30)
    assert config.cluster_redis == "redis://:change-me@10.0.0.1:6379/0"
    assert (config.node_url, config.node_id) == (
        "https://edge1.example.org:8443",
        "edge1",
    )
    assert (config.cluster_role, config.relay_linger_s) == ("edge", 30.0)
    assert config.hooks_play_auth == "https://backend.example.org/broadcast/play"
    assert (config.hooks_secret, config.hooks_timeout_s) == ("change-me-three", 2)


def test_every_setting_is_read(write: Any) -> None:
    Path("tls").mkdir()
    Path("tls/cert.pem").write_text("x")
    Path("tls/key.pem").write_text("x")
    config, warnings = load_config(
        write(
            """<?xml version="1.0"?>
<flashphoner>
  <server>
    <ip>203.0.113.10</ip>
    <bind>127.0.0.1</bind>
    <http_port>9000</http_port>
    <https_port>9443</https_port>
    <tls_certificate>tls/cert.pem</tls_certificate>
    <tls_key>tls/key.pem</tls_key>
  </server>
  <http>
    <cors_origin>https://a.example.org</cors_origin>
    <cors_origin>http://b.example.org:8000</cors_origin>
    <max_sdp_bytes>32768</max_sdp_bytes>
  </http>
  <media>
    <media_port>9081</media_port>
    <media_ports> 40000-40100 </media_ports>
    <start_bitrate_kbps>1500</start_bitrate_kbps>
    <max_bitrate_kbps>2500</max_bitrate_kbps>
    <reconnect_grace_s>12.5</reconnect_grace_s>
    <publisher_timeout_s>4</publisher_timeout_s>
    <simulcast>no</simulcast>
  </media>
  <ice>
    <stun_server>stun:stun.example.org:3478</stun_server>
    <stun_server>stuns:[2001:db8::1]</stun_server>
    <turn_server>turn:turn.example.org:3478?transport=tcp</turn_server>
    <turn_secret>turn-secret</turn_secret>
  </ice>
  <auth>
    <publish_key>one</publish_key>
    <publish_key>two</publish_key>
    <admin_key>admin</admin_key>
  </auth>
  <limits>
    <max_streams>5</max_streams>
    <max_viewers_per_stream>100</max_viewers_per_stream>
    <max_viewers_total>300</max_viewers_total>
  </limits>
  <log><level>DEBUG</level><format>json</format></log>
  <metrics><enabled>no</enabled></metrics>
  <rtsp id="gate" url="rtsp://user:pass@192.0.2.7/stream1"/>
  <rtsp id="yard_2" url="rtsps://cam.example.org:322/live" always_on="0"
        transport="udp" record="yes" tls_verify="false"/>
  <recording>
    <dir>rec/talks</dir>
    <auto>true</auto>
    <max_file_minutes>0.5</max_file_minutes>
    <max_total_gb>2.5</max_total_gb>
    <keep_days>7</keep_days>
  </recording>
</flashphoner>
"""
        )
    )
    assert warnings == []
    assert config == Config(
        host="127.0.0.1",
        port=9000,
        public_ip="203.0.113.10",
        https_port=9443,
        tls_certificate=str(Path("tls/cert.pem").resolve()),
        tls_key=str(Path("tls/key.pem").resolve()),
        cors_origins=("https://a.example.org", "http://b.example.org:8000"),
        max_sdp_bytes=32768,
        media_port=9081,
        media_ports=(40000, 40100),
        start_bitrate_kbps=1500,
        max_bitrate_kbps=2500,
        reconnect_grace_s=12.5,
        publisher_timeout_s=4.0,
        simulcast=False,
        stun_servers=("stun:stun.example.org:3478", "stuns:[2001:db8::1]"),
        turn_servers=("turn:turn.example.org:3478?transport=tcp",),
        turn_secret="turn-secret",
        publish_keys=("one", "two"),
        admin_key="admin",
        max_streams=5,
        max_viewers_per_stream=100,
        max_viewers_total=300,
        log_level="debug",
        log_format="json",
        metrics_enabled=False,
        cameras=(
            RtspCamera("gate", "rtsp://user:pass@192.0.2.7/stream1"),
            RtspCamera(
                "yard_2",
                "rtsps://cam.example.org:322/live",
                RtspOptions(
                    always_on=False, transport="udp", record=True, tls_verify=False
                ),
            ),
        ),
        recording_dir=str(Path("rec/talks").resolve()),
        record_all=True,
        recording_max_file_minutes=0.5,
        recording_max_total_gb=2.5,
        recording_keep_days=7.0,
    )
    assert config.ice_addresses == ["127.0.0.1"]


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("true", True),
        ("YES", True),
        ("1", True),
        ("false", False),
        ("No", False),
        ("0", False),
    ],
)
def test_booleans_read_true_false_yes_no_1_0(
    write: Any, text: str, value: bool
) -> None:
    config, _ = load_config(write(wrap("metrics", f"<enabled>{text}</enabled>")))
    assert config.metrics_enabled is value


def test_max_bitrate_below_the_default_start_lowers_the_start(write: Any) -> None:
    config, _ = load_config(
        write(wrap("media", "<max_bitrate_kbps>2000</max_bitrate_kbps>"))
    )
    assert (config.start_bitrate_kbps, config.max_bitrate_kbps) == (2000, 2000)


BAD_VALUES = [
    ("server", "<http_port>80a</http_port>", '<http_port> must be 1-65535, got "80a"'),
    (
        "server",
        "<http_port>70000</http_port>",
        '<http_port> must be 1-65535, got "70000"',
    ),
    ("server", "<ip>300.1.2.3</ip>", '<ip> must be an IP address, got "300.1.2.3"'),
    (
        "server",
        "<ip>0.0.0.0</ip>",
        "<ip> must be a specific IP address, not 0.0.0.0 or ::",
    ),
    (
        "server",
        "<bind>localhost</bind>",
        '<bind> must be an IP address, got "localhost"',
    ),
    (
        "server",
        "<tls_key>nope.pem</tls_key>",
        '<tls_key> must be an existing file, got "nope.pem"',
    ),
    (
        "http",
        "<cors_origin>example.org</cors_origin>",
        "<cors_origin> must be * or an origin",
    ),
    (
        "http",
        "<max_sdp_bytes>10</max_sdp_bytes>",
        '<max_sdp_bytes> must be 1024-1048576, got "10"',
    ),
    (
        "media",
        "<media_ports>5000-4000</media_ports>",
        "<media_ports> must be FIRST-LAST",
    ),
    (
        "media",
        "<max_bitrate_kbps>-5</max_bitrate_kbps>",
        "<max_bitrate_kbps> must be 100-100000",
    ),
    (
        "media",
        "<reconnect_grace_s>soon</reconnect_grace_s>",
        "<reconnect_grace_s> must be 0-3600",
    ),
    (
        "media",
        "<publisher_timeout_s>0</publisher_timeout_s>",
        "<publisher_timeout_s> must be 1-600",
    ),
    (
        "ice",
        "<stun_server>stun.example.org</stun_server>",
        "<stun_server> must be a URL like stun:",
    ),
    (
        "ice",
        "<turn_server>stun:x.org</turn_server>",
        "<turn_server> must be a URL like turn:",
    ),
    ("auth", "<publish_key> </publish_key>", '<publish_key> must not be empty, got ""'),
    (
        "limits",
        "<max_streams>-1</max_streams>",
        "<max_streams> must be 0-1000000 (0: unlimited)",
    ),
    (
        "log",
        "<level>verbose</level>",
        '<level> must be one of debug, info, warning, error, got "v',
    ),
    ("log", "<format>xml</format>", '<format> must be one of human, json, got "xml"'),
    (
        "metrics",
        "<enabled>maybe</enabled>",
        '<enabled> must be true or false, got "maybe"',
    ),
    (
        "recording",
        "<max_total_gb>-1</max_total_gb>",
        '<max_total_gb> must be 0-1e+06 GB (0: no limit), got "-1"',
    ),
    (
        "hooks",
        "<events>ftp://backend.example.org/x</events>",
        '<events> must be a URL like https://backend.example.org/hooks, got "ftp:',
    ),
    (
        "hooks",
        "<play_auth>https://user:pw@backend.example.org/</play_auth>",
        "<play_auth> must be a URL like https://",
    ),
    ("hooks", "<on_failure>maybe</on_failure>", "<on_failure> must be one of deny"),
    ("hooks", "<timeout_seconds>0</timeout_seconds>", "<timeout_seconds> must be 0.1"),
    (
        "recording",
        "<keep_days>a week</keep_days>",
        '<keep_days> must be 0-100000 days (0: forever), got "a week"',
    ),
    (
        "recording",
        "<dir>flashphoner.xml/rec</dir>",
        "<dir> must be a directory (or a path one can be made at)",
    ),
]


@pytest.mark.parametrize(("group", "inner", "message"), BAD_VALUES)
def test_bad_value_names_file_line_and_element(
    write: Any, group: str, inner: str, message: str
) -> None:
    with pytest.raises(ConfigError) as error:
        load_config(write(wrap(group, inner)))
    assert str(error.value).startswith(f"flashphoner.xml:3: {message}")


def test_bad_port_message_is_exactly_file_line_element_range_and_value(
    write: Any,
) -> None:
    body = "<flashphoner>\n" + "\n" * 11 + "<server>\n<http_port>80a</http_port>\n"
    with pytest.raises(ConfigError) as error:
        load_config(write(body + "</server>\n</flashphoner>\n"))
    assert (
        str(error.value) == 'flashphoner.xml:14: <http_port> must be 1-65535, got "80a"'
    )


BAD_CAMERAS = [
    (
        '<rtsp id="a b" url="rtsp://h/s"/>',
        "<rtsp id> must be 1-64 letters, digits, '_' or '-', got \"a b\"",
    ),
    (
        '<rtsp id="gate" url="http://h/s"/>',
        '<rtsp url> must be an rtsp:// or rtsps:// URL with a host, got "http://h/s"',
    ),
    (
        '<rtsp id="gate" url="rtsp:///s"/>',
        "<rtsp url> must be an rtsp:// or rtsps:// URL",
    ),
    ('<rtsp id="gate"/>', "<rtsp> needs a url= attribute"),
    ('<rtsp url="rtsp://h/s"/>', "<rtsp> needs a id= attribute"),
    (
        '<rtsp id="gate" url="rtsp://h/s" always_on="sometimes"/>',
        "<rtsp always_on> must be true or false",
    ),
    (
        '<rtsp id="gate" url="rtsp://h/s" transport="sctp"/>',
        "<rtsp transport> must be one of tcp, udp",
    ),
]


@pytest.mark.parametrize(("element", "message"), BAD_CAMERAS)
def test_bad_camera_names_file_line_and_attribute(
    write: Any, element: str, message: str
) -> None:
    with pytest.raises(ConfigError) as error:
        load_config(write(f"<flashphoner>\n\n{element}\n</flashphoner>\n"))
    assert str(error.value).startswith(f"flashphoner.xml:3: {message}")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            '<flashphoner>\n<rtsp id="a" url="rtsp://h/1"/>\n<rtsp id="a" url="rtsp://h/2"/>\n',
            'flashphoner.xml:3: <rtsp id> "a" is used twice',
        ),
        (
            wrap(
                "server", "<http_port>1</http_port>\n<http_port>2</http_port>"
            ).replace("</flashphoner>\n", ""),
            "flashphoner.xml:4: <http_port> is set twice (first on line 3)",
        ),
        (
            "<flashphoner>\n<media>\n<start_bitrate_kbps>3000</start_bitrate_kbps>\n"
            "<max_bitrate_kbps>2000</max_bitrate_kbps>\n</media>\n",
            "flashphoner.xml:3: <start_bitrate_kbps> must not exceed <max_bitrate_kbps>"
            ' (2000), got "3000"',
        ),
        (
            wrap("server", "<https_port>8443</https_port>").replace(
                "</flashphoner>\n", ""
            ),
            "flashphoner.xml:3: <https_port> needs <tls_certificate> and <tls_key> too",
        ),
    ],
)
def test_settings_that_conflict_name_the_line_to_change(
    write: Any, body: str, message: str
) -> None:
    with pytest.raises(ConfigError) as error:
        load_config(write(body + "</flashphoner>\n"))
    assert str(error.value) == message


def test_https_port_must_differ_from_http_port(write: Any) -> None:
    Path("c.pem").write_text("x")
    inner = (
        "<http_port>8443</http_port>\n<https_port>8443</https_port>\n"
        "<tls_certificate>c.pem</tls_certificate><tls_key>c.pem</tls_key>"
    )
    with pytest.raises(ConfigError) as error:
        load_config(write(wrap("server", inner)))
    assert (
        str(error.value)
        == "flashphoner.xml:4: <https_port> must differ from <http_port>"
    )


def test_wrong_top_element_is_an_error(write: Any) -> None:
    with pytest.raises(ConfigError) as error:
        load_config(write("<?xml version='1.0'?>\n<config/>\n"))
    assert (
        str(error.value)
        == "flashphoner.xml:2: the top element must be <flashphoner>, got <config>"
    )


def test_malformed_xml_gives_line_and_expat_message(write: Any) -> None:
    with pytest.raises(ConfigError) as error:
        load_config(write(wrap("server", "<http_port>8080</http_prot>")))
    assert str(error.value) == "flashphoner.xml:3: malformed XML: mismatched tag"


BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE flashphoner [
  <!ENTITY lol "lol">
  <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
  <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
]>
<flashphoner><auth><publish_key>&lol3;</publish_key></auth></flashphoner>
"""
EXTERNAL_ENTITY = """<?xml version="1.0"?>
<!DOCTYPE flashphoner [<!ENTITY key SYSTEM "file:///etc/passwd">]>
<flashphoner><auth><publish_key>&key;</publish_key></auth></flashphoner>
"""
EXTERNAL_DTD = """<?xml version="1.0"?>
<!DOCTYPE flashphoner SYSTEM "http://192.0.2.1/evil.dtd">
<flashphoner/>
"""


@pytest.mark.parametrize("body", [BILLION_LAUGHS, EXTERNAL_ENTITY, EXTERNAL_DTD])
def test_entities_and_dtds_are_rejected(write: Any, body: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_config(write(body))
    assert str(error.value) == (
        "flashphoner.xml:2: <!DOCTYPE> is not allowed: no DTDs, entities or external references"
    )


def test_undeclared_entity_is_malformed_xml(write: Any) -> None:
    with pytest.raises(ConfigError) as error:
        load_config(write(wrap("auth", "<publish_key>&key;</publish_key>")))
    assert str(error.value) == "flashphoner.xml:3: malformed XML: undefined entity"


def test_missing_file_is_a_one_line_error() -> None:
    with pytest.raises(ConfigError) as error:
        load_config("/nonexistent/flashphoner.xml")
    assert (
        str(error.value)
        == "/nonexistent/flashphoner.xml: cannot read: No such file or directory"
    )


def test_unknown_settings_warn_with_the_nearest_known_name(write: Any) -> None:
    body = """<flashphoner>
<server>
<http_prot>8080</http_prot>
<max_bitrate_kbps>2000</max_bitrate_kbps>
<colour>blue</colour>
</server>
<limts/>
<rtsp id="gate" url="rtsp://h/s" alwayson="false"/>
<auth unit="x"/>
</flashphoner>
"""
    config, warnings = load_config(write(body))
    assert warnings == [
        "flashphoner.xml:3: unknown setting <http_prot>; did you mean <http_port>?",
        "flashphoner.xml:4: unknown setting <max_bitrate_kbps>;"
        " did you mean <max_bitrate_kbps> in <media>?",
        "flashphoner.xml:5: unknown setting <colour>",
        "flashphoner.xml:7: unknown setting <limts>; did you mean <limits>?",
        "flashphoner.xml:8: unknown attribute alwayson= on <rtsp>; did you mean always_on=?",
        "flashphoner.xml:9: unknown attribute unit= on <auth>",
    ]
    assert config.port == Config.port
    assert config.max_bitrate_kbps == Config.max_bitrate_kbps


def test_check_config_prints_warnings_then_ok(
    write: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    main(["check-config", write(wrap("log", "<levle>info</levle>"))])
    out, err = capsys.readouterr()
    assert out == "flashphoner.xml: ok\n"
    assert err == "flashphoner.xml:3: unknown setting <levle>; did you mean <level>?\n"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            wrap("server", "<http_port>80a</http_port>"),
            'flashphoner.xml:3: <http_port> must be 1-65535, got "80a"',
        ),
        (None, "flashphoner.xml: cannot read: No such file or directory"),
    ],
)
def test_check_config_prints_the_error_and_exits_1(
    write: Any, capsys: pytest.CaptureFixture[str], body: str | None, message: str
) -> None:
    if body is not None:
        write(body)
    with pytest.raises(SystemExit) as exit_:
        main(["check-config", "flashphoner.xml"])
    assert exit_.value.code == 1
    out, err = capsys.readouterr()
    assert (out, err) == ("", message + "\n")


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[Config]:
    """Run `serve` up to the point it would start: record the Config it would serve."""
    configs: list[Config] = []
    monkeypatch.setattr(cli, "run", configs.append)
    monkeypatch.setattr(cli, "_configure_logging", lambda config: None)
    return configs


def test_serve_without_config_runs_on_the_defaults(served: list[Config]) -> None:
    main(["serve"])
    assert served == [Config()]


def test_serve_flags_override_the_config_file(write: Any, served: list[Config]) -> None:
    path = write(
        """<flashphoner>
<server><bind>127.0.0.1</bind><http_port>9000</http_port><ip>192.0.2.1</ip></server>
<auth><publish_key>from-file</publish_key></auth>
<media><start_bitrate_kbps>3000</start_bitrate_kbps></media>
<log><level>debug</level></log>
<rtsp id="file_cam" url="rtsp://h/1"/>
</flashphoner>
"""
    )
    main(["serve", "--config", path])
    ports = ["--port", "9100", "--media-port", "0"]
    main(["serve", "--config", path, *ports, "--public-ip", "203.0.113.10"])
    keys = ["--publish-key", "a", "--publish-key", "b"]
    rest = ["--rtsp", "cam=rtsp://h/2", "--max-bitrate", "2000", "--log-level", "error"]
    main(["serve", "--config", path, *keys, *rest])
    from_file, overridden, lists = served
    assert (from_file.host, from_file.port, from_file.public_ip) == (
        "127.0.0.1",
        9000,
        "192.0.2.1",
    )
    assert from_file.publish_keys == ("from-file",)
    assert from_file.log_level == "debug"
    # Only the flags given override; the rest still comes from the file.
    assert from_file.media_port == 8081
    assert overridden == replace(
        from_file, port=9100, public_ip="203.0.113.10", media_port=0
    )
    assert lists.publish_keys == ("a", "b")
    assert lists.cameras == (RtspCamera("cam", "rtsp://h/2"),)
    assert (lists.start_bitrate_kbps, lists.max_bitrate_kbps) == (2000, 2000)
    assert lists.log_level == "error"
    assert lists.host == "127.0.0.1"


def test_serve_record_flags(write: Any, served: list[Config]) -> None:
    path = write("<flashphoner/>")
    main(["serve", "--config", path])
    main(["serve", "--config", path, "--record", "--recording-dir", "talks"])
    plain, recording = served
    assert not plain.record_all
    assert plain.recording_dir == str(Path(path).resolve().parent / "recordings")
    assert recording.record_all and recording.recording_dir == "talks"


def test_serve_with_a_missing_config_file_exits_1_with_one_line(
    served: list[Config], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["serve", "--config", "/nonexistent/flashphoner.xml"])
    assert exit_.value.code == 1
    assert capsys.readouterr().err == (
        "/nonexistent/flashphoner.xml: cannot read: No such file or directory\n"
    )
    assert served == []


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--rtsp", "gate"], 'argument --rtsp: must be ID=URL, got "gate"'),
        (["--rtsp", "a b=rtsp://h/s"], "argument --rtsp: ID must be 1-64 letters"),
        (["--rtsp", "gate=http://h/s"], "argument --rtsp: URL must be an rtsp://"),
        (
            ["--public-ip", "nowhere"],
            'argument --public-ip: must be an IP address, got "nowhere"',
        ),
        (["--port", "0"], 'argument --port: must be 1-65535, got "0"'),
        (["--media-port", "65536"], "argument --media-port: must be 0-65535, got"),
    ],
)
def test_serve_rejects_bad_flags(
    served: list[Config],
    capsys: pytest.CaptureFixture[str],
    flags: list[str],
    message: str,
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["serve", *flags])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_json_log_format_writes_one_object_per_line() -> None:
    record = logging.LogRecord(
        "broadcast.x", logging.WARNING, "f.py", 1, "hi %s", ("you",), None
    )
    assert json.loads(JsonFormatter().format(record)) == {
        "time": JsonFormatter().formatTime(record),
        "level": "warning",
        "logger": "broadcast.x",
        "message": "hi you",
    }


def test_a_cluster_needs_its_redis_and_the_node_url(write: Any) -> None:
    _, warnings = load_config(write(wrap("cluster", "<role>edge</role>")))
    assert warnings == [
        "flashphoner.xml:3: <cluster> settings apply only with <redis> "
        "(or serve --cluster)"
    ]
    with pytest.raises(ConfigError) as error:
        load_config(write(wrap("cluster", "<redis>redis://10.0.0.1</redis>")))
    assert str(error.value) == (
        "flashphoner.xml:3: <redis> needs <node_url> too: where browsers reach this node"
    )
    for element, value in (
        ("redis", "http://10.0.0.1:6379"),
        ("node_url", "https://edge1.example.org/path"),
        ("role", "relay"),
        ("node_id", "has space"),
    ):
        with pytest.raises(ConfigError, match=f"<{element}> must be"):
            load_config(write(wrap("cluster", f"<{element}>{value}</{element}>")))


def test_cluster_flags_join_a_cluster_and_need_the_node_url(
    served: list[Config], capsys: pytest.CaptureFixture[str]
) -> None:
    main(
        [
            "serve",
            "--cluster",
            "redis://:pw@127.0.0.1:6379/0",
            "--node-url",
            "http://127.0.0.1:9000/",
            "--role",
            "edge",
        ]
    )
    (config,) = served
    assert config.cluster_redis == "redis://:pw@127.0.0.1:6379/0"
    assert (config.node_url, config.cluster_role) == ("http://127.0.0.1:9000", "edge")
    with pytest.raises(SystemExit):
        main(["serve", "--cluster", "redis://127.0.0.1"])
    assert "--cluster needs --node-url" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["serve", "--role", "edge"])
    assert "go with --cluster" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["origin.xml", "edge.xml"])
def test_the_cluster_examples_pass_check_config(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = EXAMPLE.parent / "deploy" / "cluster" / name
    main(["check-config", str(path)])
    assert capsys.readouterr().out == f"{path}: ok\n"


def test_hooks_are_read_and_check_config_names_a_bad_url(
    write: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    inner = """<publish_auth>http://127.0.0.1:9000/publish</publish_auth>
<play_auth>https://backend.example.org/play?site=1</play_auth>
<events>http://[::1]:9000/events</events>
<secret>hook-secret-1</secret>
<timeout_seconds>0.5</timeout_seconds>
<on_failure>ALLOW</on_failure>"""
    config, warnings = load_config(write(wrap("hooks", inner)))
    assert warnings == []
    assert config.hooks_publish_auth == "http://127.0.0.1:9000/publish"
    assert config.hooks_play_auth == "https://backend.example.org/play?site=1"
    assert config.hooks_events == "http://[::1]:9000/events"
    assert (config.hooks_secret, config.hooks_timeout_s) == ("hook-secret-1", 0.5)
    assert config.hooks_on_failure == "allow"
    _, warnings = load_config(write(wrap("hooks", "<events>http://a.org/</events>")))
    assert warnings == [
        "flashphoner.xml:3: <hooks> without <secret>: the receiver cannot tell our "
        "calls apart"
    ]
    write(
        wrap("hooks", "<secret>s3cret-hook</secret>\n<play_auth>http:///x</play_auth>")
    )
    with pytest.raises(SystemExit):
        main(["check-config", "flashphoner.xml"])
    out, err = capsys.readouterr()
    assert err == (
        "flashphoner.xml:4: <play_auth> must be a URL like "
        'https://backend.example.org/hooks, got "http:///x"\n'
    )
    assert "s3cret-hook" not in out + err
