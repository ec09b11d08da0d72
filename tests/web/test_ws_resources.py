"""What one websocket client can make a server hold: real uvicorn in a thread, real Redis, the
`websockets` client, and a raw socket speaking the protocol through websockets' sans-I/O client
for a client that sends and never reads."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import orjson
import pytest
import websockets
from websockets.client import ClientProtocol
from websockets.frames import Opcode
from websockets.uri import parse_uri

from latest_server.settings import Settings
from latest_server.web.ws.protocol import CLOSE_SLOW
from tests.conftest import ServerThread, hub_of, wait_for, ws_url

T = TypeVar("T")


def on_server(server: ServerThread, coro: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run ``coro()`` on the server's event loop (its thread) and return its result."""
    hub = hub_of(server)
    assert hub._probe is not None
    loop = hub._probe.get_loop()
    return asyncio.run_coroutine_threadsafe(coro(), loop).result(10)


async def server_tasks() -> list[str]:
    """The names of the tasks a websocket made: its sender, its streams, its ASGI task."""
    names = []
    for task in asyncio.all_tasks():
        name = task.get_name()
        code = task.get_coro().__qualname__  # type: ignore[union-attr]
        if name.startswith(("ws-stream", "ws-send", "ws-close")) or "run_asgi" in code:
            names.append(f"{name} {code}")
    return names


async def test_streams_end_with_their_socket_whatever_they_wait_for_and_shutdown_is_prompt(
    settings: Settings, http_server: Callable[..., ServerThread]
) -> None:
    """Clients subscribe to variables that do not exist yet and go, some at once (their
    streams are cancelled mid-read), some once their streams wait for a first entry, some by
    dropping the connection. Before, a stream cancelled while redis-py's ``wait_for``
    finished swallowed the cancellation and waited forever: its socket's close, and the
    server's shutdown, with it."""
    running = http_server(settings)
    hub = hub_of(running)
    url = ws_url(running)

    async def client(n: int) -> None:
        # max_queue=None: frames left unread must not stop this client reading the close
        async with websockets.connect(url, max_queue=None) as ws:
            ids = [f"nothing-yet/{n}/{i}" for i in range(12)]
            await ws.send(orjson.dumps({"op": "subscribe", "ids": ids}).decode())
            if n % 3 == 1:
                await asyncio.sleep(0.2)  # the streams wait for the variables to exist
            elif n % 3 == 2:
                ws.transport.abort()  # gone without a close frame

    for start in range(0, 60, 20):  # 60 clients, 20 at a time
        await asyncio.gather(*(client(n) for n in range(start, start + 20)))
    with contextlib.suppress(AssertionError):  # the asserts below say what is left
        await wait_for(
            lambda: not (hub.sockets or hub.feed.channels or on_server(running, server_tasks)),
            within=10,
        )
    assert on_server(running, server_tasks) == []
    assert not hub.sockets and hub.connections == 0
    assert not hub.feed.channels  # no feed subscription outlives its stream
    started = time.monotonic()
    await asyncio.to_thread(running.__exit__)  # uvicorn's shutdown, as on SIGTERM
    assert not running.thread.is_alive()
    assert time.monotonic() - started < 5


class RawClient:
    """A websocket client on a plain socket that sends what it is told and reads nothing
    until asked to: a client that stops reading, as the kernel sees it."""

    def __init__(self, url: str) -> None:
        uri = parse_uri(url)
        self.protocol = ClientProtocol(uri)
        self.sock = socket.create_connection((uri.host, uri.port))
        self.protocol.send_request(self.protocol.connect())
        self._flush()
        while self.protocol.handshake_exc is None and not self.protocol.events_received():
            self.protocol.receive_data(self.sock.recv(65536))
        assert self.protocol.handshake_exc is None

    def _flush(self) -> None:
        self.sock.sendall(b"".join(self.protocol.data_to_send()))

    def send_text(self, text: bytes, times: int) -> None:
        for _ in range(times):
            self.protocol.send_text(text)
        self._flush()

    def close_code(self, within: float) -> int | None:
        """Read everything sent until the server's close frame; its code."""
        self.sock.settimeout(within)
        with contextlib.suppress(OSError):
            while self.protocol.close_rcvd is None:
                data = self.sock.recv(1 << 20)
                if not data:
                    break
                self.protocol.receive_data(data)
                for event in self.protocol.events_received():
                    if getattr(event, "opcode", None) is Opcode.CLOSE:
                        break
        self.sock.close()
        return None if self.protocol.close_rcvd is None else self.protocol.close_rcvd.code


