"""Signed, expiring tokens: an operator's site lets someone publish or watch one stream.

`<purpose>.<expiry unix time>.<signature>`, the signature an HMAC-SHA256 of purpose,
stream id and expiry under `<auth><token_secret>`. The stream id is not in the token
(it is in the URL), so a token for one stream is worth nothing for another. Minting one
needs nothing but the secret: `broadcast token publish gate --ttl 3600`, or these three
lines in any language.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time

PUBLISH, VIEW = "publish", "view"
EXPIRY = re.compile(
    r"[0-9]{1,12}"
)  # ASCII digits only: int() takes "²" and 5000 digits
# A share link made at publish time lives as long as a long event, no longer.
VIEW_LINK_TTL_S = 24 * 3600


def _signature(secret: str, purpose: str, stream_id: str, expires_at: int) -> str:
    message = f"{purpose}:{stream_id}:{expires_at}".encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def mint(secret: str, purpose: str, stream_id: str, ttl_s: int) -> str:
    """A token letting its holder `purpose` (publish or view) `stream_id` for `ttl_s`."""
    expires_at = int(time.time()) + ttl_s
    return (
        f"{purpose}.{expires_at}.{_signature(secret, purpose, stream_id, expires_at)}"
    )


def verify(secret: str, token: str | None, purpose: str, stream_id: str) -> bool:
    """True for an unexpired token of `purpose` for `stream_id`; constant time."""
    if not token:
        return False
    parts = token.split(".")
    if len(parts) != 3 or parts[0] != purpose or not EXPIRY.fullmatch(parts[1]):
        return False
    expires_at = int(parts[1])
    expected = _signature(secret, purpose, stream_id, expires_at)
    valid = hmac.compare_digest(parts[2].encode(), expected.encode())
    return valid and expires_at > time.time()
