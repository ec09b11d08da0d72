"""The HTTP side of the Elasticsearch-compatible API: bodies (gzip), media types, query
parameters, versions, ``_source`` and ``filter_path`` filtering, and JSON responses carrying the
``X-Elastic-Product`` header that both Logstash and elasticsearch-py check."""

from __future__ import annotations

import fnmatch
import functools
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson
from starlette.requests import Request
from starlette.responses import Response

from latest_server.web._request import BadEncoding, decode, read_body
from latest_server.web.es.errors import (
    EsError,
    IllegalArgument,
    ParseError,
    TooLarge,
    ValidationFailed,
)
from latest_server.web.es.filtering import filter_path

PRODUCT_HEADER = {"X-Elastic-Product": "Elasticsearch"}
JSON = "application/json"
# Lua numbers are doubles: versions stay exact up to 2**53 (epoch µs until the year 2255).
MAX_VERSION = 2**53
LONG_MAX = 2**63 - 1
VERSION_TYPES = ("internal", "external", "external_gt", "external_gte")
REFRESH_VALUES = ("", "true", "false", "wait_for")
MAX_SOURCE_PATTERNS = 100


async def body(request: Request, limit: int) -> bytes:
    """The request body, decoded by its ``Content-Encoding`` (web/_request.py: every gzip
    member, or a 400 ``parse_exception``); 413 past ``limit`` bytes, sent or decoded."""
    raw = await read_body(request, limit)
    if raw is not None:
        try:
            raw = decode(raw, request.headers.get("content-encoding"), limit)
        except BadEncoding as exc:
            raise ParseError(exc.message) from None
    if raw is None:
        raise TooLarge(f"request body is larger than {limit} bytes (LATEST_MAX_BODY_BYTES)")
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


# --- query parameters ----------------------------------------------------------------------


def flag(params: Mapping[str, str], name: str, default: bool = False) -> bool:
    value = params.get(name)
    if value is None:
        return default
    lowered = value.lower()
    if lowered in ("", "true"):
        return True
    if lowered == "false":
        return False
    raise IllegalArgument(f"Failed to parse value [{value}] as only [true] or [false] are allowed.")


def check_refresh(params: Mapping[str, str]) -> bool:
    """Writes are visible at once; ``refresh`` is accepted. True when a refresh was forced."""
    value = params.get("refresh")
    if value is None:
        return False
    if value not in REFRESH_VALUES:
        raise IllegalArgument(f"Unknown value for refresh: [{value}].")
    return value in ("", "true")


class Versioning(NamedTuple):  # one per _bulk line: a tuple builds faster than a dataclass
    """What a write asked for: ``version`` (None: the packet's time) and its type."""

    version: int | None
    version_type: str | None  # "external", "external_gte", "create"; None: the server default


def text(value: Any) -> str:
    """A parameter's value as text for a check or a message: an object or array is named, not
    written out (a JSON body may nest it deeper than ``str`` can recurse)."""
    if isinstance(value, str):
        return value
    if isinstance(value, (dict, list)):
        return "START_OBJECT" if isinstance(value, dict) else "START_ARRAY"
    return orjson.dumps(value).decode() if isinstance(value, bool) else str(value)


def parse_long(value: Any, name: str = "version") -> int:
    number: int | None = None
    if type(value) is int:
        number = value
    elif isinstance(value, str):
        digits = value.strip()
        unsigned = digits[1:] if digits.startswith("-") else digits
        # ASCII digits only: int() also takes other scripts' digits and refuses some that
        # isdigit() calls digits (superscripts), and more than 4 300 of them; a long has 19
        # (64 leave room for leading zeros)
        if unsigned.isascii() and unsigned.isdecimal() and len(unsigned) <= 64:
            number = int(digits)
    if number is None or not -LONG_MAX - 1 <= number <= LONG_MAX:
        raise IllegalArgument(
            f"Failed to parse long parameter [{name}] with value [{text(value)[:64]}]"
        )
    return number


