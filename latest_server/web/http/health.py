"""Health: /healthz (the process answers), /readyz (Redis reachable and every edge connected)."""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.responses import Response

from latest_server.resources import Resources


async def healthz(request: Request) -> Response:
    return Response(b'{"status":"ok"}', media_type="application/json")


async def readyz(request: Request) -> Response:
    resources: Resources = request.app.state.resources
    checks = {"redis": await resources.latest.ping()}
    checks.update({name: check() for name, check in resources.ready_checks.items()})
    ready = all(checks.values())
    body = {"status": "ready" if ready else "unavailable", "checks": checks}
    return Response(orjson.dumps(body), 200 if ready else 503, media_type="application/json")
