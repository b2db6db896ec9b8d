"""Client errors as JSON: `{"error": code, "message": sentence}`."""

from __future__ import annotations

import json

from aiohttp import web


class ClientError(Exception):
    """A request we refuse, with its HTTP status, a stable code and a human sentence."""

    status = 400

    def __init__(self, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.headers = headers or {}

    def response(self) -> web.Response:
        return json_error(self.status, self.code, self.message, self.headers)


class BadRequest(ClientError):
    status = 400


class Unauthorized(ClientError):
    status = 401


class NotFound(ClientError):
    status = 404


class Conflict(ClientError):
    status = 409


class PreconditionFailed(ClientError):
    status = 412


class PayloadTooLarge(ClientError):
    status = 413


class UnsupportedMediaType(ClientError):
    status = 415


class UnprocessableContent(ClientError):
    status = 422


class ServiceUnavailable(ClientError):
    """Not the client's fault, but still an answer the client can act on (retry)."""

    status = 503


def json_error(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        status=status,
        text=json.dumps({"error": code, "message": message}),
        content_type="application/json",
        headers=headers,
    )
