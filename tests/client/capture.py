"""A capturing HTTP server (real uvicorn in a thread): records every POST with its arrival time,
and answers like POST /ingest. Used to check rate limits on the receiving side and webhooks."""

from __future__ import annotations

import threading
import time

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.servers import UvicornThread


class CaptureServer(UvicornThread):
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: list[tuple[float, str, bytes]] = []  # (monotonic time, path, body)
        super().__init__(Starlette(routes=[Route("/{path:path}", self._record, methods=["POST"])]))

    async def _record(self, request: Request) -> Response:
        arrived = time.monotonic()
        body = await request.body()
        with self.lock:
            self.requests.append((arrived, request.url.path, body))
        count = len(orjson.loads(body)) if body.startswith(b"[") else 1
        answer = {"accepted": count, "stale": 0, "duplicates": 0, "rejected": []}
        return Response(orjson.dumps(answer), media_type="application/json")

    def received(self) -> list[tuple[float, str, bytes]]:
        with self.lock:
            return list(self.requests)
