"""The model service's errors and their HTTP statuses (one mapping, `STATUS`), the error body, the request
size limit and the admin-token check, shared by server/api/service.py and its routers
(server/api/catalogue_routes.py, server/api/demo_routes.py)."""

from __future__ import annotations

import hmac
import os

from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.types import ASGIApp, Receive, Scope, Send

from server.catalogue.delta_publisher import CorruptStoreError
from shared.config import ServiceConfig
from shared.errors import ConfigError, DataError, FedhomeError, SignatureError


class NotFoundError(FedhomeError):
    """A release, file or page that does not exist."""


class AuthError(FedhomeError):
    """A missing or wrong admin token."""


class PayloadTooLargeError(FedhomeError):
    """A request body over the configured limit."""


class LengthRequiredError(FedhomeError):
    """A request body without a Content-Length."""


class UnavailableError(FedhomeError):
    """A feature this service was started without (e.g. no signing key for admin actions)."""


STATUS: dict[type[FedhomeError], int] = {
    NotFoundError: 404,
    AuthError: 401,
    PayloadTooLargeError: 413,
    LengthRequiredError: 411,
    UnavailableError: 503,
    ConfigError: 400,
    DataError: 422,
    CorruptStoreError: 500,  # a DataError in the service's own delta store: a server fault
    SignatureError: 500,  # our own files no longer verify: a server fault, never served as valid
}


class ErrorBody(BaseModel):
    type: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorBody


def error_response(exc: FedhomeError) -> JSONResponse:
    status = next((STATUS[kind] for kind in type(exc).__mro__ if kind in STATUS), 500)  # the most specific
    return JSONResponse({"error": {"type": type(exc).__name__, "message": str(exc)}}, status_code=status)


class BodyLimit:
    """ASGI middleware: bodies must declare their length (411 otherwise), and at most `limit` bytes (413),
    refused before anything is read."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in ("POST", "PUT", "PATCH"):
            length = dict(scope["headers"]).get(b"content-length")
            refusal: FedhomeError | None = None
            if length is None:
                refusal = LengthRequiredError("send the request body with a Content-Length header")
            elif not length.isdigit() or int(length) > self.limit:
                refusal = PayloadTooLargeError(f"request body over {self.limit} bytes")
            if refusal is not None:
                await error_response(refusal)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def require_admin(config: ServiceConfig, authorization: str | None) -> None:
    """Raise AuthError unless the request carries the admin token (compared in constant time)."""
    token = os.environ.get(config.admin_token_env, "")
    if len(token) < 16:
        raise AuthError("admin routes are off: no admin token of at least 16 characters is configured")
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), token.encode()):
        raise AuthError("missing or wrong admin token")
