"""Sessions on the server: documents and samples through the Ingestor (real Redis), the HTTP
routes through real uvicorn, the end hook (a real recording hook), the events channel."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import orjson
import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from latest_server import keys
from latest_server.ingestor import BatchResult
from latest_server.packets import Packet, PacketParser
from latest_server.resources import Resources
from latest_server.settings import Settings
from latest_server.stores.segments import Window
from tests.conftest import S3_BUCKET, Relay, unique, wait_for
from tests.sessions.helpers import EventListener, FullServer, RecordingHook

T0 = 1_700_000_000


def doc(session_id: str, state: str | None = None, ts: float = T0, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = dict(extra)
    if state is not None:
        body["state"] = state
    return {"id": session_id, "ts": ts, "@session": body}


def sample(session_id: str, variable: str, ts: float, value: Any = 1) -> dict[str, Any]:
    return {"id": variable, "ts": ts, "value": value, "@session": session_id}


@pytest.fixture
def fast(settings: Settings) -> Settings:
    # Long enough that the detector stays out of these tests' way.
    return dataclasses.replace(settings, amqp_url=None, completion_delay=30.0)


@pytest.fixture
async def opened(fast: Settings, redis: Redis) -> AsyncIterator[Callable[..., Any]]:
    """Factory: open Resources with an end hook; closed at teardown."""
    made: list[Resources] = []

    async def open_(settings: Settings = fast, on_end: Any = None) -> Resources:
        resources = await Resources.open(settings, on_end=on_end)
        made.append(resources)
        return resources

    yield open_
    for resources in reversed(made):
        await resources.close()


async def write(resources: Resources, *documents: dict[str, Any]) -> BatchResult:
    parser = PacketParser(resources.settings)
    packets = [p for p in parser.parse_message(orjson.dumps(list(documents)))]
    assert all(isinstance(p, Packet) for p in packets), packets
    return await resources.ingestor.write_batch(packets)  # type: ignore[arg-type]


async def _no_ending(redis: Redis) -> bool:
    return not await redis.zcard(keys.sessions_ending())


async def test_a_session_lives_and_ends_and_its_end_hook_runs_once(
    opened: Callable[..., Any], redis: Redis
) -> None:
    hook = RecordingHook()
    resources = await opened(on_end=hook)
    store = resources.sessions
    async with EventListener(redis) as events:
        result = await write(resources, doc("run", "open", info={"model": "m1"}))
        assert result.accepted == 1 and not result.refused
        await write(
            resources,
            sample("run", "speed", T0 + 1),
            sample("run", "speed", T0 + 2),
            sample("run", "rpm", T0 + 3),
        )
        await write(resources, sample("run", "speed", T0 + 0.5), doc("run", "closed"))

        session = await store.get("run")
        assert session is not None
        assert session.state == "closed"
        assert session.count == 4
        assert session.variables == {"speed": 3, "rpm": 1}
        assert (session.start, session.end) == ((T0 + 0.5) * 1_000_000, (T0 + 3) * 1_000_000)
        assert session.info == {"model": "m1"}
        assert session.ended is not None and session.created <= session.ended

        # the samples are ordinary history entries of their variables
        assert await redis.xlen(keys.history(keys.key_for("speed"))) == 3
        # the session document is not a variable
        assert not await redis.exists(keys.latest(keys.key_for("run")))

        # the end runner (a background task of every process) runs the hook
        await wait_for(lambda: hook.states("run") == ["closed"], within=10)
        await wait_for(lambda: _no_ending(redis), within=10)
        assert hook.states("run") == ["closed"]
        assert hook.calls[0][1] == ["rpm", "speed"]

        await wait_for(lambda: len(events.of("run", "state")) == 2, within=5)
    states = [(e["previous"], e["state"]) for e in events.of("run", "state")]
    assert states == [(None, "open"), ("open", "closed")]
    updates = events.of("run", "update")
    assert updates and updates[-1]["count"] in (3, 4)


@pytest.mark.parametrize(
    ("first", "then", "refused"),
    [
        ("closed", "open", True),
        ("failed", "closed", True),
        ("open", "waiting", True),
        ("truncated", "truncated", False),  # a redelivery: nothing changes, nothing is refused
        ("waiting", "open", False),
        ("waiting", "truncated", False),  # Ctrl+C during the preparation
    ],
)
async def test_transitions(
    opened: Callable[..., Any], first: str, then: str, refused: bool
) -> None:
    resources = await opened()
    await write(resources, doc("s", first))
    result = await write(resources, doc("s", then, ts=T0 + 1))
    if refused:
        assert [r.reason for r in result.refused] == ["bad_transition"]
        assert first in result.refused[0].detail and then in result.refused[0].detail
        assert (await resources.sessions.get("s")).state == first
    else:
        assert not result.refused
        assert (await resources.sessions.get("s")).state == then


async def test_samples_first_create_an_open_session_and_redeliveries_are_not_counted(
    opened: Callable[..., Any], redis: Redis
) -> None:
    resources = await opened()
    batch = [sample("quiet", "x", T0 + i) for i in range(5)]
    await write(resources, *batch)
    await write(resources, *batch)  # redelivered: already in history
    session = await resources.sessions.get("quiet")
    assert session is not None
    assert (session.state, session.count, session.implicit) == ("open", 5, True)
    assert await redis.zscore(keys.sessions_active(), "quiet") is not None
    await write(resources, doc("quiet", "open"))  # its document, late: fine
    assert (await resources.sessions.get("quiet")).state == "open"


async def test_a_failed_session_keeps_its_error_and_late_data_runs_the_hook_again(
    opened: Callable[..., Any],
) -> None:
    hook = RecordingHook()
    resources = await opened(on_end=hook)
    await write(resources, doc("f", "open"), sample("f", "v", T0))
    await write(resources, doc("f", "failed", error="ValueError: boom"))
    await wait_for(lambda: hook.states("f") == ["failed"], within=10)
    session = await resources.sessions.get("f")
    assert session is not None and session.error == "ValueError: boom"
    await write(resources, sample("f", "w", T0 + 1))  # arrives after the end
    await wait_for(lambda: hook.states("f") == ["failed", "failed"], within=10)
    assert hook.calls[-1][1] == ["v", "w"]


async def test_a_failing_end_hook_is_retried_until_it_succeeds(
    opened: Callable[..., Any], redis: Redis
) -> None:
    hook = RecordingHook(fail_first=2)
    resources = await opened(on_end=hook)
    resources.session_jobs.ends.retry = 0.05
    await write(resources, doc("r", "open"), sample("r", "v", T0), doc("r", "closed"))
    await wait_for(lambda: hook.states("r") == ["closed"], within=10)
    fields = await redis.hgetall(keys.session(keys.key_for("r")))
    assert fields[b"end_failures"] == b"2" and b"end_error" not in fields


async def test_an_end_hook_meeting_redis_away_is_retried_past_max_attempts(
    opened: Callable[..., Any], redis: Redis
) -> None:
    """The merge's own Redis calls raise redis-py's ConnectionError when Redis is away: like
    StoreUnavailable, that is a store coming back, not a failing hook, so it is not given up."""
    hook = RecordingHook(fail_first=4, error=RedisConnectionError("Connection refused"))
    resources = await opened(on_end=hook)
    ends = resources.session_jobs.ends
    ends.retry, ends.max_attempts = 0.05, 2
    await write(resources, doc("a", "open"), sample("a", "v", T0), doc("a", "closed"))
    await wait_for(lambda: hook.states("a") == ["closed"], within=20)
    fields = await redis.hgetall(keys.session(keys.key_for("a")))
    assert fields[b"end_failures"] == b"4" and b"end_error" not in fields


async def test_the_merge_at_a_session_end_waits_out_an_s3_outage(
    opened: Callable[..., Any], fast: Settings, s3_relay: Relay, redis: Redis
) -> None:
    """The default end hook (move what is left in Redis, merge) meets an S3 that is cut: its
    StoreUnavailable does not count against max_attempts (2 here, after which any other failure
    is given up with end_error), so the hook is retried with backoff until S3 is back, and then
    the session's history is merged."""
    objects = f"s3://{S3_BUCKET}/{unique('ends')}"
    config = dataclasses.replace(fast, objects_url=objects, s3_timeout=0.5, s3_attempts=1)
    resources = await opened(config)
    ends = resources.session_jobs.ends
    ends.retry, ends.max_attempts = 0.05, 2
    s3_relay.cut()
    await write(resources, doc("o", "open"), sample("o", "v", T0), sample("o", "v", T0 + 1))
    await write(resources, doc("o", "closed"))
    session_key = keys.session(keys.key_for("o"))

    async def failed(times: int) -> bool:
        return int(await redis.hget(session_key, "end_failures") or 0) >= times

    await wait_for(lambda: failed(4), within=20)  # past max_attempts, and still queued
    assert b"is unavailable" in (await redis.hget(session_key, "end_error") or b"")
    s3_relay.up()
    await wait_for(lambda: _no_ending(redis), within=30)
    assert b"end_error" not in await redis.hgetall(session_key)
    k = keys.key_for("v")
    assert len(resources.objects.list(keys.merged_prefix(k))) == 1
    page = await resources.history.read(k, Window(-(2**62), 2**62))
    assert page.entries.column("seq").to_pylist() == [1, 2]


