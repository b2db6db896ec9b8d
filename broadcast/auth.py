"""Keys: publish keys for WHIP, the admin key for `/api` and `/metrics` (Bearer)."""

from __future__ import annotations

import hmac

from aiohttp import web

from broadcast.config import Config
from broadcast.errors import ClientError, Unauthorized


class Forbidden(ClientError):
    status = 403


def bearer_token(request: web.Request) -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


def _matches(token: str | None, keys: tuple[str, ...]) -> bool:
    # Compare with every key in constant time: timing must not reveal a key's prefix.
    given = (token or "").encode()
    return any([hmac.compare_digest(given, key.encode()) for key in keys])


def check_publish_key(request: web.Request, config: Config) -> None:
    """Require `Authorization: Bearer <key>` when publish keys are configured."""
    if config.publish_keys and not _matches(bearer_token(request), config.publish_keys):
        raise Unauthorized(
            "unauthorized",
            "Publishing needs a valid key: 'Authorization: Bearer <publish key>'.",
            headers={"WWW-Authenticate": 'Bearer realm="broadcast"'},
        )


def check_admin_key(
    request: web.Request, config: Config, required: bool = True
) -> None:
    """Allow the request if it carries the admin key.

    Without a configured key the admin API is closed (`required`), while metrics stay
    open: they hold no secrets and a scraper on the same host should just work.
    """
    if config.admin_key is None:
        if required:
            raise Forbidden(
                "admin_disabled",
                "The admin API is off: set <admin_key> in <auth> to turn it on.",
            )
        return
    if not _matches(bearer_token(request), (config.admin_key,)):
        raise Unauthorized(
            "unauthorized",
            "This needs the admin key: 'Authorization: Bearer <admin key>'.",
            headers={"WWW-Authenticate": 'Bearer realm="broadcast admin"'},
        )
