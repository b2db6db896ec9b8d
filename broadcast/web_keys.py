"""Typed keys of the aiohttp application's state (no module-level state anywhere)."""

from __future__ import annotations

from aiohttp import web

from broadcast.registry import StreamRegistry

REGISTRY = web.AppKey("registry", StreamRegistry)
