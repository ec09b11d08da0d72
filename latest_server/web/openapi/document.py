"""The OpenAPI 3.1 document of the REST API, built once per app from the routes it serves.

``operations.py`` describes every REST route there is; the document an app serves holds the
operations of the routes that app has (a route wired only in some configurations is described
only where it is served), so the document never names a route that would answer 404."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from starlette.routing import BaseRoute, Route

from latest_server import __version__
from latest_server.web.openapi.operations import operations
from latest_server.web.openapi.schemas import components

DESCRIPTION = """\
Keep the latest value and the full history of time-stamped data per variable.

Every error is `{"error": {"type": <stable code>, "reason": <sentence>}}`. Each route takes the \
query parameters listed for it and no other: an unknown one is a 400 `bad_parameter` naming it. \
Ids are free text: percent-encode them in the path (`/` as `%2F`).

**Websocket.** `GET /ws` upgrades to a websocket: subscriptions to variables and sessions, each \
history first (from a seq or a time) and then live, with `reset` frames where history was lost. \
Its frames are described in the README ("Live subscriptions") and in docs/streaming.md, not here.

**Elasticsearch-compatible API.** The API on LATEST_ES_PORT (and under LATEST_ES_PREFIX) \
follows Elasticsearch's own specification and is out of this document's scope; \
docs/elasticsearch.md lists what it serves.
"""

TAGS = [
    {"name": "write", "description": "packets in"},
    {"name": "read", "description": "latest values and history"},
    {"name": "sessions", "description": "producers' sessions"},
    {"name": "iudx", "description": "the IUDX resource server's latest API, in its envelope"},
    {"name": "operations", "description": "health, metrics, this document"},
]

_CONVERTOR = re.compile(r"\{(\w+):\w+\}")


def openapi_path(route_path: str) -> str:
    """``/latest/{variable_id:any}`` → ``/latest/{variable_id}``."""
    return _CONVERTOR.sub(r"{\1}", route_path)


def served(routes: Iterable[BaseRoute]) -> dict[str, set[str]]:
    """OpenAPI path → the lower-case methods the app's HTTP routes answer there (HEAD, which
    Starlette adds to every GET, left out)."""
    found: dict[str, set[str]] = {}
    for route in routes:
        if isinstance(route, Route) and route.methods:
            methods = {m.lower() for m in route.methods} - {"head"}
            found.setdefault(openapi_path(route.path), set()).update(methods)
    return found


def build(routes: Iterable[BaseRoute]) -> dict[str, Any]:
    """The document describing ``routes`` (an app's ``router.routes``)."""
    catalogue = operations()
    paths: dict[str, Any] = {}
    for path, methods in served(routes).items():
        described = catalogue.get(path, {})
        ops = {method: described[method] for method in sorted(methods) if method in described}
        if ops:
            paths[path] = ops
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "latest-server",
            "version": __version__,
            "description": DESCRIPTION,
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        "tags": TAGS,
        # A bearer token when tokens are configured; none when they are not.
        "security": [{"bearer": []}, {}],
        "paths": paths,
        "components": components(),
    }