def test_http_routes_and_refusals(fast: Settings, redis: Redis) -> None:
    with FullServer(fast) as server, httpx.Client(base_url=server.url, timeout=10) as http:
        body = [doc("web", "open"), sample("web", "a", T0), sample("web", "b", T0 + 1)]
        assert http.post("/ingest", content=orjson.dumps(body)).json()["accepted"] == 3
        other = [doc("old", "closed")]
        assert http.post("/ingest", content=orjson.dumps(other)).status_code == 200

        one = http.get("/sessions/web")
        assert one.status_code == 200
        got = one.json()
        assert got["state"] == "open" and got["count"] == 2
        assert got["variables"] == {"a": 1, "b": 1}
        assert got["start"] == T0 * 1_000_000 and got["end"] == (T0 + 1) * 1_000_000

        listed = http.get("/sessions").json()["sessions"]
        assert [s["id"] for s in listed] == ["old", "web"]
        assert [s["id"] for s in http.get("/sessions?state=open").json()["sessions"]] == ["web"]
        assert len(http.get("/sessions?limit=1").json()["sessions"]) == 1
        assert http.get("/sessions?state=dancing").status_code == 400
        assert http.get("/sessions/nope").json()["error"]["type"] == "not_found"

        # a refused transition is named in the answer; all refused → 400
        refused = http.post("/ingest", content=orjson.dumps([doc("old", "open")]))
        assert refused.status_code == 400
        assert refused.json()["rejected"][0]["error"] == "bad_transition"
        mixed = [sample("web", "a", T0 + 2), doc("old", "open"), {"id": "x"}]
        answer = http.post("/ingest", content=orjson.dumps(mixed)).json()
        assert [(r["index"], r["error"]) for r in answer["rejected"]] == [
            (1, "bad_transition"),
            (2, "missing_time"),
        ]
        bad = http.post("/ingest", content=orjson.dumps(doc("z", "dancing")))
        assert bad.json()["error"]["type"] == "bad_session"
