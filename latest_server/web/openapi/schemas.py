"""The ``components`` of the OpenAPI document: the JSON shapes the REST API answers (read from
web/http/*.py and web/errors.py), its error responses, and the bearer scheme.

Bounds and enumerations come from the modules that enforce them (``history.FORMATS``,
``sessions.STATES``, …), so the document cannot drift from the code."""

from __future__ import annotations

from typing import Any

from latest_server.errors import REJECT_REASONS
from latest_server.sessions import STATES
from latest_server.web.http import history
from latest_server.web.openapi import aggregates

JSON = "application/json"
Schema = dict[str, Any]


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def json_content(schema: Schema) -> dict[str, Any]:
    return {JSON: {"schema": schema}}


MICROS = {"type": "integer", "description": "µs since the epoch (UTC)"}
OPTIONAL_MICROS = {"type": ["integer", "null"], "description": "µs since the epoch (UTC)"}

SCHEMAS: dict[str, Schema] = {
    "Error": {
        "type": "object",
        "description": "Every refusal of the REST API: a stable code (`type`) and a sentence "
        "(`reason`). Packet rejections use these codes: " + ", ".join(REJECT_REASONS) + ".",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["type", "reason"],
                "properties": {
                    "type": {"type": "string", "examples": ["bad_parameter", "not_found"]},
                    "reason": {"type": "string"},
                },
            }
        },
    },
    "Rejected": {
        "type": "object",
        "description": "A packet of the body that was not written, by its position.",
        "required": ["index", "error", "detail"],
        "properties": {
            "index": {"type": "integer", "minimum": 0},
            "error": {"type": "string", "description": "the reason code"},
            "detail": {"type": "string"},
        },
    },
    "IngestResult": {
        "type": "object",
        "required": ["accepted", "stale", "duplicates", "rejected"],
        "properties": {
            "accepted": {"type": "integer", "minimum": 0, "description": "new latest values"},
            "stale": {
                "type": "integer",
                "minimum": 0,
                "description": "kept in history, older than the latest value",
            },
            "duplicates": {"type": "integer", "minimum": 0, "description": "already stored"},
            "rejected": {"type": "array", "items": ref("Rejected")},
        },
    },
    "IngestRefused": {
        "description": "Every packet of the body was rejected: the first one's reason, and "
        "the counts as for a 200.",
        "allOf": [ref("Error"), ref("IngestResult")],
    },
    "Document": {
        "type": "object",
        "description": "A packet as it was written (any JSON object).",
        "additionalProperties": True,
    },
    "Packets": {
        "description": "One packet, or an array of packets.",
        "oneOf": [ref("Document"), {"type": "array", "items": ref("Document")}],
    },
    "Ids": {
        "type": "object",
        "description": "too many ids is refused, naming the bound",
        "required": ["ids"],
        "properties": {
            "ids": {
                "type": "array",
                "minItems": 1,
                "items": {"type": "string", "minLength": 1},
            }
        },
    },
    "LatestItem": {
        "type": "object",
        "required": ["id", "found"],
        "properties": {
            "id": {"type": "string"},
            "found": {"type": "boolean"},
            "version": {"type": "integer", "description": "present when found"},
            "doc": ref("Document"),
        },
    },
    "LatestDocs": {
        "type": "object",
        "required": ["docs"],
        "properties": {
            "docs": {"type": "array", "items": ref("LatestItem")},
            "next": {
                "type": ["string", "null"],
                "description": "with `prefix`: the cursor of the next page; null on the last",
            },
        },
    },
    "Variable": {
        "type": "object",
        "required": ["id", "version", "entries", "deleted"],
        "properties": {
            "id": {"type": "string"},
            "version": {
                "type": ["integer", "null"],
                "description": "the latest document's version: its time in µs since the epoch "
                "(UTC), unless an Elasticsearch request gave another; null when deleted",
            },
            "entries": {
                "type": "integer",
                "minimum": 0,
                "description": "history entries appended to the variable (its last seq), "
                "in Redis and in objects",
            },
            "deleted": {
                "type": "boolean",
                "description": "no latest document (an Elasticsearch DELETE); history stays",
            },
        },
    },
    "Variables": {
        "type": "object",
        "required": ["variables", "next"],
        "properties": {
            "variables": {"type": "array", "items": ref("Variable")},
            "next": {
                "type": ["string", "null"],
                "description": "the cursor of the next page; null on the last",
            },
        },
    },
    "Entry": {
        "type": "object",
        "required": ["ts", "seq", "doc"],
        "properties": {
            "ts": MICROS,
            "seq": {"type": "integer", "minimum": 1},
            "doc": ref("Document"),
        },
    },
    "HistoryPage": {
        "type": "object",
        "required": ["variable", "entries", "next"],
        "properties": {
            "variable": {"type": "string"},
            "entries": {"type": "array", "items": ref("Entry")},
            "next": {
                "type": ["string", "null"],
                "description": "the cursor of the next page; null on the last",
            },
        },
    },
    "Series": {
        "type": "object",
        "required": ["variable", "field", "points"],
        "properties": {
            "variable": {"type": "string"},
            "field": {"type": "string"},
            "points": {
                "type": "array",
                "maxItems": history.MAX_POINTS,
                "items": {
                    "type": "array",
                    "description": "[ts µs, value]",
                    "prefixItems": [{"type": "integer"}, {"type": "number"}],
                    "minItems": 2,
                    "maxItems": 2,
                },
            },
        },
    },
    "Session": {
        "type": "object",
        "required": ["id", "state", "created", "updated", "count"],
        "properties": {
            "id": {"type": "string"},
            "state": {"type": "string", "enum": list(STATES)},
            "created": MICROS,
            "updated": MICROS,
            "start": OPTIONAL_MICROS,
            "end": OPTIONAL_MICROS,
            "count": {"type": "integer", "minimum": 0, "description": "history entries"},
            "opened": OPTIONAL_MICROS,
            "ended": OPTIONAL_MICROS,
            "completed": OPTIONAL_MICROS,
            "info": {"type": ["object", "null"]},
            "error": {"type": ["string", "null"]},
            "variables": {
                "type": "object",
                "description": "entries per variable id (GET /sessions/{session_id} only)",
                "additionalProperties": {"type": "integer"},
            },
        },
    },
    "Sessions": {
        "type": "object",
        "required": ["sessions"],
        "properties": {"sessions": {"type": "array", "items": ref("Session")}},
    },
    "Health": {
        "type": "object",
        "required": ["status", "pid"],
        "properties": {
            "status": {"const": "ok"},
            "pid": {"type": "integer", "description": "the answering process (serve --workers)"},
        },
    },
    "Ready": {
        "type": "object",
        "required": ["status", "checks"],
        "properties": {
            "status": {"type": "string", "enum": ["ready", "unavailable"]},
            "checks": {
                "type": "object",
                "description": "each check by name (redis, amqp, valkey): passed or not",
                "additionalProperties": {"type": "boolean"},
            },
        },
    },
}

