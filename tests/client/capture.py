"""A capturing HTTP server (real uvicorn in a thread): records every POST with its arrival time,
and answers like POST /ingest. Used to check rate limits on the receiving side and webhooks."""

from __future__ import annotations

import threading
import time

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.conftest import free_port


class CaptureServer:
    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.lock = threading.Lock()
        self.requests: list[tuple[float, str, bytes]] = []  # (monotonic time, path, body)
        app = Starlette(routes=[Route("/{path:path}", self._record, methods=["POST"])])
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

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

    def __enter__(self) -> CaptureServer:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the capture server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)
