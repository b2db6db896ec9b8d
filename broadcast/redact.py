"""Keep secrets out of the logs, whoever logs them: us, aiohttp, aiortc, aioice, aiortsp.

`RedactSecrets` sits on the handler `broadcast serve` logs through (logs.configure_logging),
so it sees every record of every logger that is emitted at all. It blanks

* the secrets of the config, wherever they appear: publish keys, the admin key, the token
  secret, the TURN secret, the password of every camera URL;
* what has the shape of a secret: signed tokens, `?token=` / `?key=` (the access log
  logs request lines and Referers: presenter and share links carry keys and tokens),
  user:password in URLs (a camera added over the admin API is not in the config),
  Authorization headers (aiortsp logs its requests at DEBUG), `a=ice-pwd:` lines (aiortc
  logs whole SDPs at DEBUG), TURN `credential=`s.

Cameras' aiortsp loggers are also kept at WARNING (broadcast/ingest/rtsp.py). What
libraries log that is not secret stays: ICE ufrags and STUN MESSAGE-INTEGRITY values
(an HMAC, not the password), SRTP profile names (never keys: aiortc logs none).
"""

from __future__ import annotations

import logging
import re
from urllib.parse import unquote, urlsplit, urlunsplit

from broadcast.config import Config

MASK = "***"

PATTERNS = [
    # view.1700000000.<64 hex>: our signed tokens (broadcast/tokens.py).
    (re.compile(r"\b(publish|view)\.[0-9]{1,12}\.[0-9a-fA-F]{16,}"), r"\1." + MASK),
    # scheme://user:password@host (cameras; any URL).
    (re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^/\s@\"'<>]+@"), r"\1" + MASK + "@"),
    # Authorization: Bearer x / Digest username=..., response=... (to the line's end).
    (
        re.compile(
            r"(?i)\b((?:proxy-)?authorization[\"']?\s*[:=]\s*[\"']?)[^\r\n\"']+"
        ),
        r"\1" + MASK,
    ),
    # Credentials as parameters: ?token=, ?key=, password=, credential="...".
    (
        re.compile(
            r"(?i)\b((?:access_)?token|(?:api_|publish_|admin_)?key|pass(?:word|wd)?|pwd"
            r"|secret|credential|auth)(=\"?)[^&;/\s\"'<>]*"
        ),
        r"\1\2" + MASK,
    ),
    # SDP (offers, answers, trickle fragments): a=ice-pwd:<password>.
    (re.compile(r"(?i)(a=ice-pwd:)\S+"), r"\1" + MASK),
]


# Some cameras take credentials in the path or query (`/user=admin&password=x`).
SECRET_PARAMS = re.compile(
    r"(?i)\b(user(?:name)?|pass(?:word|wd)?|pwd|auth|token)=[^&;/]*"
)


def redact_url(url: str) -> str:
    """The URL without user, password or credential parameters: for logs and the API
    (a camera's, a cluster's Redis)."""
    parts = urlsplit(url)
    path = SECRET_PARAMS.sub(r"\1=***", parts.path)
    query = SECRET_PARAMS.sub(r"\1=***", parts.query)
    return urlunsplit((parts.scheme, host_port(url), path, query, ""))


def host_port(url: str) -> str:
    """`host[:port]` of a URL, without its user and password."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"  # IPv6
    return f"{host}:{parts.port}" if parts.port else host


def redact_text(text: str, secrets: tuple[str, ...] = ()) -> str:
    """`text` with `secrets` and everything shaped like a secret blanked."""
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    for pattern, replacement in PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def config_secrets(config: Config) -> tuple[str, ...]:
    """The secrets of `config` as they could be logged, longest first."""
    found = {*config.publish_keys, config.admin_key, config.token_secret}
    found.update((config.turn_secret, config.cluster_secret, config.hooks_secret))
    for url in (*(camera.url for camera in config.cameras), config.cluster_redis or ""):
        password = urlsplit(url).password
        if password:
            found.update((password, unquote(password)))
    # A short value (a user name "admin") would blank ordinary words everywhere.
    return tuple(sorted((s for s in found if s and len(s) >= 4), key=len, reverse=True))


class RedactSecrets(logging.Filter):
    """Rewrite each record's message (and traceback) without secrets; drop nothing."""

    def __init__(self, config: Config) -> None:
        super().__init__()
        self.secrets = config_secrets(config)
        self._formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # malformed: the handler reports it as it is
            return True
        redacted = redact_text(message, self.secrets)
        if redacted != message:
            record.msg, record.args = redacted, None
        if record.exc_info and not record.exc_text:
            record.exc_text = self._formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_text(record.exc_text, self.secrets)
        if record.stack_info:
            record.stack_info = redact_text(record.stack_info, self.secrets)
        return True
