"""The admin routes' bearer token: checked before the body is read or its length checked (`AdminFirst`)
against the token the service read once when it started (ServiceSecrets), and documented in the OpenAPI
schema (`ADMIN_SECURITY`) with the errors every admin route can answer (`ADMIN_ERRORS`)."""

from __future__ import annotations

import hmac
from collections.abc import Callable, Coroutine
from typing import Any, Final

from fastapi import Request, Response, Security
from fastapi.routing import APIRoute
from fastapi.security import HTTPBearer

from server.api.http_errors import AuthError
from server.api.service_state import service_state
from shared.config import ServiceSecrets

MIN_TOKEN_CHARS: Final[int] = 16  # a shorter (or no) admin token turns admin routes off
ADMIN_ERRORS: Final = (400, 401, 411, 413, 422)  # the token, then the body's length, size and content

# Documents admin routes' bearer token in the OpenAPI schema (a security scheme on each admin route); the
# check itself is AdminFirst's, before the body is read, so this dependency never refuses anything
ADMIN_SECURITY = [
    Security(
        HTTPBearer(
            auto_error=False,
            scheme_name="AdminToken",
            description="the admin token: `Authorization: Bearer <token>` (ServiceConfig.admin_token_env)",
        )
    )
]


def require_admin(secrets: ServiceSecrets, authorization: str | None) -> None:
    """Raise AuthError unless `authorization` carries the admin token (compared in constant time)."""
    token = secrets.admin_token
    if len(token) < MIN_TOKEN_CHARS:
        raise AuthError("admin routes are off: no admin token of at least 16 characters is configured")
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), token.encode()):
        raise AuthError("missing or wrong admin token")


class AdminFirst(APIRoute):
    """The route class of admin routes (`route_class_override=`): it checks the admin token before FastAPI
    reads and validates the body, so a caller without the token gets 401 whatever it sent, a body without
    a Content-Length or over the limit included (BodyLimit refuses those when the body is read, after this
    check: 411, 413). Only the handler is wrapped: the OpenAPI schema still documents the body model."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def checked(request: Request) -> Response:
            require_admin(service_state(request).secrets, request.headers.get("authorization"))
            return await handler(request)

        return checked
