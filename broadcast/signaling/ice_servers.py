"""The STUN and TURN servers we hand to browsers (RFC 9725 §4.6 `Link` headers).

TURN credentials follow the TURN REST convention that coturn implements with
`use-auth-secret`/`static-auth-secret`: the username is `<expiry unix time>:<name>` and
the password is base64(HMAC-SHA1(secret, username)), so they expire by themselves.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

from broadcast.config import Config

# A page asks again for each session; a day covers the longest broadcast.
TURN_CREDENTIAL_TTL_S = 24 * 3600
TURN_USER = "broadcast"


def turn_credentials(secret: str, now: float | None = None) -> tuple[str, str]:
    """A time-limited TURN username and password for `secret` (coturn REST API)."""
    expiry = int(now if now is not None else time.time()) + TURN_CREDENTIAL_TTL_S
    username = f"{expiry}:{TURN_USER}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode()


def ice_server_links(config: Config) -> list[str]:
    """`Link` header values naming our ICE servers, TURN ones with credentials."""
    links = [f'<{url}>; rel="ice-server"' for url in config.stun_servers]
    if config.turn_servers and config.turn_secret:
        username, password = turn_credentials(config.turn_secret)
        links += [
            f'<{url}>; rel="ice-server"; username="{username}"; '
            f'credential="{password}"; credential-type="password"'
            for url in config.turn_servers
        ]
    return links