@pytest.mark.parametrize(
    "request_frame", [b'{"op": "ping"}', orjson.dumps({"op": "x" * 64})], ids=["ping", "error"]
)
async def test_a_client_that_floods_requests_and_never_reads_is_closed_with_4008(
    settings: Settings, http_server: Callable[..., ServerThread], request_frame: bytes
) -> None:
    """Each ping is answered with a pong, each unknown op with an error frame. Before, those
    were queued without limit for a client that read none of them (3 GB in 10 s)."""
    limit = 65_536
    running = http_server(settings, ws_queue_bytes=limit)
    hub = hub_of(running)
    raw = await asyncio.to_thread(RawClient, ws_url(running))
    try:
        await wait_for(lambda: hub.sockets, within=10)
        (served,) = hub.sockets
        # The kernel's buffers take a few MB of replies before the server's queue sees any:
        # at most 1000 × 1000 requests, some 15 to 130 MB of replies. Once closing, the server
        # still reads what the client sends (here a blocking write), so the client gets to read.
        for _ in range(1000):
            await asyncio.to_thread(raw.send_text, request_frame, 1000)
            if not hub.sockets:
                break
        else:
            pytest.fail(f"the socket was not closed: {served.queued} bytes queued")
        # its replies filled the queue to its limit, never past it by more than one reply
        assert limit - 1024 < served.most <= limit + 1024
        assert await asyncio.to_thread(raw.close_code, 20) == CLOSE_SLOW
    finally:
        raw.sock.close()


@pytest.mark.parametrize("closing", [True, False], ids=["closing-4008", "not-yet-slow"])
async def test_shutdown_is_prompt_with_a_client_that_reads_nothing(
    settings: Settings, http_server: Callable[..., ServerThread], closing: bool
) -> None:
    """A client whose replies fill its connection, its queue full (being closed with 4008) or
    not yet. Before, the shutdown waited for the 4008 close frame (30 s), or for ever: the
    transport closes once its buffer is written, which from such a client is never."""
    if closing:
        running = http_server(settings, ws_queue_bytes=65_536)
    else:
        running = http_server(settings, ws_queue_bytes=1 << 30, ws_send_timeout=300.0)
    hub = hub_of(running)
    raw = await asyncio.to_thread(RawClient, ws_url(running))
    try:
        await wait_for(lambda: hub.sockets, within=10)
        (served,) = hub.sockets
        assert served.direct is not None
        for _ in range(1000):
            await asyncio.to_thread(raw.send_text, b'{"op": "ping"}', 1000)
            if (not hub.sockets) if closing else served.queued > 65_536:
                break
        else:
            pytest.fail("the client's replies never filled its connection")
        assert not served.direct.open()
        started = time.monotonic()
        running.server.should_exit = True
        await asyncio.to_thread(running.thread.join, 20)
        assert not running.thread.is_alive()
        assert time.monotonic() - started < 5
    finally:
        raw.sock.close()


async def test_connections_past_the_cap_are_refused_with_503_and_retry_after(
    settings: Settings, http_server: Callable[..., ServerThread]
) -> None:
    running = http_server(settings, ws_max_connections=3)
    url = ws_url(running)
    async with contextlib.AsyncExitStack() as stack:
        held = [await stack.enter_async_context(websockets.connect(url)) for _ in range(3)]
        with pytest.raises(websockets.InvalidStatus) as refused:
            await websockets.connect(url)
        response = refused.value.response
        assert response.status_code == 503
        assert response.headers["Retry-After"] == "1"
        assert orjson.loads(response.body)["error"]["type"] == "too_many_connections"
        for ws in held:  # the sockets held are served as before
            await ws.send('{"op": "ping"}')
            assert orjson.loads(await ws.recv()) == {"type": "pong"}
        await held[0].close()
        await wait_for(lambda: hub_of(running).connections == 2, within=10)
        async with websockets.connect(url) as again:  # a freed slot is taken again
            await again.send('{"op": "ping"}')
            assert orjson.loads(await again.recv()) == {"type": "pong"}
