"""Every error becomes JSON ``{"error": {"type": <code>, "reason": <message>}}`` here, once."""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from latest_server.errors import (
    BadRequest,
    ConfigError,
    Forbidden,
    LatestError,
    NotFound,
    PacketRejected,
    StoreUnavailable,
    Unauthorized,
)
from latest_server.web._request import json_error

STATUS = {
    BadRequest: 400,
    PacketRejected: 400,
    NotFound: 404,
    Unauthorized: 401,
    Forbidden: 403,
    StoreUnavailable: 503,
    ConfigError: 500,
}
HTTP_TYPES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
}


async def latest_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, LatestError)
    status = next((code for cls, code in STATUS.items() if isinstance(exc, cls)), 500)
    return json_error(status, exc.reason, exc.message)


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    type_ = HTTP_TYPES.get(exc.status_code, "http_error")
    return json_error(exc.status_code, type_, str(exc.detail))


HANDLERS = {LatestError: latest_error, HTTPException: http_error}
