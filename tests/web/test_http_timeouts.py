"""Half-sent HTTP requests on both listeners: raw sockets against real uvicorn in a thread, with
the options `latest-server serve` gives each (web/app.py: server_options, http_options)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest
import uvicorn
from redis.asyncio import Redis
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from latest_server import keys
from latest_server.settings import Settings
from latest_server.web.app import create_app, create_es_app, http_options
from latest_server.web.http_timeouts import _HeaderTimeoutProtocol
from tests.conftest import ServerThread
from tests.servers import UvicornThread

TIMEOUT = 0.5  # both timeouts, in these tests


@pytest.fixture
def timed(settings: Settings) -> Settings:
    return Settings(  # type: ignore[call-arg]
        **{
            **{f: getattr(settings, f) for f in settings.__dataclass_fields__},
            "http_header_timeout": TIMEOUT,
            "http_body_timeout": TIMEOUT,
        }
    )


@pytest.fixture(params=["main", "es"])
def listener(
    request: pytest.FixtureRequest,
    timed: Settings,
    redis: Redis,
    http_server: Callable[..., ServerThread],
) -> Iterator[tuple[str, int]]:
    """(which, port): LATEST_PORT's app, or the ES-compatible API's own listener."""
    if request.param == "main":
        yield "main", http_server(timed).port
        return
    # configured as runner.es_server does
    with UvicornThread(create_es_app(timed), lifespan="on", **http_options(timed)) as es:
        yield "es", es.port


def send_and_wait(port: int, data: bytes, within: float = 10) -> tuple[bytes, float]:
    """Send ``data``, then read until the server closes; what it answered and when it closed,
    counted from before the connection: the server's clock starts when it accepts, which may
    be before ``create_connection`` returns here."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(within)
        if data:
            sock.sendall(data)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        return answer, time.monotonic() - started


def status_and_body(answer: bytes) -> tuple[int, Any]:
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), orjson.loads(body)


@pytest.mark.parametrize(
    "data",
    [b"", b"GET /latest HTTP/1.1\r\nHost: x\r\n", b"POST /_bulk HTTP/1.1\r\nHost: x\r\nContent-"],
    ids=["nothing", "half_headers", "half_a_header"],
)
async def test_headers_not_complete_in_time_get_408_and_the_connection_is_closed(
    listener: tuple[str, int], data: bytes
) -> None:
    answer, closed_after = await asyncio.to_thread(send_and_wait, listener[1], data)
    status, body = status_and_body(answer)
    assert status == 408 and body["error"]["type"] == "timeout"
    assert TIMEOUT <= closed_after < TIMEOUT + 3


async def test_a_body_that_stalls_gets_408_and_nothing_of_it_is_written(
    listener: tuple[str, int], redis: Redis
) -> None:
    """The body's first packet is whole; the rest never comes."""
    which, port = listener
    packet = b'{"id": "half-sent", "ts": 1700000000, "n": 1}\n'
    if which == "es":
        path, first = "/_bulk", b'{"index": {"_index": "latest", "_id": "half-sent"}}\n' + packet
    else:
        path, first = "/ingest", packet
    body = first + first
    head = (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-ndjson\r\n"
        f"Content-Length: {len(body) + 100}\r\n\r\n"
    ).encode()
    answer, closed_after = await asyncio.to_thread(send_and_wait, port, head + first)
    status, reply = status_and_body(answer)
    assert status == 408 and reply["error"]["type"] == "timeout"
    assert TIMEOUT <= closed_after < TIMEOUT + 3
    key = keys.key_for("half-sent")
    assert await redis.exists(keys.latest(key), keys.history(key)) == 0


async def test_a_slow_but_steady_request_is_served(
    timed: Settings, http_server: Callable[..., ServerThread]
) -> None:
    """Headers sent in pieces, each within the header timeout of the first byte, and a body
    whose reads are never further apart than the body timeout."""
    running = http_server(timed)
    packet = b'{"id": "steady", "ts": 1700000000, "n": 1}'
    head = f"POST /ingest HTTP/1.1\r\nHost: x\r\nContent-Length: {len(packet)}\r\n\r\n".encode()

    def send() -> bytes:
        with socket.create_connection(("127.0.0.1", running.port)) as sock:
            sock.settimeout(10)
            sock.sendall(head[:10])
            time.sleep(TIMEOUT / 4)
            sock.sendall(head[10:])
            for start in range(0, len(packet), 16):
                time.sleep(TIMEOUT / 2)
                sock.sendall(packet[start : start + 16])
            return sock.recv(65536)

    status, reply = status_and_body(await asyncio.to_thread(send))
    assert status == 200 and reply["accepted"] == 1


async def test_the_uvicorn_protocol_the_header_timeout_extends_is_still_the_one_it_was_written_for(
    timed: Settings,
) -> None:
    """http_timeouts.py relies on these parts of uvicorn's httptools protocol: if this fails,
    uvicorn changed, and the header timeout may no longer be armed or fire."""
    for name in ("connection_made", "connection_lost", "on_message_begin", "on_headers_complete"):
        assert callable(getattr(HttpToolsProtocol, name, None)), name
    config = uvicorn.Config(create_app(timed), **http_options(timed))
    config.load()
    protocol_class = config.http_protocol_class
    assert issubclass(protocol_class, _HeaderTimeoutProtocol)
    assert protocol_class.header_timeout == TIMEOUT
    protocol = protocol_class(  # type: ignore[call-arg]
        config=config, server_state=uvicorn.server.ServerState(), app_state={}
    )
    for name in ("loop", "transport", "cycle"):
        assert hasattr(protocol, name), name
