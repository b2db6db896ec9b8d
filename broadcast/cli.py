"""The `broadcast` command: serve, version."""

from __future__ import annotations

import argparse
import logging
import sys

from aiohttp import web

from broadcast import __version__
from broadcast.app import create_app
from broadcast.config import Config


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="broadcast", description="One-to-many live broadcasting server."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the server")
    serve.add_argument(
        "--host", default=Config.host, help="address to bind (default %(default)s)"
    )
    serve.add_argument(
        "--port", type=int, default=Config.port, help="HTTP port (default %(default)s)"
    )
    serve.add_argument(
        "--publish-key",
        action="append",
        default=[],
        help="require this key to publish (may repeat; default: open publishing)",
    )
    serve.add_argument(
        "--max-bitrate",
        type=int,
        default=Config.max_bitrate_kbps,
        metavar="KBPS",
        help="highest video bitrate a publisher is allowed (default %(default)s)",
    )
    serve.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    commands.add_parser("version", help="print the version")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if args.command == "version":
        print(__version__)
        return
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not 1 <= args.port <= 65535:
        sys.exit(f"broadcast: --port must be 1-65535, got {args.port}")
    config = Config(
        host=args.host,
        port=args.port,
        publish_keys=tuple(args.publish_key),
        max_bitrate_kbps=args.max_bitrate,
        start_bitrate_kbps=min(Config.start_bitrate_kbps, args.max_bitrate),
    )
    web.run_app(create_app(config), host=config.host, port=config.port)
