"""MediaHost: what every process carrying media holds, and the making of transports.

mediasoup's worker/router idea in our words: the DTLS certificate, the media sockets
(the shared UDP port and ICE-TCP on each address) and the transports made on them,
alike in the main process and in each worker. Streams and sessions are not its
business (the registry's).
"""

from __future__ import annotations

import logging
from collections import Counter

from aioice.ice import get_host_addresses
from aiortc import RTCCertificate

from broadcast.config import Config
from broadcast.media.tcp_mux import MediaTcpListener
from broadcast.media.transport import SecureTransport
from broadcast.media.udp_mux import MediaSocket, default_sender, send_each

logger = logging.getLogger(__name__)

FREE_PORT_ATTEMPTS = 10


class MediaHost:
    """One process's certificate and media sockets; `transport()` makes a session's."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.certificate = RTCCertificate.generateCertificate()
        self.media_sockets: list[MediaSocket] = []
        self.tcp_listeners: list[MediaTcpListener] = []

    def transport(self, name: str) -> SecureTransport:
        """A new session's ICE + DTLS-SRTP transport on our sockets."""
        return SecureTransport(
            self.certificate,
            self.config.ice_addresses,
            name,
            self.config.stun_servers,
            self.config.media_ports,
            self.media_sockets,
            self.tcp_listeners,
        )

    async def open(self) -> None:
        """Bind the shared UDP media port on each address we offer candidates on, and
        listen for ICE-TCP on the same port (`ice_tcp`).

        Not in port-range mode (`media_ports`), where each session binds its own.
        """
        if self.config.media_ports is not None:
            return
        addresses = self.config.ice_addresses or get_host_addresses(
            use_ipv4=True, use_ipv6=True
        )
        # Port 0: the free UDP port the first bind gets may be taken on TCP or on
        # another address; then another free port is tried.
        attempts = FREE_PORT_ATTEMPTS if self.config.media_port == 0 else 1
        for attempt in range(attempts):
            try:
                await self._bind_media(addresses, self.config.media_port)
                break
            except OSError:
                self.close()
                if attempt == attempts - 1:
                    raise
        if not self.media_sockets:
            logger.warning("no network address to receive media on: nobody can connect")
        elif default_sender() is send_each:
            logger.warning(
                "the native send extension is not built: media goes out one sendto"
                " per packet (slower); install gcc and python3-dev, then reinstall"
            )

    async def _bind_media(self, addresses: list[str], port: int) -> None:
        for address in addresses:
            try:
                media = await MediaSocket.open(address, port)
                self.media_sockets.append(media)
                port = media.address[1]  # with port 0, the same free port everywhere
                if self.config.ice_tcp:
                    listener = await MediaTcpListener.open(address, port)
                    self.tcp_listeners.append(listener)
            except OSError as exc:
                raise OSError(
                    f"media port {port} on {address}: {exc.strerror or exc};"
                    " free it or set another <media_port>"
                ) from exc
            tcp = " and TCP (ICE-TCP)" if self.config.ice_tcp else ""
            logger.info("media on UDP%s %s port %d", tcp, address, port)

    def close(self) -> None:
        for media in self.media_sockets:
            media.close()
        self.media_sockets.clear()
        for listener in self.tcp_listeners:
            listener.close()
        self.tcp_listeners.clear()

    def counts(self) -> Counter[str]:
        """What this process's shared media sockets refused or could not send."""
        counts: Counter[str] = Counter()
        for media in self.media_sockets:
            counts["foreign_packets_dropped"] += media.unrouted
            counts["packets_dropped"] += media.send_dropped + media.srtp_refused
        for listener in self.tcp_listeners:
            counts["foreign_packets_dropped"] += listener.unrouted
            counts["packets_dropped"] += listener.send_dropped
        return counts
