"""Domain errors: what a client asked that we refuse, as a status, a code and a sentence.

Plain exceptions, free of aiohttp: the HTTP layer alone (`errors_middleware` in
`signaling/http.py`) turns them into `{"error": code, "message": sentence}` answers.
"""

from __future__ import annotations


class ClientError(Exception):
    """A request we refuse, with its HTTP status, a stable code and a human sentence."""

    status = 400

    def __init__(self, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.headers = headers or {}


class TemporaryRedirect(ClientError):
    """Not a refusal: another node of the cluster serves this request (RFC 9725 §4.5);
    the client repeats it, body and all, at `Location`."""

    status = 307

    def __init__(self, location: str, message: str) -> None:
        super().__init__("redirected", message, {"Location": location})


class BadRequest(ClientError):
    status = 400


class Unauthorized(ClientError):
    status = 401


class Forbidden(ClientError):
    status = 403


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
