"""Keys: publish keys for WHIP, the admin key for `/api` and `/metrics` (Bearer)."""

from __future__ import annotations

import hmac

from aiohttp import web

from broadcast import tokens
from broadcast.config import Config
from broadcast.errors import Forbidden, Unauthorized


def bearer_token(request: web.Request) -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


def _matches(token: str | None, keys: tuple[str, ...]) -> bool:
    # Compare with every key in constant time: timing must not reveal a key's prefix.
    given = (token or "").encode()
    return any([hmac.compare_digest(given, key.encode()) for key in keys])


def check_publish_key(
    request: web.Request, config: Config, stream_id: str | None
) -> None:
    """Require a publish key, or a publish token for this stream, when either is set.

    Without keys and without a token secret, publishing is open (embedded defaults).
    """
    if not config.publish_keys and not config.token_secret:
        return
    token = bearer_token(request)
    if _matches(token, config.publish_keys):
        return
    if config.token_secret and stream_id is not None:
        if tokens.verify(config.token_secret, token, tokens.PUBLISH, stream_id):
            return
    raise Unauthorized(
        "unauthorized",
        "Publishing needs a valid key or token: 'Authorization: Bearer <key or token>'.",
        headers={"WWW-Authenticate": 'Bearer realm="broadcast"'},
    )


def may_view(config: Config, stream_id: str, token: str | None) -> bool:
    """Whether a holder of `token` may watch `stream_id`: yes unless viewing is private."""
    if not config.private_viewing or not config.token_secret:
        return True
    return tokens.verify(config.token_secret, token, tokens.VIEW, stream_id)


def view_token(request: web.Request) -> str | None:
    """A view token comes as `?token=` (share links) or as a Bearer token (WHEP)."""
    return request.query.get("token") or bearer_token(request)


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
