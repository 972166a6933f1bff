"""The model service's errors and their HTTP statuses, in one place: the error types, the mapping to statuses
(`STATUS`), the one error body, the handlers that answer with it (`install_error_handlers`), the error
responses every route documents (`ERROR_RESPONSES`), and the request size limit (`BodyLimit`)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from server.catalogue.delta_publisher import CorruptStoreError
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
HTTP_ERROR_TYPES: dict[int, str] = {400: "BadRequest", 404: "NotFoundError", 405: "MethodNotAllowed"}


class ErrorBody(BaseModel):
    type: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorBody


# The error responses every route documents in the OpenAPI schema (FastAPI(responses=...))
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "content": {"application/json": {}}}
    for code in (400, 401, 404, 411, 413, 422, 503)
}


def error_response(exc: FedhomeError) -> JSONResponse:
    status = next((STATUS[kind] for kind in type(exc).__mro__ if kind in STATUS), 500)  # the most specific
    return JSONResponse({"error": {"type": type(exc).__name__, "message": str(exc)}}, status_code=status)


async def handle_fedhome_error(request: Request, exc: FedhomeError) -> JSONResponse:
    return error_response(exc)


async def handle_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """Starlette's own errors (no route, wrong method, a body that is not JSON) in the one error shape."""
    kind = HTTP_ERROR_TYPES.get(exc.status_code, "HTTPError")
    return JSONResponse(
        {"error": {"type": kind, "message": str(exc.detail)}},
        status_code=exc.status_code,
        headers=exc.headers,
    )


async def handle_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """A request that does not match its route's declared parameters or body: 422, each problem by place."""
    problems = "; ".join(
        f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}" for error in exc.errors()
    )
    return JSONResponse({"error": {"type": "ValidationError", "message": problems}}, status_code=422)


def install_error_handlers(app: FastAPI) -> None:
    """Answer every error `app` raises with the one error body and its status from the table above."""
    app.exception_handler(FedhomeError)(handle_fedhome_error)
    app.exception_handler(StarletteHTTPException)(handle_http_error)
    app.exception_handler(RequestValidationError)(handle_validation_error)


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
