"""The wire of the Elasticsearch-compatible API: request bodies (gzip, JSON), media types, and
responses carrying the ``X-Elastic-Product`` header that both Logstash and elasticsearch-py
check, filtered by ``filter_path``. Query parameters and versioning: web/es/params.py;
``_source`` and ``filter_path``: web/es/filtering.py."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from latest_server.web._request import BadEncoding, read_decoded
from latest_server.web.es.errors import (
    EsError,
    ParseError,
    TooLarge,
)
from latest_server.web.es.filtering import filter_path

PRODUCT_HEADER = {"X-Elastic-Product": "Elasticsearch"}
JSON = "application/json"


async def body(request: Request, limit: int, setting: str = "LATEST_MAX_BODY_BYTES") -> bytes:
    """The request body, decoded by its ``Content-Encoding`` (web/_request.py: every gzip
    member, or a 400 ``parse_exception``); 413 past ``limit`` bytes (``setting``), sent or
    decoded."""
    try:
        raw = await read_decoded(request, limit)
    except BadEncoding as exc:
        raise ParseError(exc.message) from None
    if raw is None:
        raise TooLarge(f"request body is larger than {limit} bytes ({setting})")
    return raw


def json_body(data: bytes, *, required: bool = True) -> Any:
    if not data.strip():
        if required:
            raise ParseError("request body is required")
        return None
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ParseError(f"request body is not valid JSON: {exc}") from None


def media_type(request: Request) -> str:
    """Echo the vendor type elasticsearch-py asks for (any ``compatible-with``), else JSON."""
    accept = request.headers.get("accept", "")
    if "application/vnd.elasticsearch+json" in accept:
        version = accept.partition("compatible-with=")[2][:1]
        if version.isdigit():
            return f"application/vnd.elasticsearch+json;compatible-with={version}"
    return JSON


def respond(request: Request, content: Any, status: int = 200) -> Response:
    if request.method == "HEAD":
        return Response(None, status, headers=PRODUCT_HEADER, media_type=JSON)
    paths = request.query_params.get("filter_path")
    if paths:
        content = filter_path(content, paths)
    return Response(
        orjson.dumps(content), status, headers=PRODUCT_HEADER, media_type=media_type(request)
    )


def raw(request: Request) -> bool:
    """Whether a stored document may be answered as its bytes (an ``orjson.Fragment``):
    not when ``filter_path`` has to look inside it."""
    return "filter_path" not in request.query_params


def error_response(request: Request, exc: EsError) -> Response:
    return Response(
        None if request.method == "HEAD" else orjson.dumps(exc.body()),
        exc.status,
        headers=PRODUCT_HEADER,
        media_type=JSON,
    )
