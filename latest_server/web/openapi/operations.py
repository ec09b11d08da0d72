"""The operations of the REST API, by path and method, as OpenAPI ``paths`` entries.

Each operation's query parameters are the names its route declares to ``strict`` (web/app.py
passes ``history.PARAMS``, ``sessions.PARAMS``, ``latest.LIST_PARAMS``): the same tuples are
read here, each name described once in ``QUERY``. A name a route takes without a description
here fails the document's build (and its test)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from latest_server.sessions import STATES
from latest_server.stores import variables
from latest_server.web.http import history, latest, sessions
from latest_server.web.http import variables as variable_routes
from latest_server.web.http.ingest import NDJSON_TYPES
from latest_server.web.openapi import iudx
from latest_server.web.openapi.schemas import JSON, headers, json_content, ref

Operation = dict[str, Any]

TIME = {
    "oneOf": [{"type": "string"}, {"type": "number"}],
    "description": "ISO-8601 or an epoch number (s, ms, µs or ns by magnitude), as packet times",
}
QUERY: dict[str, dict[str, Any]] = {
    # GET /history/{variable_id}
    "format": {
        "schema": {"type": "string", "enum": list(history.FORMATS), "default": "json"},
        "description": "json: a page and a cursor; ndjson, csv: streamed over the whole range; "
        "parquet: a download; png: a plot of `field` (needs `field`)",
    },
    "order": {"schema": {"type": "string", "enum": ["asc", "desc"], "default": "asc"}},
    "from": {"schema": TIME, "description": "start of the range, inclusive"},
    "to": {"schema": TIME, "description": "end of the range, exclusive"},
    "cursor": {"schema": {"type": "string"}, "description": "the previous page's `next`"},
    "limit": {
        "schema": {"type": "integer", "minimum": 1, "maximum": history.MAX_LIMIT},
        "description": f"entries per page (json: default {history.DEFAULT_LIMIT}; other "
        "formats: all of the range unless given)",
    },
    "field": {
        "schema": {"type": "string"},
        "description": "a numeric field's dotted path: with `points` (or format=png) a "
        "downsampled series (MinMaxLTTB) instead of entries",
    },
    "fields": {
        "schema": {"type": "string"},
        "description": "format=csv: the columns, comma-separated dotted paths",
    },
    "points": {
        "schema": {"type": "integer", "minimum": 3, "maximum": history.MAX_POINTS},
        "description": "with `field`: at most this many points (default 2000)",
    },
    # GET /latest
    "id": {
        "schema": {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1},
        "style": "form",
        "explode": True,
        "description": "variable ids (repeat the parameter); too many is refused, naming the "
        "bound. Give ids or `prefix`, not both",
    },
    # GET /sessions (its `limit` is not history's: see SESSION_QUERY)
    "state": {"schema": {"type": "string", "enum": list(STATES)}},
}
# GET /history with agg=, lastN= or at= (web/http/aggregate.py)
HISTORY_QUERY: dict[str, dict[str, Any]] = {
    "agg": {
        "schema": {"type": "string"},
        "description": "aggregates of the numeric `field`(s), comma-separated: min, max, avg, "
        "sum, count, first, last, cardinality, percentiles, extended_stats",
    },
    "interval": {
        "schema": {"type": "string"},
        "description": "with `agg`: buckets of a fixed (`1m`, `30s`) or calendar (`day`, `1M`) "
        "interval; none: one bucket over the range",
    },
    "tz": {"schema": {"type": "string", "default": "UTC"}, "description": "buckets' time zone"},
    "id": {
        "schema": {"type": "array", "items": {"type": "string", "minLength": 1}},
        "style": "form",
        "explode": True,
        "description": "with `agg`, `lastN` or `at`: more variables (repeat the parameter)",
    },
    "prefix": {
        "schema": {"type": "string"},
        "description": "with `agg`, `lastN` or `at`: the variables whose id starts with it "
        "(at most 1 000)",
    },
    "lastN": {
        "schema": {"type": "integer", "minimum": 1},
        "description": "the last N entries of each variable",
    },
    "at": {"schema": TIME, "description": "the value in force at this time"},
    "min_doc_count": {
        "schema": {"type": "integer", "minimum": 0},
        "description": "with `agg` and `interval`: 0 keeps empty buckets",
    },
    "percents": {
        "schema": {"type": "string"},
        "description": "with agg=percentiles: the percents, comma-separated",
    },
}
UNDER = "only the variables whose id starts with it (in the byte order of their UTF-8)"
PREFIX = {"schema": {"type": "string"}, "description": UNDER}
PAGE_CURSOR = {"schema": {"type": "string"}, "description": "the previous page's `next`"}
VARIABLES_QUERY = {
    "prefix": PREFIX,
    "limit": {
        "schema": {
            "type": "integer",
            "minimum": 1,
            "maximum": variables.MAX_LIMIT,
            "default": variables.DEFAULT_LIMIT,
        },
        "description": "variables per page",
    },
    "cursor": PAGE_CURSOR,
}
LATEST_QUERY = {
    "prefix": {**PREFIX, "description": UNDER + ": a page of their latest documents"},
    "limit": {
        "schema": {"type": "integer", "minimum": 1},
        "description": f"with `prefix`: documents per page (default {latest.PREFIX_LIMIT}, "
        "at most LATEST_MAX_MGET_IDS)",
    },
    "cursor": PAGE_CURSOR,
}
SESSION_QUERY = {
    "limit": {
        "schema": {"type": "integer", "minimum": 1, "maximum": sessions.MAX_LIMIT, "default": 100}
    }
}


def query(names: Iterable[str], specs: dict[str, dict[str, Any]] | None = None) -> list[Any]:
    """The ``in: query`` parameters of ``names``, each described in ``specs`` or ``QUERY``."""
    own = specs or {}
    return [{"name": name, "in": "query", **(own.get(name) or QUERY[name])} for name in names]


def path_param(name: str, description: str, example: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "schema": {"type": "string"},
        "description": description + " (percent-encoded: any character, `/` as `%2F`)",
        "example": example,
    }


EXAMPLE_ID = "city/aqm-1"
VARIABLE = path_param("variable_id", "the variable id", EXAMPLE_ID)


def common(*statuses: str) -> dict[str, Any]:
    """The responses every route may give (auth, limits, stores), and ``statuses``."""
    names = {
        "400": "BadRequest",
        "401": "Unauthorized",
        "403": "Forbidden",
        "404": "NotFound",
        "413": "TooLarge",
        "415": "UnsupportedMediaType",
        "429": "RateLimited",
        "503": "Unavailable",
    }
    wanted = sorted({"400", "401", "403", "429", "503", *statuses})
    return {code: {"$ref": f"#/components/responses/{names[code]}"} for code in wanted}


def ok(description: str, content: dict[str, Any], **extra: Any) -> dict[str, Any]:
    answer = {"description": description, "headers": headers(), "content": content, **extra}
    if "headers" in extra:
        answer["headers"] = {**headers(), **extra["headers"]}
    return {"200": answer}


def binary(media_type: str) -> dict[str, Any]:
    return {media_type: {"schema": {"type": "string", "contentMediaType": media_type}}}


def text(media_type: str) -> dict[str, Any]:
    return {media_type: {"schema": {"type": "string"}}}


def body(description: str, content: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "description": description, "content": content}


GZIP_NOTE = " `Content-Encoding: gzip` is decoded (every member); the limit holds decoded."

INGEST: Operation = {
    "operationId": "ingest",
    "summary": "Write packets",
    "description": "A JSON object, a JSON array of objects, or NDJSON, through the same write "
    "path as AMQP. Answers the counts and each rejected packet by its position; 400 when "
    "every packet was rejected (nothing was written)." + GZIP_NOTE,
    "tags": ["write"],
    "requestBody": body(
        "packets",
        {
            JSON: {"schema": ref("Packets")},
            **{media: {"schema": {"type": "string"}} for media in NDJSON_TYPES},
        },
    ),
    "responses": {
        **ok("what was written", json_content(ref("IngestResult"))),
        **common("413", "415"),
        "400": {
            "description": "every packet was rejected, or the body is not valid gzip",
            "content": json_content({"anyOf": [ref("IngestRefused"), ref("Error")]}),
        },
    },
}

LATEST_ONE: Operation = {
    "operationId": "get_latest",
    "summary": "A variable's latest document",
    "tags": ["read"],
    "parameters": [
        VARIABLE,
        {
            "name": "If-None-Match",
            "in": "header",
            "schema": {"type": "string"},
            "description": "an ETag of an earlier answer, or `*`: 304 when it is current",
        },
    ],
    "responses": {
        **ok(
            "the document as written",
            json_content(ref("Document")),
            headers={
                "ETag": {"schema": {"type": "string"}, "description": "the version, quoted"},
                "X-Latest-Version": {"schema": {"type": "string"}},
            },
        ),
        "304": {"description": "the tag in If-None-Match is current"},
        **common("404"),
    },
}

LATEST_MANY = ok("one item per id, in order", json_content(ref("LatestDocs")))

HISTORY_RESPONSES = {
    **ok(
        "entries of the range (or a series), in the format asked for",
        {
            JSON: {
                "schema": {
                    "oneOf": [
                        ref("HistoryPage"),
                        ref("Series"),
                        ref("Aggregates"),
                        ref("LastEntries"),
                        ref("ValuesAt"),
                    ]
                }
            },
            **text("application/x-ndjson"),
            **text("text/csv"),
            **binary("application/vnd.apache.parquet"),
            **binary("image/png"),
        },
    ),
    **common("404"),
}
HISTORY: Operation = {
    "operationId": "get_history",
    "summary": "A time range of a variable's history, from every tier",
    "tags": ["read"],
    "parameters": [VARIABLE, *query(history.PARAMS, HISTORY_QUERY)],
    "responses": HISTORY_RESPONSES,
}
HISTORY_NO_ID: Operation = {
    "operationId": "history_without_id",
    "summary": "Aggregates, last entries or values at a time of many variables (`id=`, "
    "`prefix=`, with `agg=`, `lastN=` or `at=`); without those, 404: name a variable, "
    "/history/{variable_id}",
    "tags": ["read"],
    "parameters": query(history.PARAMS, HISTORY_QUERY),
    "responses": HISTORY_RESPONSES,
}


def operations() -> dict[str, dict[str, Operation]]:
    """OpenAPI ``paths``: path → method → operation, for every REST route there is."""
    return {
        "/ingest": {"post": INGEST},
        "/latest": {
            "get": {
                "operationId": "list_latest",
                "summary": "Many latest documents, by repeated `id` or a page under a `prefix`",
                "tags": ["read"],
                "parameters": query(latest.LIST_PARAMS, LATEST_QUERY),
                "responses": {**LATEST_MANY, **common("413")},
            }
        },
        "/latest/_mget": {
            "post": {
                "operationId": "mget_latest",
                "summary": "Many latest documents in one round trip",
                "description": "The body is bounded and decoded as /ingest's." + GZIP_NOTE,
                "tags": ["read"],
                "requestBody": body("the ids", json_content(ref("Ids"))),
                "responses": {**LATEST_MANY, **common("413", "415")},
            }
        },
        "/latest/{variable_id}": {"get": LATEST_ONE},
        "/variables": {
            "get": {
                "operationId": "list_variables",
                "summary": "The variables under a prefix, in id order, a page at a time",
                "description": "From the index the write path keeps: each variable's latest "
                "version and its number of history entries.",
                "tags": ["read"],
                "parameters": query(variable_routes.PARAMS, VARIABLES_QUERY),
                "responses": {
                    **ok("a page of variables", json_content(ref("Variables"))),
                    **common(),
                },
            }
        },
        "/history": {"get": HISTORY_NO_ID},
        "/history/{variable_id}": {"get": HISTORY},
        "/sessions": {
            "get": {
                "operationId": "list_sessions",
                "summary": "Sessions, newest first",
                "tags": ["sessions"],
                "parameters": query(sessions.PARAMS, SESSION_QUERY),
                "responses": {**ok("sessions", json_content(ref("Sessions"))), **common()},
            }
        },
        "/sessions/{session_id}": {
            "get": {
                "operationId": "get_session",
                "summary": "One session with its per-variable counts",
                "tags": ["sessions"],
                "parameters": [path_param("session_id", "the session id", "run-42")],
                "responses": {**ok("the session", json_content(ref("Session"))), **common("404")},
            }
        },
        "/healthz": {
            "get": {
                "operationId": "healthz",
                "summary": "The process answers",
                "tags": ["operations"],
                "security": [],
                "responses": {**ok("alive", json_content(ref("Health"))), **common()},
            }
        },
        "/readyz": {
            "get": {
                "operationId": "readyz",
                "summary": "Redis reachable and every edge connected",
                "tags": ["operations"],
                "security": [],
                "responses": {
                    **ok("ready", json_content(ref("Ready"))),
                    **common(),
                    "503": {
                        "description": "a check failed, or a limit refused the request",
                        "content": json_content({"anyOf": [ref("Ready"), ref("Error")]}),
                    },
                },
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "Metrics in the Prometheus text format",
                "tags": ["operations"],
                "security": [],
                "responses": {**ok("the metrics", text("text/plain")), **common()},
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document",
                "tags": ["operations"],
                "security": [],
                "responses": {**ok("OpenAPI 3.1", json_content({"type": "object"})), **common()},
            }
        },
        **iudx.operations(),
        "/docs": {
            "get": {
                "operationId": "docs",
                "summary": "This document as an interactive page (served offline)",
                "tags": ["operations"],
                "security": [],
                "responses": {**ok("the page", text("text/html")), **common()},
            }
        },
    }
