"""`publish_auth` / `play_auth`: the operator's back end says who may publish or watch.

When a URL is set it replaces our own keys or tokens for that action (as MediaMTX's
`authHTTPAddress` does): the back end that issued the credential judges it, and gets it
as presented. A 2xx lets the session in; a 4xx refuses it with that status and the
receiver's message. A timeout, no connection, a 3xx or a 5xx is an outage, which
`on_failure` settles: `deny` (503 `hook_unavailable`, Retry-After) or `allow`.

Answers (not outages) are kept `CACHE_S` per (action, stream, credential), and callers
asking the same while a call is under way wait for it: a burst of joins with one token
makes one call.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Literal

from broadcast.config import Config
from broadcast.errors import ClientError, ServiceUnavailable
from broadcast.hooks.client import HookClient, HookFailed

Action = Literal["publish", "play"]
CACHE_S = 10.0
CACHE_ENTRIES = 10_000
# A refusal's message as the client sees it: one sentence of the receiver's.
MAX_MESSAGE_CHARS = 200


class HookRefused(ClientError):
    """The back end said no: its status (a 4xx) and its message, passed on."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__("hook_refused", message)
        self.status = status


@dataclass(frozen=True)
class Refusal:
    """A no, shared by every caller of one call: each raises its own error."""

    status: int  # the receiver's; 0: it did not answer
    message: str = ""

    def error(self) -> ClientError:
        if self.status == 0:
            return ServiceUnavailable(
                "hook_unavailable",
                "The service that admits sessions does not answer; try again shortly.",
                {"Retry-After": "5"},
            )
        return HookRefused(self.status, self.message)


Verdict = Refusal | None  # None: let it in
Key = tuple[str, str, str | None]  # action, stream, credential
Entry = tuple[float, "asyncio.Task[Verdict]"]  # until when, the call


class AuthHooks:
    def __init__(self, config: Config, client: HookClient) -> None:
        self.urls: dict[str, str | None] = {
            "publish": config.hooks_publish_auth,
            "play": config.hooks_play_auth,
        }
        self._timeout_s = config.hooks_timeout_s
        self._allow_on_failure = config.hooks_on_failure == "allow"
        self._client = client
        self._cache: dict[Key, Entry] = {}

    def asks(self, action: Action) -> bool:
        """Whether the back end decides `action` (and our keys or tokens do not)."""
        return self.urls[action] is not None

    async def check(
        self,
        action: Action,
        stream_id: str,
        client: str,
        credential: str | None,
        user_agent: str | None,
    ) -> None:
        """Raise the refusal of the back end (or of its outage), if any."""
        url = self.urls[action]
        if url is None:
            return
        key = (action, stream_id, credential)
        now = time.monotonic()
        cached = self._cache.get(key)
        if cached is None or cached[0] < now:
            payload = {
                "action": action,
                "stream": stream_id,
                "client": client,
                "key" if action == "publish" else "token": credential,
                "user_agent": user_agent,
            }
            task = asyncio.ensure_future(self._ask(action, url, payload, key))
            self._remember(key, (now + CACHE_S, task))
            cached = self._cache.get(key, (0.0, task))
        # Shielded: a client that goes away does not cancel others' answer.
        verdict = await asyncio.shield(cached[1])
        if verdict is not None:
            raise verdict.error()

    def _remember(self, key: Key, entry: Entry) -> None:
        self._cache.pop(key, None)
        if len(self._cache) >= CACHE_ENTRIES:  # the oldest goes (insertion order)
            del self._cache[next(iter(self._cache))]
        self._cache[key] = entry

    async def _ask(
        self,
        action: Action,
        url: str,
        payload: dict[str, str | None],
        key: Key,
    ) -> Verdict:
        hook = f"{action}_auth"
        try:
            answer = await self._client.post(hook, url, payload, self._timeout_s)
        except HookFailed:
            self._client.calls[hook, "failed"] += 1
            self._forget(key)  # an outage is not an answer: ask again next time
            return None if self._allow_on_failure else Refusal(0)
        if 200 <= answer.status < 300:
            self._client.calls[hook, "allowed"] += 1
            return None
        self._client.calls[hook, "refused"] += 1
        return Refusal(answer.status, refusal_message(answer.text))

    def _forget(self, key: Key) -> None:
        entry = self._cache.get(key)
        if entry is not None and entry[1] is asyncio.current_task():
            del self._cache[key]

    def close(self) -> None:
        for _, task in self._cache.values():
            task.cancel()
        self._cache.clear()


def refusal_message(text: str) -> str:
    """The receiver's `{"message": ...}` or plain text, one bounded printable line."""
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict) and isinstance(parsed.get("message"), str):
        text = parsed["message"]
    line = " ".join("".join(c for c in text if c.isprintable()).split())
    if len(line) > MAX_MESSAGE_CHARS:
        line = line[: MAX_MESSAGE_CHARS - 1] + "…"
    return line or "Refused by the service that admits sessions."
