"""Request helpers the three rooms of web/ (http, es, ws) share, so that none imports another:
paths whose parameters hold any character, reading and decoding a body (gzip), the JSON error
body of the REST API, and the names of unknown query parameters with their "did you mean".

**Paths.** Variable ids and ES ``_id``s are free text: ``\\n``, ``\\t``, ``%``, ``/``, ``?``,
``#``, emoji arrive percent-encoded and are decoded into the path before routing. Starlette's
``path`` convertor is ``.*``, which stops at a line break, so an id with ``\\n`` could be written
but never read back (and ``$`` matching before a final newline sent ``a\\n`` to ``a``).
``{name:any}`` matches every character instead, and ``Mount`` here routes what it mounts the
same way.

**Bodies.** Request bodies sent with ``Content-Encoding: gzip`` (Logstash compresses every
``_bulk``, the official client with ``http_compress=True``) are decoded for ``POST /ingest`` and
the Elasticsearch-compatible API alike. A gzip stream may be several members back to back
(RFC 1952 §2.2: ``cat a.gz b.gz`` is valid gzip, and so is what a streaming compressor emits
once per flush); every member is decoded, in order. A stream that stops before its last member's
trailer, or has anything but zero padding after it, is refused: decoding only what came first
would acknowledge packets that were never read. The size limit holds on the decoded bytes,
member after member, so a small body cannot inflate past it (a gzip bomb costs at most
``limit`` bytes of output).
"""

from __future__ import annotations

import difflib
import zlib
from collections.abc import Collection, Iterable, Sequence
from typing import Any

import orjson
from starlette import routing
from starlette.convertors import Convertor, register_url_convertor
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import compile_path

from latest_server.access import principal_of
from latest_server.errors import BadRequest, Forbidden
from latest_server.settings import Settings

# --- paths -----------------------------------------------------------------------------------


class AnyConvertor(Convertor[str]):
    regex = "(?s:.*)"  # dot matches a newline too

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("any", AnyConvertor())


def param(name: str) -> str:
    """``{name:any}``, for a route's path (importing this module registers ``any``)."""
    return "{" + name + ":any}"


class Mount(routing.Mount):
    """starlette's Mount, handing every remaining path (newlines included) to its routes."""

    def __init__(self, path: str, routes: Sequence[routing.BaseRoute]) -> None:
        super().__init__(path, routes=routes)
        self.path_regex, self.path_format, self.param_convertors = compile_path(
            self.path + "/{path:any}"
        )


# --- query parameters ------------------------------------------------------------------------


def unknown(request: Request, allowed: Collection[str]) -> list[str]:
    """The request's parameters outside ``allowed``, sorted."""
    return sorted({name for name in request.query_params if name not in allowed})


def suggestion(name: str, allowed: Iterable[str]) -> list[str]:
    """Known names close to a misspelt one (Elasticsearch's "did you mean")."""
    return difflib.get_close_matches(name, sorted(allowed), n=3, cutoff=0.6)


# --- the REST API's error body ---------------------------------------------------------------


def error_body(type_: str, reason: str, **extra: Any) -> bytes:
    return orjson.dumps({"error": {"type": type_, "reason": reason}, **extra})


def json_error(status: int, type_: str, reason: str, **extra: Any) -> Response:
    headers = {"Retry-After": "1"} if status == 503 else None
    return Response(
        error_body(type_, reason, **extra), status, headers=headers, media_type="application/json"
    )


def covered(request: Request, ids: Sequence[str]) -> None:
    """Refuse (403) a request naming a variable outside its token's prefixes."""
    principal = principal_of(request.scope)
    if principal.prefixes is None:
        return
    outside = [i for i in ids if not principal.covers(i)]
    if outside:
        named = ", ".join(repr(i) for i in outside[:5]) + (", ..." if len(outside) > 5 else "")
        raise Forbidden(f"token {principal.name!r} may not read {named}: outside its prefixes")


# --- bodies ----------------------------------------------------------------------------------


def mget_bound(settings: Settings) -> tuple[int, str]:
    """The bound of a multi-get body and the setting that sets it: LATEST_MAX_MGET_BYTES, or
    LATEST_MAX_BODY_BYTES (every body's) when that is lower."""
    if settings.max_mget_bytes <= settings.max_body_bytes:
        return settings.max_mget_bytes, "LATEST_MAX_MGET_BYTES"
    return settings.max_body_bytes, "LATEST_MAX_BODY_BYTES"


async def read_body(request: Request, limit: int) -> bytes | None:
    """The body, or None once it grows past ``limit`` bytes (we stop reading there)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        return None
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


async def read_decoded(request: Request, limit: int) -> bytes | None:
    """The body as sent before compression (gzip: every member); None once it grows past
    ``limit`` bytes, sent or decoded. Raises BadEncoding for a body it cannot decode."""
    raw = await read_body(request, limit)
    if raw is None:
        return None
    return decode(raw, request.headers.get("content-encoding"), limit)


GZIP = ("gzip", "x-gzip")
IDENTITY = ("", "identity")
GZIP_WBITS = 16 + zlib.MAX_WBITS  # a gzip header and trailer around deflate data


class BadEncoding(BadRequest):
    """A body we cannot decode: damaged, truncated, or in an encoding we do not speak."""

    reason = "bad_encoding"


def decode(raw: bytes, content_encoding: str | None, limit: int) -> bytes | None:
    """The body as sent before compression; None once it decodes past ``limit`` bytes."""
    encoding = (content_encoding or "").strip().lower()
    if encoding in IDENTITY:
        return raw
    if encoding in GZIP:
        return gunzip(raw, limit)
    raise BadEncoding(
        f"Content-Encoding [{content_encoding}] is not supported: send gzip or no encoding"
    )


def gunzip(data: bytes, limit: int) -> bytes | None:
    """Every member of a gzip stream, concatenated; None past ``limit`` decoded bytes."""
    if not data:
        return b""
    out: list[bytes] = []
    size = 0
    member = 0
    while True:
        member += 1
        inflater = zlib.decompressobj(GZIP_WBITS)
        try:
            chunk = inflater.decompress(data, limit + 1 - size)
        except zlib.error as exc:
            raise BadEncoding(f"request body is not valid gzip (member {member}): {exc}") from None
        size += len(chunk)
        if size > limit or inflater.unconsumed_tail:
            return None
        if not inflater.eof:
            raise BadEncoding(
                f"request body is truncated gzip: member {member} ends before its trailer"
            )
        out.append(chunk)
        data = inflater.unused_data.lstrip(b"\0")  # zero padding after a member, as gzip(1)
        if not data:
            return b"".join(out)
