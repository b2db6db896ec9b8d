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


def reload_certificate(context: ssl.SSLContext | None, config: Config) -> None:
    """SIGHUP (a renewal's deploy hook, `systemctl reload broadcast`): read the
    certificate and key again into the serving context. New connections get the new
    certificate; open ones, and every broadcast, carry on. A file that does not load
    leaves the old certificate in place: the pair is tried in a context of its own
    first, since a key that fails to load after its certificate did would leave the
    serving context with a certificate and no key (every handshake failing)."""
    if context is None or not config.tls_certificate or not config.tls_key:
        logger.info("SIGHUP: no TLS certificate to reload")
        return
    try:
        trial = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        trial.load_cert_chain(config.tls_certificate, config.tls_key)
        context.load_cert_chain(config.tls_certificate, config.tls_key)
    except (OSError, ssl.SSLError) as error:
        logger.error("certificate not reloaded, the old one stays: %s", error)
        return
    logger.info("certificate reloaded from %s", config.tls_certificate)


async def serve(config: Config) -> None:
    """Serve until SIGINT or SIGTERM, then close every session and stop; SIGHUP
    reloads the TLS certificate."""
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
    # Also without TLS: `systemctl reload` must never stop the server.
    loop.add_signal_handler(signal.SIGHUP, reload_certificate, context, config)
    try:
        await stop.wait()
    finally:
        logger.info("shutting down")
        await runner.cleanup()


def run(config: Config) -> None:
    asyncio.run(serve(config))
