"""The operations of the IUDX latest API (web/http/iudx.py) in the OpenAPI document: its own
envelope on success and on the errors it answers itself (400, 404, 503), the REST API's error
shape for what the middleware answers before it (401, 403, 429)."""

from __future__ import annotations

from typing import Any

from latest_server.web.http import iudx
from latest_server.web.openapi.schemas import headers, json_content

ENVELOPE_ERROR = {
    "type": "object",
    "required": ["type", "title", "detail"],
    "properties": {
        "type": {"type": "string", "description": "a URN of the IUDX API, e.g. resourceNotFound"},
        "title": {"type": "string"},
        "detail": {"type": "string"},
    },
}
PAGINATION = {
    "type": "object",
    "required": ["page", "size", "totalCount", "totalPages", "hasNext", "hasPrevious"],
    "properties": {
        "page": {"type": "integer"},
        "size": {"type": "integer"},
        "totalCount": {"type": "integer"},
        "totalPages": {"type": "integer"},
        "hasNext": {"type": "boolean"},
        "hasPrevious": {"type": "boolean"},
    },
}


def _success(flavor: iudx.Flavor) -> dict[str, Any]:
    properties: dict[str, Any] = {
        "type": {"const": flavor.success},
        "title": {"type": "string"},
        "results": {"type": "array", "items": {"type": "object"}},
    }
    required = ["type", "title", "results"]
    if flavor.paginated:
        properties["paginationInfo"] = PAGINATION
        required.append("paginationInfo")
    return {"type": "object", "required": required, "properties": properties}


def _error(description: str, *, retry: bool = False) -> dict[str, Any]:
    return {
        "description": description,
        "headers": headers("Retry-After") if retry else headers(),
        "content": json_content(ENVELOPE_ERROR),
    }


def _query(flavor: iudx.Flavor) -> list[dict[str, Any]]:
    bounds = {"page": (1, 49_999), "size": (1, iudx.MAX_SIZE)}
    return [
        {
            "name": name,
            "in": "query",
            "schema": {"type": "integer", "minimum": bounds[name][0], "maximum": bounds[name][1]},
        }
        for name in sorted(flavor.params)
    ]


def _operation(operation_id: str, summary: str, flavor: iudx.Flavor) -> dict[str, Any]:
    refs = {"401": "Unauthorized", "403": "Forbidden", "429": "RateLimited"}
    return {
        "operationId": operation_id,
        "summary": summary,
        "tags": ["iudx"],
        "parameters": [
            {
                "name": "entity_id",
                "in": "path",
                "required": True,
                "description": "a resource id (its latest packet), or with "
                "LATEST_BACKEND=redisjson a resource group id (every resource of the group)",
                "schema": {"type": "string", "minLength": 1, "maxLength": iudx.MAX_ID_CHARS},
                "example": "iisc.ac.in/89a36273d77dac4cf38114fca1bbe64392547f86/rs.iudx.io/"
                "surat-itms-realtime-information/surat-itms-live-eta",
            },
            *_query(flavor),
        ],
        "responses": {
            "200": {
                "description": "the latest packet(s) in the IUDX envelope",
                "headers": headers(),
                "content": json_content(_success(flavor)),
            },
            "204": {"description": "a resource group whose every resource was deleted"},
            "400": _error("a bad id or parameter"),
            "404": _error("no such resource or group"),
            "503": _error("Redis is unreachable or refuses commands for now", retry=True),
            **{code: {"$ref": f"#/components/responses/{name}"} for code, name in refs.items()},
        },
    }


def operations() -> dict[str, dict[str, Any]]:
    return {
        "/ngsi-ld/v1/entities/{entity_id}": {
            "get": _operation(
                "iudx_latest", "The IUDX resource server's latest API", iudx.RESOURCE_SERVER
            )
        },
        "/ngsi-ld/v2/entities/{entity_id}": {
            "get": _operation(
                "iudx_dataplane_latest", "The IUDX data plane's latest API", iudx.DATA_PLANE
            )
        },
    }
