"""The model service's errors and their HTTP statuses, in one place: the error types, the mapping to statuses
(`STATUS`), the one error body, the handlers that answer with it (`install_error_handlers`), the error
responses a route documents (`errors(...)`: each route lists only those it can return), and the request
size limit (`BodyLimit`).

Faults of the service's own files are server errors, never the caller's: a store that cannot be read
(StoreError, 503), a delta store file that is malformed (CorruptStoreError, 500), a file or index that no
longer verifies against its signature (SignatureError, 500)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.catalogue.delta_publisher import CorruptStoreError
from server.releases.release_store import AlreadyWithdrawnError, StoreError
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
    AlreadyWithdrawnError: 409,
    PayloadTooLargeError: 413,
    LengthRequiredError: 411,
    UnavailableError: 503,
    ConfigError: 400,
    DataError: 422,
    StoreError: 503,  # the release store cannot be read: a server fault
    CorruptStoreError: 500,  # a DataError in the service's own delta store: a server fault
    SignatureError: 500,  # our own files no longer verify: a server fault, never served as valid
}
HTTP_ERROR_TYPES: dict[int, str] = {
    400: "BadRequest",
    404: "NotFoundError",
    405: "MethodNotAllowed",
    411: LengthRequiredError.__name__,  # BodyLimit's refusals (see `refusing`)
    413: PayloadTooLargeError.__name__,
}


class ErrorBody(BaseModel):
    type: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorBody


ERROR_MEANINGS: dict[int, str] = {
    400: "the body is not UTF-8 JSON, or a value in it is refused (a blank reason)",
    401: "no admin token, or not the service's (checked before the body is read)",
    404: "no such release, file, delta or page",
    409: "the release is withdrawn already (its first reason stays)",
    411: "the body has no Content-Length",
    413: "the body (or the batch) is over the limit",
    422: "the request does not match the route's parameters or body",
    500: "a file of the service's own store is malformed or no longer verifies (never served as valid)",
    503: "the store cannot be read, or the service was started without what this needs",
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The error responses a route documents in the OpenAPI schema (`responses=`): `codes`, each with the
    one error body."""
    return {code: {"model": ErrorResponse, "description": ERROR_MEANINGS[code]} for code in sorted(codes)}


def html_route_errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """`errors(...)` for a route whose success is HTML: its errors are still the one JSON body, which the
    schema must say (FastAPI would document an additional response's model under the route's own media
    type). The schema reference resolves because the JSON routes register ErrorResponse through `errors`."""
    reference = {"$ref": f"#/components/schemas/{ErrorResponse.__name__}"}
    return {
        code: {"description": ERROR_MEANINGS[code], "content": {"application/json": {"schema": reference}}}
        for code in sorted(codes)
    }


def status_of(exc: FedhomeError) -> int:
    """The HTTP status of `exc`: that of its most specific type in STATUS (500 when none is)."""
    return next((STATUS[kind] for kind in type(exc).__mro__ if kind in STATUS), 500)


def error_response(exc: FedhomeError) -> JSONResponse:
    body = {"error": {"type": type(exc).__name__, "message": str(exc)}}
    return JSONResponse(body, status_code=status_of(exc))


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
    refused before any of the body is read: when the route first asks for it. So a route's own checks come
    first (an admin route answers 401 to a caller without the token, whatever the body:
    server/api/admin_auth.py), and a route that reads no body refuses none."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        refusal = self.refusal(scope)
        await self.app(scope, receive if refusal is None else refusing(refusal), send)

    def refusal(self, scope: Scope) -> FedhomeError | None:
        """Why the body of this request is refused (None when it is not, or the request has no body)."""
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            return None
        length = dict(scope["headers"]).get(b"content-length")
        if length is None:
            return LengthRequiredError("send the request body with a Content-Length header")
        if not length.isdigit() or int(length) > self.limit:
            return PayloadTooLargeError(f"request body over {self.limit} bytes")
        return None


def refusing(refusal: FedhomeError) -> Receive:
    """An ASGI `receive` that hands on none of the body: it raises `refusal` as Starlette's HTTPException
    (which FastAPI lets through its body parsing), answered in the one error shape under the refusal's
    type (HTTP_ERROR_TYPES)."""

    async def receive() -> Message:
        raise StarletteHTTPException(status_code=status_of(refusal), detail=str(refusal))

    return receive
