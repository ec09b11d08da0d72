"""Pure ASGI middleware around every HTTP request and websocket connection: its request id,
its metrics (by route template, method and status; per token) and its access-log line.

**Request id.** An incoming ``X-Request-Id`` is kept when it is sane (1 to 128 token
characters, RFC 9110 §5.6.2), else a new one is made (uuid4, hex); either way it is echoed in
the response's ``X-Request-Id`` (the websocket's handshake response too), kept in the scope
(``REQUEST_ID_KEY``) and written in the log line.

**Route.** The label is the matched route's path template (``/latest/{variable_id}``), never
the path itself, so that the label's values are as few as the routes; a path no route matches
is ``unmatched``. Starlette's router records the route in the scope it is given, which is this
middleware's.

**Token.** ``principal_of(scope).name`` once the app has answered: the authentication
middleware, inside this one, sets it (``anonymous`` when no tokens are configured).

**Secrets.** Nothing of a request's headers is logged but its request id, so neither an
``Authorization`` header nor a cookie can be; the line passes through ``redact`` (logs.py).
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import secrets
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from latest_server import metrics
from latest_server.access import principal_of
from latest_server.logs import ACCESS_LOGGER, REQUEST_ID
from latest_server.web.ws.direct import SCOPE_KEY as SERVER_SEND

access_log = logging.getLogger(ACCESS_LOGGER)

REQUEST_ID_KEY = "latest.request_id"
REQUEST_ID_HEADER = b"x-request-id"
_SANE_ID = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,128}")
_CONVERTOR = re.compile(r":[A-Za-z_]+}")
UNMATCHED = metrics.UNMATCHED


def request_id(scope: Scope) -> str:
    for name, value in scope.get("headers", ()):
        if name == REQUEST_ID_HEADER:
            if _SANE_ID.fullmatch(value):
                return str(value.decode())
            break
    return new_id()


def _fresh_ids() -> None:
    global _prefix, _count
    _prefix = secrets.token_hex(8)
    _count = itertools.count(1).__next__


_prefix = ""
_count = itertools.count(1).__next__
_fresh_ids()
os.register_at_fork(after_in_child=_fresh_ids)  # a forked worker makes ids of its own


def new_id() -> str:
    """32 hex digits, unique: a random prefix per process (per fork too) and a counter, a
    tenth of what a uuid4 costs per request."""
    return f"{_prefix}{_count():016x}"


_templates: dict[tuple[str, str], str] = {}


def route_template(scope: Scope, root: str) -> str:
    """The path template of the route that answered ``scope``, with the path of the mount
    it is under (``/es/{index}/_doc/{id}``)."""
    route = scope.get("route")
    if route is None:
        return UNMATCHED
    path = scope.get(metrics.ROUTE_KEY) or getattr(route, "path", None)
    if path is None or path == UNMATCHED:
        return UNMATCHED
    mount = scope.get("root_path", "")[len(root) :]
    found = _templates.get((mount, path))
    if found is None:
        found = _templates[(mount, path)] = mount + _CONVERTOR.sub("}", path)
    return found


class Observe:
    def __init__(self, app: ASGIApp, *, log_requests: bool = True) -> None:
        self.app = app
        self.log_requests = log_requests

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http" and kind != "websocket":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        root = scope.get("root_path", "")
        rid = scope[REQUEST_ID_KEY] = request_id(scope)
        current = REQUEST_ID.set(rid)
        tally = scope[metrics.TALLY_KEY] = metrics.Tally()
        if kind == "websocket":  # for ws/direct.py: the server's send, not this one's wrapper
            scope.setdefault(SERVER_SEND, send)
        echo = (REQUEST_ID_HEADER, rid.encode())
        status = 0
        closed: int | None = None  # a websocket's close code

        if kind == "http":

            async def receive_counted() -> Message:
                message = await receive()
                if message["type"] == "http.request":
                    tally.bytes_in += len(message.get("body", b""))
                return message

            async def send_counted(message: Message) -> None:
                nonlocal status
                kind = message["type"]
                if kind == "http.response.body":
                    tally.bytes_out += len(message.get("body", b""))
                elif kind == "http.response.start":
                    status = message["status"]
                    message = {**message, "headers": [*message.get("headers", ()), echo]}
                await send(message)

        else:

            async def receive_counted() -> Message:
                nonlocal closed
                message = await receive()
                kind = message["type"]
                if kind == "websocket.receive":
                    tally.bytes_in += _size(message)
                elif kind == "websocket.disconnect" and closed is None:
                    closed = message.get("code", 1005)
                return message

            async def send_counted(message: Message) -> None:
                nonlocal status, closed
                kind = message["type"]
                if kind == "websocket.send":
                    tally.bytes_out += _size(message)
                elif kind == "websocket.accept":
                    status = 101
                    message = {**message, "headers": [*message.get("headers", ()), echo]}
                elif kind == "websocket.close":
                    closed = message.get("code", 1000)
                    status = status or 403  # closed before accepting: the server answers 403
                elif kind == "websocket.http.response.start":
                    status = message["status"]
                    message = {**message, "headers": [*message.get("headers", ()), echo]}
                await send(message)

        try:
            await self.app(scope, receive_counted, send_counted)
        except BaseException:
            status = status or 500
            raise
        finally:
            REQUEST_ID.reset(current)
            self._record(scope, root, kind, status, closed, tally, time.perf_counter() - started)

    def _record(
        self,
        scope: Scope,
        root: str,
        kind: str,
        status: int,
        closed: int | None,
        tally: metrics.Tally,
        took: float,
    ) -> None:
        route = route_template(scope, root)
        method = scope.get("method", "GET") if kind == "http" else "WS"
        token = principal_of(scope).name
        counted = metrics.request(route, method, status, token)
        counted.requests.inc()
        if kind == "http":  # a websocket's lifetime is no request duration
            counted.seconds.observe(took)
        counted.token.inc()
        if tally.bytes_in:
            counted.bytes_in.inc(tally.bytes_in)
        if tally.bytes_out:
            counted.bytes_out.inc(tally.bytes_out)
        if self.log_requests and access_log.isEnabledFor(logging.INFO):
            _log(scope, route, method, status, closed, tally, took, token)


def _size(message: Message) -> int:
    text = message.get("text")
    if text is not None:
        return len(text.encode()) if not text.isascii() else len(text)
    return len(message.get("bytes") or b"")


def _log(
    scope: Scope,
    route: str,
    method: str,
    status: int,
    closed: int | None,
    tally: metrics.Tally,
    took: float,
    token: str,
) -> None:
    client = scope.get("client")
    address = f"{client[0]}:{client[1]}" if client else "-"
    fields: dict[str, Any] = {
        "method": method,
        "route": route,
        "status": status,
        "duration_ms": round(took * 1000, 3),
        "bytes_in": tally.bytes_in,
        "bytes_out": tally.bytes_out,
        "token": token,
        "client": address,
        "request_id": scope[REQUEST_ID_KEY],
    }
    if closed is not None:
        fields["close_code"] = closed
    close = "" if closed is None else f" close={closed}"
    # One f-string, not %-arguments: the line is built once, only when it is written.
    access_log.info(
        f'{address} "{method} {route}" {status}{close} {took * 1000:.1f}ms '
        f"in={tally.bytes_in} out={tally.bytes_out} token={token} "
        f"request_id={fields['request_id']}",
        extra={"access": fields},
    )
