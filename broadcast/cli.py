"""The `broadcast` command: serve, check-config, token, doctor, loadtest, version."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import sys
from collections.abc import Callable
from typing import Any, NoReturn

from broadcast import __version__, tokens
from broadcast.config import (
    CLUSTER_ROLES,
    LOG_LEVELS,
    MAX_BITRATE_KBPS,
    MIN_BITRATE_KBPS,
    Config,
    ConfigError,
    RtspCamera,
    check_rtsp_url,
    check_stream_id,
    integer_in,
    parse_directory,
    parse_node_id,
    parse_node_url,
    parse_public_ip,
    parse_redis_url,
    seconds_in,
)
from broadcast.config_xml import load_config
from broadcast.doctor import run_checks
from broadcast.loadtest import run as loadtest
from broadcast.loadtest.report import format_result
from broadcast.logs import configure_logging
from broadcast.server import run


def _argument(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """Turn a config value parser into an argparse type: same rules, same words."""

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(f'{error}, got "{text}"') from None

    return convert


def _camera(text: str) -> RtspCamera:
    camera_id, equals, url = text.partition("=")
    if not equals:
        raise ValueError("must be ID=URL")
    for what, check, value in (
        ("ID", check_stream_id, camera_id),
        ("URL", check_rtsp_url, url),
    ):
        try:
            check(value)
        except ValueError as error:
            raise ValueError(f"{what} {error}") from None
    return RtspCamera(camera_id, url)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="broadcast", description="One-to-many live broadcasting server."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    # Every serve flag defaults to None: only a flag given overrides the config file.
    serve = commands.add_parser(
        "serve", help="run the server", description="Flags override the config file."
    )
    serve.add_argument(
        "--config", metavar="FILE", help="read settings from FILE (flashphoner.xml)"
    )
    serve.add_argument("--host", help=f"address to bind (default {Config.host})")
    serve.add_argument(
        "--port", type=_argument(integer_in(1, 65535)), help="HTTP port (default 8080)"
    )
    serve.add_argument(
        "--media-port",
        type=_argument(integer_in(0, 65535)),
        metavar="PORT",
        help="the UDP port all media shares (default 8081; 0: any free port)",
    )
    serve.add_argument(
        "--workers",
        type=_argument(integer_in(0, 256)),
        metavar="N",
        help="processes carrying viewers (default 0: one per core)",
    )
    serve.add_argument(
        "--public-ip",
        type=_argument(parse_public_ip),
        metavar="IP",
        help="public address announced in ICE candidates, behind NAT",
    )
    serve.add_argument(
        "--publish-key",
        action="append",
        help="require this key to publish (may repeat; replaces the file's keys;"
        " default: open publishing)",
    )
    serve.add_argument(
        "--rtsp",
        action="append",
        type=_argument(_camera),
        metavar="ID=URL",
        help="pull an RTSP camera as stream ID (may repeat; replaces the file's cameras)",
    )
    serve.add_argument(
        "--max-bitrate",
        type=_argument(integer_in(MIN_BITRATE_KBPS, MAX_BITRATE_KBPS)),
        metavar="KBPS",
        help="highest video bitrate a publisher is allowed"
        f" (default {Config.max_bitrate_kbps})",
    )
    serve.add_argument("--log-level", choices=LOG_LEVELS)
    serve.add_argument(
        "--cluster",
        type=_argument(parse_redis_url),
        metavar="REDIS_URL",
        help="join the cluster of this Redis: redis://[:PASSWORD@]HOST:6379/0",
    )
    serve.add_argument(
        "--node-url",
        type=_argument(parse_node_url),
        metavar="URL",
        help="where browsers reach this node, e.g. https://edge1.example.org:8443"
        " (needed with --cluster)",
    )
    serve.add_argument(
        "--node-id",
        type=_argument(parse_node_id),
        metavar="ID",
        help="this node's name in the cluster (default: host name and HTTP port)",
    )
    serve.add_argument(
        "--role",
        choices=CLUSTER_ROLES,
        help="origin: publishers only; edge: viewers only; both (the default)",
    )
    serve.add_argument(
        "--record",
        action="store_true",
        help="record every stream from its first packet (<recording><auto>)",
    )
    serve.add_argument(
        "--recording-dir",
        type=_argument(parse_directory),
        metavar="DIR",
        help="where recordings go (default: recordings/ beside the config file,"
        " else in the current directory)",
    )
    check = commands.add_parser(
        "check-config",
        help="check a config file and exit 1 if it is wrong",
        description="Read FILE as `serve --config FILE` would; print what is wrong"
        " with the line it is on and exit 1, or say the file is good.",
    )
    check.add_argument("file", metavar="FILE", help="the config file (flashphoner.xml)")
    token = commands.add_parser(
        "token",
        help="mint a signed token to publish or watch one stream",
        description="Print a token signed with the config's <token_secret>: a publish"
        " token goes where a publish key would, a view token in the viewer link as"
        " ?token=.",
    )
    token.add_argument("purpose", choices=[tokens.PUBLISH, tokens.VIEW])
    token.add_argument("stream_id", metavar="STREAM_ID")
    token.add_argument(
        "--config", metavar="FILE", required=True, help="holds <token_secret>"
    )
    token.add_argument(
        "--ttl",
        type=int,
        default=3600,
        metavar="SECONDS",
        help="lifetime (default 3600)",
    )
    doctor = commands.add_parser(
        "doctor",
        help="check this server's network set-up (exit 1 on a problem)",
        description="Run on the server, with its config: checks the public <ip>"
        " against this host's addresses, the HTTP/HTTPS ports, the media ports (UDP"
        " and ICE-TCP, one per process), the certificate, and whether each STUN/TURN"
        " server answers. Prints one line per finding (OK, WARN, FAIL); exits 1 on a"
        " FAIL.",
    )
    doctor.add_argument("--config", metavar="FILE", help="read settings from FILE")
    _add_loadtest(commands)
    commands.add_parser("version", help="print the version")
    return parser


def _add_loadtest(commands: Any) -> None:
    test = commands.add_parser(
        "loadtest",
        help="watch a stream on this machine with many light viewers and report",
        description="Join N viewers that decode nothing, measure what they receive"
        " over --duration seconds, then leave.",
    )
    test.add_argument(
        "--url",
        required=True,
        type=_argument(_loopback_url),
        help="WHEP URL on this machine, e.g. http://127.0.0.1:8080/whep/<id>",
    )
    test.add_argument(
        "--viewers",
        required=True,
        type=_argument(integer_in(1, loadtest.MAX_VIEWERS)),
        metavar="N",
    )
    most = loadtest.MAX_DURATION_S
    test.add_argument(
        "--duration",
        required=True,
        type=_argument(seconds_in(0.1, most)),
        metavar="S",
        help="seconds measured, once every viewer has joined",
    )
    test.add_argument(
        "--ramp-s",
        type=_argument(seconds_in(0, most)),
        metavar="R",
        help="spread the joins over R seconds (default: 20 joins a second)",
    )
    test.add_argument(
        "--settle-s",
        type=_argument(seconds_in(0, most)),
        default=2.0,
        metavar="S",
        help="wait after the last join before measuring (default 2)",
    )
    test.add_argument(
        "--connect-timeout",
        type=_argument(seconds_in(1, 120)),
        default=10.0,
        metavar="S",
        help="give up on a viewer not connected within S seconds (default 10)",
    )
    test.add_argument(
        "--server-pid",
        type=int,
        metavar="PID",
        help="also report this server process's CPU and memory over the window",
    )
    test.add_argument(
        "--latency-samples",
        type=_argument(integer_in(0, 100_000)),
        default=0,
        metavar="N",
        help="keep N (payload digest, arrival time) pairs of video packets in the"
        " JSON output, for matching with a publisher's send times",
    )
    test.add_argument(
        "--loss",
        type=_argument(_loss_percent),
        default=0.0,
        metavar="PCT",
        help="drop PCT %% of the RTP each viewer receives; viewers NACK the gaps and"
        " send PLI for video they cannot recover (default 0)",
    )
    test.add_argument("--json", action="store_true", help="print one JSON object")


def _loss_percent(text: str) -> float:
    value = float(text)
    if not 0 <= value < 100:
        raise ValueError("must be 0-100 %, below 100")
    return value


def _loopback_url(text: str) -> str:
    loadtest.loopback_address(text)
    return text


def _loadtest(args: argparse.Namespace) -> None:
    ramp_s = args.viewers / 20 if args.ramp_s is None else args.ramp_s
    try:
        result = asyncio.run(
            loadtest.run_loadtest(
                args.url,
                args.viewers,
                args.duration,
                ramp_s=ramp_s,
                settle_s=args.settle_s,
                connect_timeout_s=args.connect_timeout,
                server_pid=args.server_pid,
                latency_samples=args.latency_samples,
                loss_percent=args.loss,
            )
        )
    except loadtest.LoadtestError as error:
        _fail(f"broadcast loadtest: {error}")
    print(result.to_json() if args.json else format_result(result))


def _apply_flags(config: Config, args: argparse.Namespace) -> Config:
    """Return `config` with the flags that were given (not None) put over it."""
    changes: dict[str, Any] = {
        "host": args.host,
        "port": args.port,
        "media_port": args.media_port,
        "workers": args.workers,
        "public_ip": args.public_ip,
        "publish_keys": args.publish_key and tuple(args.publish_key),
        "cameras": args.rtsp and tuple(args.rtsp),
        "max_bitrate_kbps": args.max_bitrate,
        "log_level": args.log_level,
        "cluster_redis": args.cluster,
        "node_url": args.node_url,
        "node_id": args.node_id,
        "cluster_role": args.role,
        "record_all": args.record or None,
        "recording_dir": args.recording_dir,
    }
    config = dataclasses.replace(
        config, **{name: value for name, value in changes.items() if value is not None}
    )
    if config.start_bitrate_kbps > config.max_bitrate_kbps:
        config = dataclasses.replace(config, start_bitrate_kbps=config.max_bitrate_kbps)
    return config


_configure_logging = configure_logging  # what main() calls (tests replace it)


def _fail(message: str) -> NoReturn:
    """End the command with a one-line message and exit status 1, no traceback."""
    print(message, file=sys.stderr)
    raise SystemExit(1)


def _doctor(args: argparse.Namespace) -> None:
    config = Config()
    if args.config is not None:
        try:
            config, _ = load_config(args.config)
        except ConfigError as error:
            _fail(str(error))
    findings = run_checks(config)
    for finding in findings:
        print(finding)
    if any(f.level == "FAIL" for f in findings):
        raise SystemExit(1)


def _print_token(args: argparse.Namespace) -> None:
    try:
        config, _ = load_config(args.config)
        check_stream_id(args.stream_id)
    except ConfigError as error:
        _fail(str(error))
    except ValueError as error:
        _fail(f"broadcast: stream id {error}")
    if not config.token_secret:
        _fail(f"{args.config}: set <token_secret> in <auth> to mint tokens")
    if not 0 < args.ttl <= 366 * 24 * 3600:
        _fail("broadcast: --ttl must be 1 second to 1 year")
    print(tokens.mint(config.token_secret, args.purpose, args.stream_id, args.ttl))


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if args.command == "version":
        print(__version__)
        return
    if args.command == "check-config":
        try:
            _, warnings = load_config(args.file)
        except ConfigError as error:
            _fail(str(error))
        for warning in warnings:
            print(warning, file=sys.stderr)
        print(f"{args.file}: ok")
        return
    if args.command == "token":
        _print_token(args)
        return
    if args.command == "doctor":
        _doctor(args)
        return
    if args.command == "loadtest":
        _loadtest(args)
        return
    config, warnings = Config(), []
    if args.config is not None:
        try:
            config, warnings = load_config(args.config)
        except ConfigError as error:
            _fail(str(error))
    config = _apply_flags(config, args)
    if config.clustered and config.node_url is None:
        _fail("broadcast: --cluster needs --node-url (where browsers reach this node)")
    if not config.clustered and (args.node_url or args.node_id or args.role):
        _fail("broadcast: --node-url, --node-id and --role go with --cluster")
    _configure_logging(config)
    for warning in warnings:
        logging.getLogger("broadcast.config").warning("%s", warning)
    try:
        run(config)
    except OSError as error:  # port taken, certificate unreadable, ...
        _fail(f"cannot serve: {error}")
