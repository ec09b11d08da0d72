"""``POST|PUT /_bulk`` and ``/{index}/_bulk`` (Elasticsearch's BulkRequestParser, then one item
per action, in order).

Whole-request 400s, as Elasticsearch: a body not ending in a newline, a malformed action line,
an unknown metadata key, a missing index. Our deliberate deviation (docs/elasticsearch.md,
"Deviations"): a bad ``version``/``version_type`` fails only its item (400), because Logstash
retries a whole-request 400 forever but sends a 400 item to its dead-letter queue.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from latest_server.access import principal_of
from latest_server.web.es import params as es_params
from latest_server.web.es import wire
from latest_server.web.es.context import Context
from latest_server.web.es.errors import (
    EsError,
    IllegalArgument,
    ParseError,
    ValidationFailed,
)
from latest_server.web.es.ops import NO_VERSION, ItemResult, WriteOp

OPS = ("index", "create", "update", "delete")
METADATA = frozenset(
    {
        "_index",
        "_id",
        "routing",
        "op_type",
        "version",
        "version_type",
        "if_seq_no",
        "if_primary_term",
        "retry_on_conflict",
        "pipeline",
        "_source",
        "require_alias",
        "require_data_stream",
        "dynamic_templates",
        "list_executed_pipelines",
        "_type",  # 7.x-era shippers; ignored
    }
)

# Builds a Versioning without the Python-level __new__ of a NamedTuple: one per _bulk line.
new_tuple = tuple.__new__

# Metadata that changes how a version is read: absent, an external version needs no more checks.
FORBIDDEN = frozenset({"op_type", "if_seq_no", "if_primary_term"})


def parse(data: bytes, default_index: str | None) -> list[WriteOp]:
    """NDJSON → operations. Raises an EsError for problems that fail the whole request."""
    if not data.strip():
        raise ValidationFailed("no requests added")
    if not data.endswith(b"\n"):
        raise IllegalArgument("The bulk request must be terminated by a newline [\\n]")
    lines = data.split(b"\n")
    count = len(lines)
    ops: list[WriteOp] = []
    missing_index: list[int] = []
    position = 0
    while position < count:
        line = lines[position]
        position += 1
        if not line or line.isspace():  # blank lines are skipped; a trailing \r is JSON space
            continue
        number = position
        try:
            action = orjson.loads(line)
        except orjson.JSONDecodeError:
            raise ParseError(
                f"Malformed action/metadata line [{number}], expected START_OBJECT"
            ) from None
        if not isinstance(action, dict) or len(action) != 1:
            raise IllegalArgument(
                f"Malformed action/metadata line [{number}], expected a simple value for field "
                "[action] but found an object with more than one key"
                if isinstance(action, dict)
                else f"Malformed action/metadata line [{number}], expected START_OBJECT"
            )
        [(op, meta)] = action.items()
        if op not in OPS:
            raise IllegalArgument(
                f"Malformed action/metadata line [{number}], expected one of [create, delete, "
                f"index, update] but found [{op}]"
            )
        if not isinstance(meta, dict):
            raise IllegalArgument(
                f"Malformed action/metadata line [{number}], expected START_OBJECT but found "
                f"[{type(meta).__name__}]"
            )
        if None in meta.values():
            meta = {key: value for key, value in meta.items() if value is not None}
        unknown = None if METADATA.issuperset(meta) else next(k for k in meta if k not in METADATA)
        if unknown is not None:
            raise IllegalArgument(
                f"Action/metadata line [{number}] contains an unknown parameter [{unknown}]"
            )
        index = meta.get("_index", default_index)
        if index is None:
            missing_index.append(len(ops))
            index = ""
        elif type(index) is not str:
            index = _simple(index, "_index", number)
        doc_id = meta.get("_id")
        if doc_id is not None and type(doc_id) is not str:
            doc_id = _simple(doc_id, "_id", number)
        source: bytes | None = None
        if op != "delete":
            while position < count and (not lines[position] or lines[position].isspace()):
                position += 1
            if position >= count:
                raise IllegalArgument(
                    f"action [{op}] at line [{number}] has no source line after it"
                )
            source = lines[position]
            position += 1
        versioning = NO_VERSION
        error = None
        try:
            versioning = _versioning(op, meta)
            if doc_id is None and op in ("update", "delete"):
                raise ValidationFailed("id is missing")
        except EsError as exc:
            error = exc
        ops.append(WriteOp(op, index, doc_id, None, versioning, error, source))
    if missing_index:
        raise ValidationFailed(*("index is missing" for _ in missing_index))
    return ops


def _simple(value: Any, name: str, number: int) -> str:
    """A metadata value that must be a string: a number or boolean is taken as its text (as
    Elasticsearch reads it); an object or array fails the request, never written out."""
    if isinstance(value, (dict, list)):
        found = "START_OBJECT" if isinstance(value, dict) else "START_ARRAY"
        raise IllegalArgument(
            f"Malformed action/metadata line [{number}], expected a simple value for field "
            f"[{name}] but found [{found}]"
        )
    return orjson.dumps(value).decode() if isinstance(value, bool) else str(value)


def _versioning(op: str, meta: dict[str, Any]) -> es_params.Versioning:
    version = meta.get("version")
    version_type = meta.get("version_type")
    if (
        version_type == "external"
        and type(version) is int
        and 0 <= version <= es_params.LONG_MAX
        and op == "index"
        and FORBIDDEN.isdisjoint(meta)
    ):
        # What Logstash and helpers.bulk send on every line, checked in one step; the same
        # answer as es_params.versioning gives.
        return new_tuple(es_params.Versioning, (version, "external"))
    es_params.refuse_seq_no(meta)
    if op == "update":
        if version is not None or version_type is not None:
            raise ValidationFailed("Update requests do not support versioning")
        return es_params.Versioning(None, None)
    op_type = es_params.text(meta.get("op_type", op)).lower()
    if op == "delete":
        op_type = "index"
    return es_params.versioning(version, version_type, "create" if op == "create" else op_type)


async def bulk(ctx: Context, request: Request, index: str | None) -> Response:
    started = time.perf_counter()
    es_params.check_refresh(request.query_params)
    data = await wire.body(request, ctx.settings.max_body_bytes)
    ops = parse(data, index)
    results = await ctx.writer.run(ops, principal_of(request.scope))
    items, errors = answer(ops, results)
    took = int((time.perf_counter() - started) * 1000)
    return wire.respond(request, {"took": took, "errors": errors, "items": items})


def answer(ops: list[WriteOp], results: list[ItemResult]) -> tuple[list[dict[str, Any]], bool]:
    """The response's items, one ``{op: {..., "status"}}`` per operation in order, and whether
    any of them failed (a delete of a missing document, 404 without an error, did not)."""
    items = []
    errors = False
    for op, result in zip(ops, results, strict=True):
        body = result.body
        body["status"] = result.status
        errors = errors or result.failed
        items.append({op.op: body})
    return items, errors
