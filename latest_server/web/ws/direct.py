"""Frames written straight to a websocket's transport, every frame due in one turn of the event
loop in one write.

A fan-out sends each entry frame to every socket that follows its variable. Through ASGI each
frame costs a message dict, its text encoded again, websockets' frame builder and one
``transport.write``, so one ``send`` system call: on a busy fan-out (bench/ws_fanout.py) the
server spent half its time there. When the server is uvicorn with its default websocket
implementation (websockets' sans-I/O protocol) and the connection negotiated no extension, a
socket writes its frames itself instead: each frame's header (RFC 6455 §5.2: a final, unmasked
text frame) and payload are collected while the event loop runs the current callback, and
written at once in the next, one write per socket however many frames it got.

Nothing else changes. A frame is written this way only while the connection is open and
writable (uvicorn's flow control: its ``writable`` event, cleared by the transport when the
client stops reading); otherwise frames go through the ASGI ``send`` as before, which waits for
the client, and the socket's queue, its limit and the stall timeout apply. uvicorn's own frames
(pings, close) are written whole by the same transport, so they never split ours.

``ServerSend`` keeps the server's ``send`` in the websocket's scope: the endpoint gets Starlette's
wrapper of it, and only the server's is bound to its protocol.
"""

from __future__ import annotations

import asyncio
import struct
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.protocol import State

SCOPE_KEY = "latest_server.server_send"


class ServerSend:
    """Pure ASGI middleware: records the server's ``send`` in a websocket's scope."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            scope.setdefault(SCOPE_KEY, send)  # web/observe.py, outside, may have set it
        await self.app(scope, receive, send)


SHORT = [bytes((0x81, length)) for length in range(126)]
MEDIUM = struct.Struct("!BBH").pack  # 126, then a 16-bit length
LONG = struct.Struct("!BBQ").pack  # 127, then a 64-bit length


def header(length: int) -> bytes:
    """The header of a final, unmasked text frame carrying ``length`` bytes."""
    if length < 126:
        return SHORT[length]
    if length < 0x10000:
        return MEDIUM(0x81, 126, length)
    return LONG(0x81, 127, length)


class DirectWriter:
    """Writes the frames of one accepted websocket straight to its transport."""

    def __init__(self, protocol: Any) -> None:
        self.protocol = protocol
        self.transport: asyncio.WriteTransport = protocol.transport
        self.writable: asyncio.Event = protocol.writable

    @classmethod
    def of(cls, scope: Scope) -> DirectWriter | None:
        """A writer for the connection of ``scope``, once accepted; None unless it is served by
        uvicorn's sans-I/O websocket protocol without extensions (permessage-deflate compresses
        each frame: those go through ASGI)."""
        protocol = getattr(scope.get(SCOPE_KEY), "__self__", None)
        if not isinstance(protocol, WebSocketsSansIOProtocol):
            return None
        try:
            if not protocol.handshake_complete or protocol.conn.state is not State.OPEN:
                return None
            if protocol.conn.extensions:
                return None
            writer = cls(protocol)
            writer.open()  # every attribute it reads is there
        except AttributeError:  # a uvicorn unlike the one this was written for
            return None
        return writer

    def open(self) -> bool:
        """Whether frames may be written now: open, and the client reads what it is sent. (A
        close frame received is answered and the transport closed at once; one sent is
        ``close_sent``.)"""
        protocol = self.protocol
        return (
            self.writable.is_set()
            and not protocol.close_sent
            and not protocol.disconnected
            and not self.transport.is_closing()
        )

    def write(self, chunks: list[bytes]) -> None:
        self.transport.write(b"".join(chunks))


def abort(scope: Scope) -> None:
    """Drop the connection of ``scope`` at once, with whatever it has not written: a close
    frame waits for the connection to be writable, and a transport closes only once its
    buffer is written, which from a client that reads nothing is never. Nothing under another
    server (its own timeouts apply)."""
    protocol = getattr(scope.get(SCOPE_KEY), "__self__", None)
    transport = getattr(protocol, "transport", None)
    if isinstance(protocol, WebSocketsSansIOProtocol) and transport is not None:
        transport.abort()


def stuck(scope: Scope) -> bool:
    """Whether the connection of ``scope`` cannot take what is written to it now: its client
    does not read (uvicorn's flow control). False under another server."""
    protocol = getattr(scope.get(SCOPE_KEY), "__self__", None)
    writable = getattr(protocol, "writable", None)
    return (
        isinstance(protocol, WebSocketsSansIOProtocol)
        and isinstance(writable, asyncio.Event)
        and not writable.is_set()
    )
