"""Watching sessions over the websocket: real uvicorn, the `websockets` client, real Redis, and
the completion detector of the server's own resources (delays scaled down through settings)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import httpx
import orjson
import pytest
import websockets
from redis.asyncio import Redis

from latest_server.settings import Settings
from tests.conftest import ServerThread
from tests.web.test_ws import frames, ws_url
from tests.web.test_ws_faults import kill_feed_connections

T0 = 1_700_000_000


def session_doc(session_id: str, state: str, ts: float = T0) -> dict[str, Any]:
    return {"id": session_id, "ts": ts, "@session": {"state": state}}


def sample(session_id: str, variable: str, ts: float) -> dict[str, Any]:
    return {"id": variable, "ts": ts, "value": 1, "@session": session_id}


async def post(http: httpx.AsyncClient, *documents: dict[str, Any]) -> None:
    answer = await http.post("/ingest", content=orjson.dumps(list(documents)))
    assert answer.status_code == 200, answer.text
    assert not answer.json()["rejected"], answer.text


async def collect(ws: Any, seconds: float) -> list[dict[str, Any]]:
    """Every frame received within ``seconds``."""
    got: list[dict[str, Any]] = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            async with asyncio.timeout(left):
                got.append(orjson.loads(await ws.recv()))
        except TimeoutError:
            break
    return got


@pytest.fixture
def server(
    settings: Settings, http_server: Callable[..., ServerThread]
) -> Callable[..., ServerThread]:
    def start(**overrides: Any) -> ServerThread:
        return http_server(settings, **overrides)

    return start


def is_session(session_id: str, event: str, state: str | None = None) -> Callable[[Any], bool]:
    def match(frame: dict[str, Any]) -> bool:
        return (
            frame.get("type") == "session"
            and frame.get("id") == session_id
            and frame.get("event") == event
            and (state is None or frame.get("state") == state)
        )

    return match


async def test_a_watcher_gets_the_state_then_every_change_and_one_complete(
    server: Callable[..., ServerThread],
) -> None:
    srv = server(completion_delay=0.3, completion_repeats=2)
    async with (
        websockets.connect(ws_url(srv)) as ws,
        httpx.AsyncClient(base_url=srv.url) as http,
    ):
        await post(http, session_doc("known", "open"))
        await ws.send('{"op": "subscribe", "sessions": ["known", "run", "quiet"]}')
        got = await frames(ws, is_session("quiet", "snapshot"))
        assert [f["session"] for f in got if f["type"] == "subscribed"] == [
            "known",
            "run",
            "quiet",
        ]
        snapshots = {f["id"]: f for f in got if f["type"] == "session"}
        assert snapshots["known"]["state"] == "open"
        assert snapshots["known"]["session"]["id"] == "known"
        assert snapshots["run"]["state"] is None and snapshots["run"]["session"] is None

        # a session's life: opened, samples counted, closed
        await post(http, session_doc("run", "open"))
        got = await frames(ws, is_session("run", "state", "open"))
        assert got[-1]["previous"] is None
        await post(http, sample("run", "run/speed", T0 + 1), sample("run", "run/speed", T0 + 2))
        got = await frames(ws, lambda f: is_session("run", "update")(f) and f["count"] == 2)
        await post(http, session_doc("run", "closed", T0 + 3))
        got = await frames(ws, is_session("run", "state", "closed"))
        assert got[-1]["previous"] == "open" and got[-1]["count"] == 2

        # a producer that just stops: the detector declares it complete, once
        await post(http, session_doc("quiet", "open"), sample("quiet", "quiet/speed", T0))
        got = await frames(ws, is_session("quiet", "complete"), within=30)
        assert got[-1]["state"] == "complete" and got[-1]["count"] == 1
        later = await collect(ws, 1.5)
        assert not [f for f in later if is_session("quiet", "complete")(f)], later

        # "known" never changed state: it is open, not complete, as long as it is watched... and
        # unsubscribing stops its frames
        await ws.send('{"op": "unsubscribe", "sessions": ["known"]}')
        await frames(ws, lambda f: f == {"type": "unsubscribed", "session": "known"})
        await post(http, session_doc("known", "closed", T0 + 5))
        later = await collect(ws, 1.0)
        assert not [f for f in later if f.get("id") == "known"], later


async def test_after_the_feed_reconnects_every_watcher_gets_a_fresh_snapshot(
    server: Callable[..., ServerThread], redis: Redis
) -> None:
    srv = server(ws_probe_interval=30.0)
    async with (
        websockets.connect(ws_url(srv)) as ws,
        httpx.AsyncClient(base_url=srv.url) as http,
    ):
        await post(http, session_doc("s", "open"))
        await ws.send('{"op": "subscribe", "sessions": ["s"]}')
        await frames(ws, is_session("s", "snapshot", "open"))
        assert await kill_feed_connections(redis) >= 1
        # The change may be published while the feed is down (pub/sub drops it): the snapshot
        # sent once the channel is confirmed again carries it then. Either way a snapshot comes,
        # and the last session frame tells the current state.
        await post(http, session_doc("s", "closed", T0 + 1))
        seen: list[dict[str, Any]] = []

        def settled(frame: dict[str, Any]) -> bool:
            if frame.get("type") == "session":
                seen.append(frame)
            return any(f["event"] == "snapshot" for f in seen) and seen[-1]["state"] == "closed"

        await frames(ws, settled)
        assert all(f["state"] in ("open", "closed") for f in seen), seen


async def test_bad_session_requests_get_error_frames(server: Callable[..., ServerThread]) -> None:
    srv = server(ws_max_subscriptions=2)
    async with websockets.connect(ws_url(srv)) as ws:
        await ws.send('{"op": "subscribe", "sessions": []}')
        assert (await frames(ws, lambda f: True))[0]["reason"] == "bad_sessions"
        await ws.send('{"op": "subscribe", "sessions": ["a", "b", "c"]}')
        assert (await frames(ws, lambda f: True))[0]["reason"] == "too_many_subscriptions"
        await ws.send('{"op": "ping"}')
        assert await frames(ws, lambda f: True) == [{"type": "pong"}]
