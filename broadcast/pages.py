"""The web client: presenter page at `/`, viewer page at `/watch/<id>`, the operator
console at `/admin`, and their files."""

from __future__ import annotations

import sys
from pathlib import Path

from aiohttp import web

from broadcast.registry import check_stream_id


def client_dir() -> Path:
    """Where client/ is: the source tree, or `<prefix>/share/broadcast/client` when
    installed from a wheel (setup.cfg data_files)."""
    for candidate in (
        Path(__file__).resolve().parent.parent / "client",
        Path(sys.prefix) / "share" / "broadcast" / "client",
    ):
        if (candidate / "index.html").is_file():
            return candidate
    raise FileNotFoundError("the web client (client/index.html) is not installed")


def add_routes(app: web.Application) -> None:
    root = client_dir()

    async def presenter(request: web.Request) -> web.FileResponse:
        return web.FileResponse(root / "index.html")

    async def viewer(request: web.Request) -> web.FileResponse:
        check_stream_id(request.match_info["stream_id"])
        return web.FileResponse(root / "watch.html")

    async def check(request: web.Request) -> web.FileResponse:
        return web.FileResponse(root / "check.html")

    async def console(request: web.Request) -> web.FileResponse:
        """The operator console: a static page; the admin API it calls needs the key."""
        return web.FileResponse(root / "admin.html")

    app.router.add_get("/", presenter)
    app.router.add_get("/check", check)
    app.router.add_get("/admin", console)
    app.router.add_get("/watch/{stream_id}", viewer)
    app.router.add_static("/static/", root, follow_symlinks=False)