def versioning(version: Any, version_type: Any, op_type: str) -> Versioning:
    """Validate ``version``/``version_type``/``op_type`` as Elasticsearch does (400s with its
    messages). Our deviation, versions past 2**53 refused (not exact in Lua), is the writer's:
    it depends on the version's scale (es_versions)."""
    kind = "internal" if version_type is None else text(version_type).lower()
    if kind not in VERSION_TYPES:
        raise IllegalArgument(f"No version type match [{text(version_type)[:64]}]")
    number = None if version is None else parse_long(version)
    if op_type == "create":
        if number is not None or kind != "internal":
            raise ValidationFailed(
                "create operations only support internal versioning. use index instead"
            )
        return Versioning(None, "create")
    if kind == "internal":
        if number is not None:
            raise ValidationFailed(
                "internal versioning can not be used for optimistic concurrency control. "
                "Please use `if_seq_no` and `if_primary_term` instead"
            )
        return Versioning(None, None)
    kind = "external" if kind == "external_gt" else kind
    if number is None:
        number = -3  # Elasticsearch's "match any", which external types refuse
    if number < 0:
        raise ValidationFailed(
            f"illegal version value [{number}] for version type [{kind.upper()}]"
        )
    return Versioning(number, kind)  # its scale, and the 2**53 bound, are es_versions


def refuse_seq_no(params: Mapping[str, Any]) -> None:
    if params.get("if_seq_no") is not None or params.get("if_primary_term") is not None:
        raise IllegalArgument(
            "if_seq_no and if_primary_term are not supported by latest-server: use "
            "version_type=external with the packet time as the version"
        )


# --- _source and filter_path -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SourceFilter:
    enabled: bool = True
    includes: tuple[str, ...] = ()
    excludes: tuple[str, ...] = ()

    @property
    def whole(self) -> bool:
        return self.enabled and not self.includes and not self.excludes

    def apply(self, source: dict[str, Any]) -> dict[str, Any]:
        return _filter_source(source, self.includes, self.excludes, "")


def _names(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    if isinstance(value, list):
        return tuple(text(part) for part in value)
    return ()


def source_filter(
    params: Mapping[str, Any], spec: Any = None, base: SourceFilter | None = None
) -> SourceFilter:
    """From query parameters (``_source``, ``_source_includes``, ``_source_excludes``) or an
    mget doc's ``_source`` (bool, list or {"includes", "excludes"}), over ``base`` defaults."""
    result = base or SourceFilter()
    if spec is None:
        spec = params.get("_source")
        if isinstance(spec, str) and spec.lower() in ("true", "false"):
            spec = spec.lower() == "true"
    if isinstance(spec, bool):
        result = SourceFilter(spec, result.includes, result.excludes)
    elif isinstance(spec, (str, list)):
        result = SourceFilter(True, _names(spec), result.excludes)
    elif isinstance(spec, dict):
        result = SourceFilter(
            True, _names(spec.get("includes", [])), _names(spec.get("excludes", []))
        )
    includes = _names(params.get("_source_includes"))
    excludes = _names(params.get("_source_excludes"))
    if includes or excludes:
        result = SourceFilter(True, includes or result.includes, excludes or result.excludes)
    count = len(result.includes) + len(result.excludes)
    if count > MAX_SOURCE_PATTERNS:  # each is tried on every path of the document
        raise IllegalArgument(
            f"_source has {count} include and exclude patterns, more than the "
            f"{MAX_SOURCE_PATTERNS} latest-server takes"
        )
    return result


def _filter_source(
    source: dict[str, Any], includes: tuple[str, ...], excludes: tuple[str, ...], prefix: str
) -> dict[str, Any]:
    included, excluded = _globs(includes), _globs(excludes)
    deeper = any("*" in pattern for pattern in includes)
    out: dict[str, Any] = {}
    for key, value in source.items():
        path = prefix + key
        if excluded(path):
            continue
        if not includes or included(path):
            if isinstance(value, dict) and excludes:
                value = _filter_source(value, (), excludes, path + ".")
            out[key] = value
        elif isinstance(value, dict) and (
            deeper or any(pattern.startswith(path + ".") for pattern in includes)
        ):
            inner = _filter_source(value, includes, excludes, path + ".")
            if inner:
                out[key] = inner
    return out


@functools.lru_cache(maxsize=256)
def _globs(patterns: tuple[str, ...]) -> Callable[[str], bool]:
    """Whether a path matches any of ``patterns``: one regular expression for them all, so a
    path costs one match in C rather than a Python call per pattern."""
    if not patterns:
        return lambda path: False
    regex = re.compile("|".join(fnmatch.translate(pattern) for pattern in patterns))
    return lambda path: regex.match(path) is not None
