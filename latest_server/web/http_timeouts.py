"""Read timeouts for HTTP requests, on every listener (LATEST_PORT and LATEST_ES_PORT), as
nginx's ``client_header_timeout`` and ``client_body_timeout``: a request's headers must be
complete within LATEST_HTTP_HEADER_TIMEOUT of its first byte (of the connection, for its first
request), and its body may not pause for longer than LATEST_HTTP_BODY_TIMEOUT between two reads.

uvicorn has only a keep-alive timeout, armed once a response is done: a connection that sends
nothing, or half a request (headers never finished, a body that stops), stayed open for ever,
each one a file descriptor and its buffers (slowloris).

The ASGI app sees a request only once its headers are complete, so the header timeout lives in
uvicorn's HTTP protocol: ``header_timeout_protocol`` subclasses its httptools protocol (what
uvicorn[standard] runs by default) and relies on its parser callbacks (``on_message_begin``,
``on_headers_complete``), its ``loop``, ``transport`` and ``cycle``; tests/web/test_http_timeouts.py
fails loudly if those change. The body timeout is ASGI middleware (``BodyTimeout``): it times
each ``receive`` of a body not yet complete. Bodies are read whole before anything is written,
so a request that times out writes nothing.
"""

from __future__ import annotations

import asyncio
import logging

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from latest_server.web._request import error_body

log = logging.getLogger(__name__)


def _response_408(reason: str) -> bytes:
    body = error_body("timeout", reason)
    head = (
        "HTTP/1.1 408 Request Timeout\r\n"
        "content-type: application/json\r\n"
        f"content-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode() + body


class _HeaderTimeoutProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, closing a connection whose request headers are late."""

    header_timeout = 10.0  # set by header_timeout_protocol
    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._header_timer is None:
            self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._header_timer = self.loop.call_later(self.header_timeout, self._headers_late)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_late(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        log.info("HTTP request headers not complete in %ss: closed", self.header_timeout)
        if self.cycle is None or self.cycle.response_complete:  # nothing else being answered
            reason = f"request headers not complete in {self.header_timeout:g} s"
            self.transport.write(_response_408(reason))
        self.transport.close()


def header_timeout_protocol(seconds: float) -> type[asyncio.Protocol]:
    """The HTTP protocol class for uvicorn's ``http`` option."""
    return type("HeaderTimeoutProtocol", (_HeaderTimeoutProtocol,), {"header_timeout": seconds})


class BodyTimeout:
    """Pure ASGI middleware: a request body that pauses for ``timeout`` seconds is answered
    408 and its connection closed; the app's ``receive`` gets ``http.disconnect``. A client
    that hangs up in the middle of its body is no error of ours either: Starlette's
    ``ClientDisconnect`` ends the request quietly."""

    def __init__(self, app: ASGIApp, timeout: float) -> None:
        self.app = app
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body_done = False
        started = False
        timed_out = False

        async def timed_receive() -> Message:
            nonlocal body_done, timed_out
            if body_done:
                return await receive()  # e.g. waiting for a disconnect: not a body read
            try:
                async with asyncio.timeout(self.timeout):
                    message = await receive()
            except TimeoutError:
                timed_out = True
                log.info("HTTP request body paused for %ss: answered 408", self.timeout)
                if not started:
                    reason = f"the request body paused for more than {self.timeout:g} s"
                    body = error_body("timeout", reason)
                    headers = [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                        (b"connection", b"close"),
                    ]
                    await send({"type": "http.response.start", "status": 408, "headers": headers})
                    await send({"type": "http.response.body", "body": body})
                return {"type": "http.disconnect"}
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if timed_out:
                return  # answered already
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, timed_receive, guarded_send)
        except ClientDisconnect:
            log.debug("client gone in the middle of its request body")
