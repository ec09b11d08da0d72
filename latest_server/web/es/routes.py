"""The Elasticsearch-compatible API: what Logstash's elasticsearch output and the official
Python client (8.x, 9.x) need to keep "the latest document per resource" here instead of in an
Elasticsearch index (docs/elasticsearch.md has the surface and the deviations).

One endpoint, ``dispatch``, routes on the raw path (resource ids contain ``/``, sent as ``%2F``,
which Starlette's decoded path would split), answers every error in Elasticsearch's shape and
puts ``X-Elastic-Product: Elasticsearch`` on every response. ``ROUTES`` is served on its own
listener (LATEST_ES_PORT, see web/app.py create_es_app) and can be mounted under a prefix of
the main app (LATEST_ES_PREFIX).

Housekeeping (cluster info, license, templates, health, indices): web/es/cluster.py.
Documents: web/es/docs.py; ``_bulk``: web/es/bulk.py.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import quote, unquote

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from latest_server.errors import LatestError
from latest_server.web._request import param, suggestion, unknown
from latest_server.web.es import bulk as es_bulk
from latest_server.web.es import cluster
from latest_server.web.es import docs as es_docs
from latest_server.web.es import mapping as es_mapping
from latest_server.web.es import search as es_search
from latest_server.web.es.context import Context
from latest_server.web.es.errors import (
    EsError,
    IllegalArgument,
    MethodNotAllowed,
    NoHandler,
    from_latest_error,
)
from latest_server.web.es.filtering import compile_filter
from latest_server.web.es.wire import error_response

log = logging.getLogger(__name__)

Handler = Callable[..., Awaitable[Response]]


async def write_doc(ctx: Context, request: Request, index: str, doc_id: str) -> Response:
    return await es_docs.write(ctx, request, index, doc_id, None)


async def write_auto_id(ctx: Context, request: Request, index: str) -> Response:
    return await es_docs.write(ctx, request, index, None, None)


async def create_doc(ctx: Context, request: Request, index: str, doc_id: str) -> Response:
    return await es_docs.write(ctx, request, index, doc_id, "create")


async def mget_all(ctx: Context, request: Request) -> Response:
    return await es_docs.mget(ctx, request, None)


async def bulk_all(ctx: Context, request: Request) -> Response:
    return await es_bulk.bulk(ctx, request, None)


# Path patterns: a literal segment, or "*" (any segment; in the first position, one that does
# not start with "_", as Elasticsearch's index names). Literal patterns are listed first.
TABLE: list[tuple[tuple[str, ...], dict[str, Handler]]] = [
    ((), {"GET": cluster.info, "HEAD": cluster.info}),
    (("_license",), {"GET": cluster.license_}),
    (("_bulk",), {"POST": bulk_all, "PUT": bulk_all}),
    (("_mget",), {"GET": mget_all, "POST": mget_all}),
    (("_refresh",), {"GET": cluster.refresh, "POST": cluster.refresh}),
    (("_msearch",), {"GET": es_search.msearch_all, "POST": es_search.msearch_all}),
    (("_cluster", "health"), {"GET": cluster.health}),
    (("_cluster", "health", "*"), {"GET": cluster.health}),
    (
        ("_index_template", "*"),
        {
            "HEAD": cluster.template_exists,
            "GET": cluster.template_exists,
            "PUT": cluster.acknowledged,
        },
    ),
    (
        ("_template", "*"),
        {
            "HEAD": cluster.template_exists,
            "GET": cluster.template_exists,
            "PUT": cluster.acknowledged,
        },
    ),
    (("_ilm", "policy", "*"), {"GET": cluster.ilm_policy, "PUT": cluster.acknowledged}),
    (("_nodes",), {"GET": cluster.nodes}),
    (("_nodes", "*"), {"GET": cluster.nodes}),
    (("_xpack",), {"GET": cluster.xpack}),
    (
        ("*",),
        {"HEAD": cluster.index_exists, "GET": cluster.index_exists, "PUT": cluster.create_index},
    ),
    (("*", "_doc"), {"POST": write_auto_id}),
    (
        ("*", "_doc", "*"),
        {
            "PUT": write_doc,
            "POST": write_doc,
            "GET": es_docs.get,
            "HEAD": es_docs.get,
            "DELETE": es_docs.delete,
        },
    ),
    (("*", "_create", "*"), {"PUT": create_doc, "POST": create_doc}),
    (("*", "_update", "*"), {"POST": es_docs.update}),
    (("*", "_source", "*"), {"GET": es_docs.get_source, "HEAD": es_docs.get_source}),
    (("*", "_mget"), {"GET": es_docs.mget, "POST": es_docs.mget}),
    (("*", "_bulk"), {"POST": es_bulk.bulk, "PUT": es_bulk.bulk}),
    (("*", "_refresh"), {"GET": cluster.refresh, "POST": cluster.refresh}),
    (("*", "_search"), {"GET": es_search.search, "POST": es_search.search}),
    (("*", "_msearch"), {"GET": es_search.msearch, "POST": es_search.msearch}),
    (("*", "_count"), {"GET": es_search.count, "POST": es_search.count}),
    (("*", "_mapping"), {"GET": es_mapping.mapping}),
    (("*", "_field_caps"), {"GET": es_mapping.field_caps, "POST": es_mapping.field_caps}),
]


# Query parameters, as Elasticsearch's handlers consume them: any other is a 400
# (``illegal_argument_exception``, "contains unrecognized parameter"). COMMON are taken on every
# route (the official client may send them all). Parameters about shards, routing and waiting
# (``timeout``, ``routing``, ``wait_for_active_shards``, ``master_timeout``...) are taken and mean
# nothing here: one shard, real-time, every write visible at once. One that would change what is
# stored or answered and is not implemented (``pipeline``, ``stored_fields``, ``_source`` on
# ``_update``) is refused rather than ignored.
COMMON = ("filter_path", "pretty", "human", "error_trace")
WAITS = ("timeout", "master_timeout", "wait_for_active_shards")
WRITES = (*WAITS, "refresh", "routing", "require_alias", "include_source_on_error")
VERSIONED = ("version", "version_type", "if_seq_no", "if_primary_term")
READS: tuple[str, ...] = ("_source", "_source_includes", "_source_excludes", "refresh")
READS += ("preference", "realtime", "routing")
INDICES = ("allow_no_indices", "expand_wildcards", "ignore_unavailable")
# Searches: the parameters Grafana's data source and the official client send. ``typed_keys``
# (which renames aggregations in the answer) and ``q`` are refused rather than ignored.
SEARCH_COMMON: tuple[str, ...] = (
    *INDICES,
    "max_concurrent_shard_requests",
    "ignore_throttled",
    "search_type",
)
SEARCH_COMMON += ("rest_total_hits_as_int", "pre_filter_shard_size", "ccs_minimize_roundtrips")
SEARCH: tuple[str, ...] = (*SEARCH_COMMON, "size", "from", "timeout", "track_total_hits")
SEARCH += ("_source", "_source_includes", "_source_excludes", "preference", "routing")
SEARCH += ("request_cache", "allow_partial_search_results", "batched_reduce_size")
MSEARCH = (*SEARCH_COMMON, "max_concurrent_searches", "routing")
PARAMS: dict[Handler, tuple[str, ...]] = {
    cluster.info: (),
    cluster.license_: ("accept_enterprise", "local"),
    cluster.acknowledged: ("create", "cause", *WAITS),
    cluster.template_exists: ("local", "flat_settings", "include_defaults", "master_timeout"),
    cluster.ilm_policy: WAITS,
    cluster.xpack: ("categories", "accept_enterprise"),
    cluster.nodes: ("flat_settings", "timeout"),
    cluster.health: (
        *INDICES,
        *WAITS,
        "level",
        "local",
        "wait_for_events",
        "wait_for_nodes",
        "wait_for_status",
        "wait_for_no_initializing_shards",
        "wait_for_no_relocating_shards",
    ),
    cluster.refresh: INDICES,
    cluster.index_exists: (
        *INDICES,
        "flat_settings",
        "include_defaults",
        "local",
        "master_timeout",
    ),
    cluster.create_index: WAITS,
    write_doc: (*WRITES, *VERSIONED, "op_type", "require_data_stream"),
    write_auto_id: (*WRITES, *VERSIONED, "op_type", "require_data_stream"),
    create_doc: (*WRITES, *VERSIONED, "require_data_stream"),
    es_docs.update: (*WRITES, *VERSIONED, "retry_on_conflict"),
    es_docs.delete: (*WRITES, *VERSIONED),
    es_docs.get: READS,
    es_docs.get_source: READS,
    es_docs.mget: READS,
    mget_all: READS,
    es_bulk.bulk: (*WRITES, "require_data_stream", "list_executed_pipelines"),
    bulk_all: (*WRITES, "require_data_stream", "list_executed_pipelines"),
    es_search.search: SEARCH,
    es_search.count: (*INDICES, "preference", "routing", "ignore_throttled"),
    es_search.msearch: MSEARCH,
    es_search.msearch_all: MSEARCH,
    es_mapping.mapping: (*INDICES, "local", "master_timeout"),
    es_mapping.field_caps: (*INDICES, "fields", "include_unmapped", "include_empty_fields"),
}


def check_params(request: Request, path: str, handler: Handler) -> None:
    """Elasticsearch's answer to a parameter its handler does not consume, before anything is
    read or written; a ``filter_path`` past its bound is refused here too, not after a write."""
    allowed = (*COMMON, *PARAMS.get(handler, ()))
    names = unknown(request, allowed)
    if names:
        listed = ", ".join(f"[{name}]{_did_you_mean(name, allowed)}" for name in names)
        plural = "s" if len(names) > 1 else ""
        raise IllegalArgument(f"request [{path}] contains unrecognized parameter{plural}: {listed}")
    value = request.query_params.get("filter_path")
    if value:
        compile_filter(value)


def _did_you_mean(name: str, allowed: tuple[str, ...]) -> str:
    close = suggestion(name, allowed)
    if not close:
        return ""
    if len(close) == 1:
        return f" -> did you mean [{close[0]}]?"
    return f" -> did you mean any of [{', '.join(close)}]?"


def match(parts: list[str]) -> tuple[dict[str, Handler], list[str]] | None:
    """The handlers of the first pattern ``parts`` fits, and the values of its ``*``s."""
    for pattern, handlers in TABLE:
        if len(pattern) != len(parts):
            continue
        values = []
        for position, (want, part) in enumerate(zip(pattern, parts, strict=True)):
            if want == "*":
                if position == 0 and part.startswith("_"):
                    break
                values.append(part)
            elif want != part:
                break
        else:
            return handlers, values
    return None


def route_path(scope: MutableMapping[str, Any]) -> str:
    """The path below the mount point, still percent-encoded (``%2F`` stays inside a segment)."""
    raw = scope.get("raw_path")
    path = raw.decode("latin-1").split("?", 1)[0] if raw else quote(scope["path"])
    root = quote(scope.get("root_path", ""))
    if root and path.startswith(root):
        path = path[len(root) :]
    return path or "/"


def context(request: Request) -> Context:
    state = request.app.state
    found: Context | None = getattr(state, "es_context", None)
    if found is None:
        found = Context.build(state.resources)
        state.es_context = found
    return found


async def dispatch(request: Request) -> Response:
    path = route_path(request.scope)
    stripped = path.strip("/")
    parts = [unquote(part) for part in stripped.split("/")] if stripped else []
    method = request.method
    try:
        found = match(parts)
        if found is None:
            raise NoHandler(method, unquote(path))
        handlers, values = found
        handler = handlers.get(method)
        if handler is None:
            raise MethodNotAllowed(method, unquote(path), sorted(handlers))
        check_params(request, unquote(path), handler)
        return await handler(context(request), request, *values)
    except EsError as exc:
        return error_response(request, exc)
    except LatestError as exc:
        return error_response(request, from_latest_error(exc))
    except ClientDisconnect:  # gone, or its body timed out: nobody to answer (http_timeouts.py)
        raise
    except Exception as exc:  # the client still gets an Elasticsearch-shaped answer
        log.exception("Elasticsearch-compatible API: %s %s failed", method, path)
        return error_response(request, EsError(f"{type(exc).__name__}: {exc}"))


METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE"]
ROUTES = [
    Route("/", dispatch, methods=METHODS),
    Route("/" + param("path"), dispatch, methods=METHODS),
]
