"""Back-end hooks: the operator's own server asked and told over HTTP (README "Hooks").

`publish_auth` / `play_auth` are asked before a WHIP publish or a WHEP view is let in
(`auth.py`, from signaling/admission.py); `events` is told what happened, in signed,
batched POSTs from a bounded queue (`events.py`). Both go through one `HookClient`
(`client.py`) that signs, times and counts every call for /metrics.
"""

from __future__ import annotations

from aiohttp import web

from broadcast.hooks.service import Hooks

HOOKS = web.AppKey("hooks", Hooks)

__all__ = ["HOOKS", "Hooks"]
