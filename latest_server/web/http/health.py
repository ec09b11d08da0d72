"""Health: /healthz (the process answers, and its pid), /readyz (Redis reachable and every edge
connected)."""

from __future__ import annotations

import os

import orjson
from starlette.requests import Request
from starlette.responses import Response

from latest_server.resources import Resources


async def healthz(request: Request) -> Response:
    """The pid says which process of ``serve --workers N`` answered."""
    return Response(
        orjson.dumps({"status": "ok", "pid": os.getpid()}), media_type="application/json"
    )


async def readyz(request: Request) -> Response:
    resources: Resources = request.app.state.resources
    checks = {"redis": await resources.latest.ping()}
    checks.update({name: check() for name, check in resources.ready_checks.items()})
    ready = all(checks.values())
    body = {"status": "ready" if ready else "unavailable", "checks": checks}
    return Response(orjson.dumps(body), 200 if ready else 503, media_type="application/json")
