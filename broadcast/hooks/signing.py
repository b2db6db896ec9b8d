"""`Broadcast-Signature: t=<unix time>,v1=<hex HMAC-SHA256 of "<t>.<body>">`.

The scheme Stripe uses: the time inside the signed text lets a receiver refuse a
replayed call, the version lets the scheme change without breaking receivers. A
receiver checks it in three lines (README "Hooks"):

    t, v1 = (part.split("=", 1)[1] for part in header.split(","))
    mac = hmac.new(secret.encode(), f"{t}.".encode() + body, "sha256").hexdigest()
    assert hmac.compare_digest(mac, v1) and abs(time.time() - int(t)) < 300
"""

from __future__ import annotations

import hashlib
import hmac
import time

SIGNATURE_HEADER = "Broadcast-Signature"
TOLERANCE_S = 300


def signature(secret: str, body: bytes, now: float | None = None) -> str:
    """The header value that signs `body` at `now` (default: the current time)."""
    t = int(time.time() if now is None else now)
    mac = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256)
    return f"t={t},v1={mac.hexdigest()}"


def verify(
    secret: str, header: str, body: bytes, tolerance_s: float = TOLERANCE_S
) -> bool:
    """Whether `header` signs `body` with `secret`, made within `tolerance_s`: what a
    receiver does (our tests' receiver uses it)."""
    fields = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    t, v1 = fields.get("t", ""), fields.get("v1", "")
    if not t.isdigit() or abs(time.time() - int(t)) > tolerance_s:
        return False
    expected = signature(secret, body, int(t)).rpartition("v1=")[2]
    return hmac.compare_digest(expected, v1)
