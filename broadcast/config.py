"""Server settings: a frozen Config with embedded defaults (flashphoner.xml comes later)."""

from __future__ import annotations

from dataclasses import dataclass, field

ANY_ADDRESS = ("", "0.0.0.0", "::")


@dataclass(frozen=True)
class Config:
    """Everything the server reads at start; the defaults run a usable server."""

    host: str = "0.0.0.0"
    port: int = 8080
    publish_keys: tuple[str, ...] = ()
    # Browsers publishing to us start at this bitrate and may climb to the maximum.
    # Chrome in its default (balanced) mode sends 720p only once its target passes
    # ~3 Mbit/s: starting at 4 Mbit/s gives native 1280x720 in ~2 s instead of ~4 s.
    start_bitrate_kbps: int = 4000
    max_bitrate_kbps: int = 6000
    # A publisher that drops may come back within this time and keep its viewers.
    reconnect_grace_s: float = 30.0
    # A publisher that sends nothing for this long has gone (a closed laptop lid sends
    # no DTLS close): the stream turns `reconnecting` instead of waiting ~30 s for ICE.
    publisher_timeout_s: float = 10.0
    max_sdp_bytes: int = 64 * 1024
    stun_servers: tuple[str, ...] = field(default=())

    @property
    def ice_addresses(self) -> list[str]:
        """Addresses to gather ICE candidates on; [] means every interface."""
        return [] if self.host in ANY_ADDRESS else [self.host]
