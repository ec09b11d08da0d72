"""Tokens on the websocket, with the websockets client against a real uvicorn server: the
token in the upgrade's header or in the first message, nothing before it but ping, a
subscription refused per id outside the token's prefixes (the others go on), a bad token or a
foreign Origin refused at the upgrade."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

from latest_server.resources import Resources
from latest_server.settings import Settings
from tests.auth.helpers import bearer, secret, write_tokens
from tests.conftest import ServerThread, packet, ws_url


@pytest.fixture
def server(
    settings: Settings, tmp_path: Path, http_server: Callable[..., ServerThread]
) -> ServerThread:
    tokens = write_tokens(tmp_path / "tokens.toml")
    return http_server(settings, amqp_url=None, tokens_file=str(tokens))


async def send(ws: Any, message: dict[str, Any]) -> None:
    await ws.send(orjson.dumps(message).decode())


async def until(ws: Any, done: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
    got = []
    async with asyncio.timeout(20):
        while True:
            frame = orjson.loads(await ws.recv())
            got.append(frame)
            if done(frame):
                return got


async def test_first_message_auth_and_per_id_refusal(
    server: ServerThread, resources: Resources
) -> None:
    await resources.ingestor.write_batch([packet("a/1", 1), packet("b/1", 1)])
    async with websockets.connect(ws_url(server)) as ws:
        await send(ws, {"op": "ping"})
        assert orjson.loads(await ws.recv()) == {"type": "pong"}
        await send(ws, {"op": "subscribe", "ids": ["a/1"]})
        refused = orjson.loads(await ws.recv())
        assert (refused["type"], refused["reason"]) == ("error", "unauthorized")
        await send(ws, {"type": "auth", "token": "lt_wrong"})
        assert orjson.loads(await ws.recv())["reason"] == "unauthorized"
        await send(ws, {"type": "auth", "token": secret("reader")})
        assert orjson.loads(await ws.recv()) == {"type": "authenticated", "name": "reader"}
        await send(ws, {"op": "subscribe", "ids": ["b/1", "a/1"], "latest": True})
        got = await until(ws, lambda f: f["type"] == "live")
        errors = [f for f in got if f["type"] == "error"]
        assert [(f["reason"], f["id"]) for f in errors] == [("forbidden", "b/1")]
        assert [f["id"] for f in got if f["type"] == "subscribed"] == ["a/1"]
        assert all(f.get("id") != "b/1" for f in got if f["type"] != "error")
        await resources.ingestor.write_batch([packet("a/1", 2), packet("b/1", 2)])
        live = await until(ws, lambda f: f["type"] == "entry")
        assert live[-1]["id"] == "a/1" and live[-1]["doc"]["n"] == 2


async def test_header_token_and_refused_upgrades(server: ServerThread) -> None:
    async with websockets.connect(ws_url(server), additional_headers=bearer("reader")) as ws:
        await send(ws, {"op": "subscribe", "ids": ["a/x"]})
        assert orjson.loads(await ws.recv())["type"] == "subscribed"
    for headers, status in (
        ({"Authorization": "Bearer lt_wrong"}, 401),
        (bearer("writer"), 403),  # no read scope
        ({**bearer("reader"), "Origin": "https://evil.example"}, 403),
    ):
        with pytest.raises(InvalidStatus) as refused:
            async with websockets.connect(ws_url(server), additional_headers=headers):
                pass
        assert refused.value.response.status_code == status, headers
    same_origin = {**bearer("reader"), "Origin": server.url}
    async with websockets.connect(ws_url(server), additional_headers=same_origin) as ws:
        await send(ws, {"op": "ping"})
        assert orjson.loads(await ws.recv()) == {"type": "pong"}


async def test_a_socket_that_does_not_authenticate_in_time_is_closed(
    settings: Settings, tmp_path: Path, http_server: Callable[..., ServerThread]
) -> None:
    tokens = write_tokens(tmp_path / "tokens.toml")
    server = http_server(settings, amqp_url=None, tokens_file=str(tokens), ws_auth_timeout=0.5)
    async with websockets.connect(ws_url(server)) as ws:
        await send(ws, {"op": "ping"})  # answered, but it does not count as authenticating
        assert orjson.loads(await ws.recv()) == {"type": "pong"}
        late = orjson.loads(await ws.recv())
        assert (late["type"], late["reason"]) == ("error", "unauthorized")
        with pytest.raises(ConnectionClosed):
            await ws.recv()
        assert ws.close_code == 1008
    async with websockets.connect(ws_url(server)) as ws:  # one that does stays
        await send(ws, {"type": "auth", "token": secret("reader")})
        assert orjson.loads(await ws.recv())["type"] == "authenticated"
        await asyncio.sleep(0.8)
        await send(ws, {"op": "ping"})
        assert orjson.loads(await ws.recv()) == {"type": "pong"}


async def test_session_subscriptions_are_refused_per_id(
    server: ServerThread, resources: Resources
) -> None:
    documents = [
        packet(sid, 1, **{"@session": {"state": "open"}}) for sid in ("a/run-1", "b/run-2")
    ]
    await resources.ingestor.write_batch(documents)
    async with websockets.connect(ws_url(server), additional_headers=bearer("reader")) as ws:
        await send(ws, {"op": "subscribe", "sessions": ["b/run-2", "a/run-1"]})
        refused = orjson.loads(await ws.recv())
        assert (refused["type"], refused["reason"], refused["session"]) == (
            "error",
            "forbidden",
            "b/run-2",
        )
        subscribed = orjson.loads(await ws.recv())
        assert subscribed == {"type": "subscribed", "session": "a/run-1"}
