"""The HTTP side of the Elasticsearch-compatible API: bodies (gzip), media types, query
parameters, versions, ``_source`` and ``filter_path`` filtering, and JSON responses carrying the
``X-Elastic-Product`` header that both Logstash and elasticsearch-py check."""

from __future__ import annotations

import fnmatch
import functools
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson
from starlette.requests import Request
from starlette.responses import Response

from latest_server.web.es_errors import (
    EsError,
    IllegalArgument,
    ParseError,
    TooLarge,
    ValidationFailed,
)
from latest_server.web.ingest import read_body

PRODUCT_HEADER = {"X-Elastic-Product": "Elasticsearch"}
JSON = "application/json"
# Lua numbers are doubles: versions stay exact up to 2**53 (epoch µs until the year 2255).
MAX_VERSION = 2**53
LONG_MAX = 2**63 - 1
VERSION_TYPES = ("internal", "external", "external_gt", "external_gte")
REFRESH_VALUES = ("", "true", "false", "wait_for")


async def body(request: Request, limit: int) -> bytes:
    """The request body, gunzipped when ``Content-Encoding: gzip``; 413 past ``limit`` bytes."""
    raw = await read_body(request, limit)
    if raw is None:
        raise TooLarge(f"request body is larger than {limit} bytes (LATEST_MAX_BODY_BYTES)")
    if request.headers.get("content-encoding", "").strip().lower() in ("gzip", "x-gzip"):
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            raw = inflater.decompress(raw, limit + 1)
        except zlib.error as exc:
            raise ParseError(f"request body is not valid gzip: {exc}") from None
        if len(raw) > limit or inflater.unconsumed_tail:
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
        content = filter_path(content, paths.split(","))
    return Response(
        orjson.dumps(content), status, headers=PRODUCT_HEADER, media_type=media_type(request)
    )


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
    return result


def _filter_source(
    source: dict[str, Any], includes: tuple[str, ...], excludes: tuple[str, ...], prefix: str
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in source.items():
        path = prefix + key
        if any(fnmatch.fnmatchcase(path, pattern) for pattern in excludes):
            continue
        if not includes or any(fnmatch.fnmatchcase(path, pattern) for pattern in includes):
            if isinstance(value, dict) and excludes:
                value = _filter_source(value, (), excludes, path + ".")
            out[key] = value
        elif isinstance(value, dict) and any(
            pattern.startswith(path + ".") or "*" in pattern for pattern in includes
        ):
            inner = _filter_source(value, includes, excludes, path + ".")
            if inner:
                out[key] = inner
    return out


def filter_path(content: Any, patterns: Iterable[str]) -> Any:
    """Keep the parts of a response named by dotted ``filter_path`` patterns (``*`` = any one
    key, ``**`` = any depth); lists are walked through. Empty results become ``{}``."""
    parsed = tuple(tuple(p.strip().split(".")) for p in patterns if p.strip())
    kept = _keep(content, _level(parsed))
    return {} if kept is _NOTHING else kept


_NOTHING = object()
GLOB_CHARS = frozenset("*?[")
MAX_MOVES = 1024  # keys remembered per _Level: a response's keys repeat, a document's may not


class _Level:
    """Where matching stands: the patterns' remaining parts. Which level each key leads to is
    worked out once and remembered, as the items of a ``_bulk`` answer repeat the same keys
    (Logstash filters every answer with ``errors,items.*.error,items.*.status``)."""

    __slots__ = ("moves", "names", "patterns", "whole")

    def __init__(self, patterns: tuple[tuple[str, ...], ...]) -> None:
        self.patterns = patterns
        self.whole = () in patterns  # a pattern ends here: the value is kept whole
        heads = dict.fromkeys(pattern[0] for pattern in patterns if pattern)  # in their order
        # Names only: each is looked up, rather than every key of the value walked.
        self.names = tuple(heads) if all(GLOB_CHARS.isdisjoint(h) for h in heads) else None
        self.moves: dict[str, _Level | None] = {}

    def move(self, key: str) -> _Level | None:
        """The level below ``key``; None: nothing below it is kept."""
        if key in self.moves:
            return self.moves[key]
        rest = []
        for pattern in self.patterns:
            head = pattern[0]
            if head == "**":
                rest.append(pattern)  # ** goes on matching deeper
                if len(pattern) > 1 and _matches(key, pattern[1]):
                    rest.append(pattern[2:])
            elif _matches(key, head):
                rest.append(pattern[1:])
        level = _level(tuple(rest)) if rest else None
        if len(self.moves) < MAX_MOVES:
            self.moves[key] = level
        return level


@functools.lru_cache(maxsize=128)  # at most 128 x MAX_MOVES keys remembered in all
def _level(patterns: tuple[tuple[str, ...], ...]) -> _Level:
    return _Level(patterns)


def _matches(key: str, head: str) -> bool:
    return head in ("*", key) or (
        not GLOB_CHARS.isdisjoint(head) and fnmatch.fnmatchcase(key, head)
    )


def _keep(value: Any, level: _Level) -> Any:
    if level.whole:
        return value
    if isinstance(value, list):
        items = [_keep(item, level) for item in value]
        items = [item for item in items if item is not _NOTHING]
        return items if items else _NOTHING
    if not isinstance(value, dict):
        return _NOTHING
    out = {}
    for key in value if level.names is None else level.names:
        if key in value:
            child = level.move(key)
            if child is not None:
                kept = _keep(value[key], child)
                if kept is not _NOTHING:
                    out[key] = kept
    return out if out else _NOTHING
