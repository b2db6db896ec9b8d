"""Recording routes: start and stop a stream's recording, list, serve and delete files.

Files are served with HTTP range requests (aiohttp's FileResponse), so a browser's
`<video>` seeks. A `<video src>` cannot send the admin key, so each listed file has a
`url` signed with it for a few hours; a view token of the file's stream also opens it
when viewing is private.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from broadcast import tokens
from broadcast.api.admin import admin_stream
from broadcast.auth import check_admin_key, may_view
from broadcast.config import Config
from broadcast.recording.files import RecordingFiles
from broadcast.recording.recordings import RECORDINGS
from broadcast.web_keys import REGISTRY

# A signed file URL from the list lives this long (a long talk, watched later).
FILE_URL_TTL_S = 6 * 3600
RECORDING_TOKEN = "recording"


async def start_recording(request: web.Request) -> web.Response:
    stream = admin_stream(request)
    recorder = request.app[RECORDINGS].start(stream)
    summary = request.app[RECORDINGS].summary(stream.id)
    return web.json_response(
        {"stream": stream.id, **(summary or {}), "state": recorder.state}, status=201
    )


async def stop_recording(request: web.Request) -> web.Response:
    stream = admin_stream(request)
    recorder = request.app[RECORDINGS].stop(stream.id)
    file = recorder.file
    finished = await recorder.stopped()
    return web.json_response(
        {
            "stream": stream.id,
            "file": file.path.name if file is not None else None,
            "state": "done" if finished else "stopping",
            "duration": round(file.duration_s, 1) if file is not None else None,
        }
    )


def _file_url(config: Config, name: str) -> str:
    token = tokens.mint(config.admin_key or "", RECORDING_TOKEN, name, FILE_URL_TTL_S)
    return f"/recordings/{name}?token={token}"


async def list_recordings(request: web.Request) -> web.Response:
    config = request.app[REGISTRY].config
    check_admin_key(request, config)
    files: list[dict[str, Any]] = await request.app[RECORDINGS].files.listing()
    for info in files:
        info["url"] = _file_url(config, info["file"])
    return web.json_response(files)


def _check_file_access(request: web.Request, files: RecordingFiles, name: str) -> None:
    """The admin key, the file's signed URL, or a view token of its stream."""
    config = request.app[REGISTRY].config
    token = request.query.get("token")
    if (
        token
        and config.admin_key
        and tokens.verify(config.admin_key, token, RECORDING_TOKEN, name)
    ):
        return
    stream_id = files.stream_of(name)
    if (
        token
        and config.private_viewing
        and config.token_secret
        and may_view(config, stream_id, token)
    ):
        return
    check_admin_key(request, config)


async def serve_recording(request: web.Request) -> web.StreamResponse:
    files = request.app[RECORDINGS].files
    name = request.match_info["file"]
    _check_file_access(request, files, name)
    path = files.path_of(name)
    return web.FileResponse(path, headers={"Cache-Control": "private, no-cache"})


async def delete_recording(request: web.Request) -> web.Response:
    check_admin_key(request, request.app[REGISTRY].config)
    name = request.match_info["file"]
    request.app[RECORDINGS].files.delete(name)
    return web.json_response({"deleted": name})


def add_routes(app: web.Application) -> None:
    app.router.add_post("/api/streams/{stream_id}/recording", start_recording)
    app.router.add_delete("/api/streams/{stream_id}/recording", stop_recording)
    app.router.add_get("/api/recordings", list_recordings)
    app.router.add_delete("/api/recordings/{file}", delete_recording)
    app.router.add_get("/recordings/{file}", serve_recording)
