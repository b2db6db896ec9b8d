"""One HTTP client for every hook: signs each POST, bounds its time, counts it."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp

from broadcast.hooks.signing import SIGNATURE_HEADER, signature

# What is kept of a receiver's answer (its refusal message): a sentence, not a page.
MAX_ANSWER_BYTES = 4096
USER_AGENT = "broadcast-hooks/1"


class HookFailed(Exception):
    """The receiver did not answer in time, could not be reached, or failed (5xx)."""


@dataclass(frozen=True)
class Answer:
    status: int
    text: str


class HookClient:
    """POSTs JSON to the operator's URLs; `calls[(hook, outcome)]` and `observe(hook,
    seconds)` feed /metrics."""

    def __init__(self, secret: str | None) -> None:
        self._secret = secret
        self._session: aiohttp.ClientSession | None = None
        self.calls: Counter[tuple[str, str]] = Counter()
        self.observe: Callable[[str, float], None] = lambda hook, seconds: None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:  # made in the running loop, at the first call
            self._session = aiohttp.ClientSession(
                headers={"User-Agent": USER_AGENT, "Content-Type": "application/json"}
            )
        return self._session

    async def post(
        self, hook: str, url: str, payload: object, timeout_s: float
    ) -> Answer:
        """The receiver's answer (any status below 500), or HookFailed."""
        body = json.dumps(payload, separators=(",", ":")).encode()
        headers = {}
        if self._secret:
            headers[SIGNATURE_HEADER] = signature(self._secret, body)
        start = time.monotonic()
        try:
            async with self._http().post(
                url,
                data=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=timeout_s),
                allow_redirects=False,
            ) as response:
                raw = await response.content.read(MAX_ANSWER_BYTES)
                answer = Answer(response.status, raw.decode("utf-8", "replace"))
        except (TimeoutError, aiohttp.ClientError, OSError) as error:
            raise HookFailed(type(error).__name__) from None
        finally:
            self.observe(hook, time.monotonic() - start)
        if answer.status >= 500 or 300 <= answer.status < 400:
            raise HookFailed(f"HTTP {answer.status}")
        return answer

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