RETRY_AFTER = {
    "description": "seconds to wait before trying again",
    "required": True,
    "schema": {"type": "integer", "minimum": 0},
}
REQUEST_ID = {
    "description": "the request's id, as in the access log (a client's own is echoed)",
    "schema": {"type": "string"},
}


def headers(*names: str) -> dict[str, Any]:
    """The response headers ``names`` and X-Request-Id, which every response may carry."""
    return {name: {"$ref": f"#/components/headers/{name}"} for name in (*names, "X-Request-Id")}


def error_response(description: str, *, retry: bool = False) -> dict[str, Any]:
    return {
        "description": description,
        "headers": headers("Retry-After") if retry else headers(),
        "content": json_content(ref("Error")),
    }


RESPONSES: dict[str, dict[str, Any]] = {
    "BadRequest": error_response(
        "a bad parameter or body: `bad_parameter` names an unknown query parameter (and what "
        "the route takes), `bad_request` a bad value, `bad_encoding` a body that is not valid "
        "gzip"
    ),
    "Unauthorized": error_response(
        'no valid token: `{"error": {"type": "unauthorized", "reason"}}` (tokens are '
        "configured and the request has no `Authorization: Bearer` token, or one that is "
        "unknown, expired or revoked)"
    ),
    "Forbidden": error_response(
        "the token is valid but lacks the scope (read, write, admin) or the variable-id prefix "
        "the request needs: type `forbidden`"
    ),
    "NotFound": error_response("no such variable, session or route: type `not_found`"),
    "TooLarge": error_response(
        "the body, as sent or decoded from gzip, is larger than its bound (LATEST_MAX_BODY_BYTES): "
        "type `too_large`, or more ids than a read takes; nothing was written"
    ),
    "UnsupportedMediaType": error_response(
        "a Content-Type the route does not read; nothing was written"
    ),
    "RateLimited": error_response(
        "the token (or client address) sent more requests than its rate allows: type "
        "`rate_limited`; retry after `Retry-After` seconds",
        retry=True,
    ),
    "Unavailable": error_response(
        "a store is unreachable or refuses commands for now (`store_unavailable`), or the "
        "server is busy (`busy`): nothing was acknowledged; retry after `Retry-After` seconds",
        retry=True,
    ),
}

SECURITY_SCHEMES = {
    "bearer": {
        "type": "http",
        "scheme": "bearer",
        "description": "`Authorization: Bearer <token>`: a static API token from "
        "LATEST_TOKENS_FILE or a JWT. Without configured tokens the server takes requests "
        "without one (and keeps to loopback).",
    }
}


def components() -> dict[str, Any]:
    return {
        "schemas": {**SCHEMAS, **aggregates.SCHEMAS},
        "responses": RESPONSES,
        "headers": {"Retry-After": RETRY_AFTER, "X-Request-Id": REQUEST_ID},
        "securitySchemes": SECURITY_SCHEMES,
    }
