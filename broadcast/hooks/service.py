"""Hooks: the one object the app holds: auth hooks, the events hook, their client."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from broadcast.config import Config
from broadcast.hooks.auth import Action, AuthHooks
from broadcast.hooks.client import HookClient
from broadcast.hooks.events import EventHooks
from broadcast.registry import StreamRegistry


class Hooks:
    """What `<hooks>` configures; without URLs it asks nobody and tells nobody."""

    def __init__(self, config: Config, registry: StreamRegistry) -> None:
        self.client = HookClient(config.hooks_secret)
        self.auth = AuthHooks(config, self.client)
        self.events: EventHooks | None = None
        self._stop_listening: Callable[[], None] = _nothing
        if config.hooks_events is not None:
            self.events = EventHooks(
                config.hooks_events, self.client, lambda id: _source_kind(registry, id)
            )
            self._stop_listening = registry.events.listen_all(
                self.events.on_stream_event
            )

    def asks(self, action: Action) -> bool:
        return self.auth.asks(action)

    async def check(
        self,
        action: Action,
        request: web.Request,
        stream_id: str,
        client: str,
        credential: str | None,
    ) -> None:
        """Raise the back end's refusal of `request` (see auth.py)."""
        await self.auth.check(
            action, stream_id, client, credential, request.headers.get("User-Agent")
        )

    @property
    def dropped(self) -> int:
        return self.events.dropped if self.events is not None else 0

    def start(self) -> None:
        if self.events is not None:
            self.events.start()

    async def close(self) -> None:
        self._stop_listening()
        if self.events is not None:
            await self.events.close()
        self.auth.close()
        await self.client.close()


def _nothing() -> None:
    pass


def _source_kind(registry: StreamRegistry, stream_id: str) -> str | None:
    stream = registry.get(stream_id)
    return stream.source.kind if stream is not None and stream.source else None
