"""Run the application: HTTP, and HTTPS when a certificate is configured."""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl

from aiohttp import web

from broadcast.app import create_app
from broadcast.config import Config

logger = logging.getLogger(__name__)


def tls_context(config: Config) -> ssl.SSLContext | None:
    if config.https_port is None or not config.tls_certificate or not config.tls_key:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(config.tls_certificate, config.tls_key)
    return context


async def serve(config: Config) -> None:
    """Serve until SIGINT or SIGTERM, then close every session and stop."""
    if config.turn_servers and not config.turn_secret:
        logger.warning(
            "<turn_server> is set without <turn_secret>: browsers get no TURN"
        )
    runner = web.AppRunner(create_app(config))
    await runner.setup()
    sites = [web.TCPSite(runner, config.host, config.port)]
    context = tls_context(config)
    if context is not None and config.https_port is not None:
        sites.append(
            web.TCPSite(runner, config.host, config.https_port, ssl_context=context)
        )
    for site in sites:
        await site.start()
        logger.info("serving on %s", site.name)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        logger.info("shutting down")
        await runner.cleanup()


def run(config: Config) -> None:
    asyncio.run(serve(config))
