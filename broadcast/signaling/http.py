"""What every WHIP/WHEP handler needs from a request: the SDP body, keys, CORS."""

from __future__ import annotations

import json

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler

from broadcast.errors import (
    ClientError,
    NotFound,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from broadcast.web_keys import REGISTRY

SDP_TYPE = "application/sdp"
TRICKLE_TYPE = "application/trickle-ice-sdpfrag"
JSON_TYPE = "application/json"

# Some clients go beyond the specification, and we follow them (tests/e2e/
# test_interop_npm.py): @eyevinn/whip-web-client trickles only if it can read PATCH in
# the Allow-Methods of its OPTIONS answer, then names the ETag in an `ETag` header.
CORS_HEADERS = {
    "Access-Control-Allow-Methods": "OPTIONS, POST, PATCH, DELETE",
    "Access-Control-Allow-Headers": "Authorization, Content-Type, If-Match, ETag",
    "Access-Control-Expose-Headers": (
        "Location, ETag, Link, Accept-Patch, Access-Control-Allow-Methods"
    ),
}


async def read_body(request: web.Request, content_type: str, limit: int) -> str:
    """The request body as text, if it has the right type and size."""
    if request.content_type != content_type:
        raise UnsupportedMediaType(
            "unsupported_media_type",
            f"Send the body as '{content_type}', not '{request.content_type}'.",
        )
    if request.content_length is not None and request.content_length > limit:
        raise _too_large(limit)
    body = await request.content.read(limit + 1)
    if len(body) > limit:
        raise _too_large(limit)
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        raise ClientError(
            "malformed_sdp", "The body is not valid UTF-8 text."
        ) from None


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        "body_too_large", f"The body is larger than {limit // 1024} KiB."
    )


def session_not_found() -> NotFound:
    return NotFound("session_not_found", "No such session: it ended or never existed.")


@web.middleware
async def errors_middleware(
    request: web.Request, handler: Handler
) -> web.StreamResponse:
    """Turn ClientError into its JSON response; add CORS to every answer.

    Requests that parsers may frame differently (a proxy in front of us and aiohttp)
    are refused before any handler, and their connection closed, so nothing pipelined
    behind them is read as a request: see `_ambiguity`.
    """
    ambiguity = _ambiguity(request)
    if ambiguity is not None:
        refused = json_error(400, "ambiguous_request", ambiguity)
        refused.force_close()
        return refused
    response: web.StreamResponse
    try:
        response = await handler(request)
    except ClientError as error:
        response = json_error(error.status, error.code, error.message, error.headers)
    except web.HTTPException as exc:
        if exc.status < 400 or exc.content_type == "application/json":
            raise
        code = exc.reason.lower().replace(" ", "_")
        kept = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
        response = json_error(exc.status, code, f"{exc.reason}.", kept)
    if hdrs.UPGRADE in request.headers and response.status != 101:
        # A proxy may take the connection for a tunnel as soon as it forwards an
        # Upgrade request; what follows must not reach us as requests.
        response.force_close()
    _add_cors(request, response)
    return response


def json_error(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    """Every error answer: `{"error": code, "message": sentence}`."""
    return web.Response(
        status=status,
        text=json.dumps({"error": code, "message": message}),
        content_type="application/json",
        headers=headers,
    )


def _ambiguity(request: web.Request) -> str | None:
    """Why `request` may be framed or routed differently by another parser, if it may.

    aiohttp (3.14) already refuses Content-Length with Transfer-Encoding, repeated or
    malformed Content-Length, unknown codings, bad chunk lines and trailers.
    """
    codings = request.headers.getall(hdrs.TRANSFER_ENCODING, [])
    if codings and ",".join(codings).strip().lower() != "chunked":
        return "Transfer-Encoding may only be 'chunked'."
    if hdrs.UPGRADE in request.headers and (
        request.content_length or codings or request.method != "GET"
    ):
        return "An Upgrade request is a GET without a body."
    if not request.raw_path.startswith("/"):  # absolute-form: its host wins over Host
        return "Send the path alone in the request line (origin-form), not a URL."
    return None


def _add_cors(request: web.Request, response: web.StreamResponse) -> None:
    """Let pages of the configured origins (all, by default) call us (WHIP §4.6)."""
    allowed = request.app[REGISTRY].config.cors_origins
    origin = request.headers.get("Origin")
    if "*" in allowed:
        response.headers.setdefault("Access-Control-Allow-Origin", "*")
    elif origin in allowed:
        response.headers.setdefault("Access-Control-Allow-Origin", origin)
        response.headers.add("Vary", "Origin")
    else:
        return
    for name, value in CORS_HEADERS.items():
        response.headers.setdefault(name, value)
