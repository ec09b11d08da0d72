"""``GET /openapi.json`` (the document of the app that serves it, built once) and ``GET /docs``
(Swagger UI on that document, its assets served from ``static/`` in the package)."""

from __future__ import annotations

from pathlib import Path

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.staticfiles import StaticFiles

from latest_server.web.openapi.document import build

STATIC = Path(__file__).parent / "static"
ASSETS = "/docs/static"  # where static/ is mounted

# Relative URLs: behind a proxy that serves the API under a prefix, the page still finds its
# assets and the document (both resolve against /<prefix>/docs).
PAGE = b"""<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>latest-server API</title>
  <link rel="stylesheet" href="docs/static/swagger-ui.css">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="docs/static/swagger-ui-bundle.js"></script>
  <script src="docs/static/latest-docs.js"></script>
</body>
</html>
"""


async def openapi_json(request: Request) -> Response:
    state = request.app.state
    cached: bytes | None = getattr(state, "openapi", None)
    if cached is None:
        cached = state.openapi = orjson.dumps(build(request.app.router.routes))
    return Response(cached, media_type="application/json")


async def docs(request: Request) -> Response:
    return Response(PAGE, media_type="text/html")


def assets() -> StaticFiles:
    return StaticFiles(directory=STATIC)
