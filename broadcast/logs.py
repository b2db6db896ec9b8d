"""How every process of ours logs: one format, the configured level, secrets redacted.

`broadcast serve` and each worker process log through the same handler set-up, to the
same stderr, so that their lines read alike and none shows a secret.
"""

from __future__ import annotations

import json
import logging
from typing import TextIO

from broadcast.config import Config
from broadcast.redact import RedactSecrets

HUMAN_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log collectors."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_text:
            entry["exception"] = record.exc_text
        elif record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(config: Config, stream: TextIO | None = None) -> logging.Handler:
    """Log every logger's records at the configured level to stderr (or `stream`),
    secrets redacted (broadcast/redact.py): what `broadcast serve` runs with."""
    handler = logging.StreamHandler(stream)
    if config.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(HUMAN_LOG_FORMAT))
    handler.addFilter(RedactSecrets(config))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(config.log_level.upper())
    return handler
