"""Property tests of what producers send: packet parsing, and `POST /ingest` and `_bulk` bodies
through real uvicorn and Redis. Whatever the bytes (deep nesting, big and odd numbers, unicode and
control characters in ids, every time form, gzip), the server never answers 5xx, never raises out
of the parser, gives every refusal a reason, and every packet it acknowledged is in history.

Examples are bounded (CI runs them every time); hypothesis's database is off so a run does not
depend on the last one."""

from __future__ import annotations

import gzip
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from latest_server.errors import REJECT_REASONS
from latest_server.packets import Packet, PacketParser, Rejection
from latest_server.settings import Settings
from tests.conftest import REDIS_URL, ServerThread

PROPERTY = settings(
    max_examples=40,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
HTTP_PROPERTY = settings(PROPERTY, max_examples=25)

# --- what producers send ---------------------------------------------------------------------

# Integers past 64 bits are valid JSON that orjson neither reads nor writes: sent as fragments.
big_integers = st.integers(min_value=2**63, max_value=2**80).map(
    lambda n: orjson.Fragment(str(n).encode())
)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | big_integers
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


def nested(depth: int) -> orjson.Fragment:
    """``depth`` levels of arrays and objects, as JSON text (past orjson's encoder limit too)."""
    opening = "".join('{"n":' if i % 2 else "[" for i in range(depth))
    closing = "".join("}" if i % 2 else "]" for i in reversed(range(depth)))
    return orjson.Fragment(f"{opening}1{closing}".encode())


ids = st.text(min_size=1, max_size=30) | st.integers(min_value=-(2**40), max_value=2**40)
times = (
    st.integers(min_value=1_000_000_000, max_value=2_000_000_000)  # epoch s
    | st.integers(min_value=10**12, max_value=2 * 10**12)  # ms
    | st.integers(min_value=10**15, max_value=2 * 10**15)  # µs
    | st.floats(min_value=1e9, max_value=2e9)
    | st.datetimes(timezones=st.timezones()).map(lambda moment: moment.isoformat())
    | st.text(max_size=12)  # mostly not a time at all
    | st.integers(min_value=2**53, max_value=2**63)  # out of range
    | big_integers
)
extra = st.dictionaries(
    st.sampled_from(["pm25", "v", "a.b", "note", "ünï", "\x00"]), json_values, max_size=3
)
depths = st.sampled_from([0, 3, 100, 253, 254, 255, 300, 600, 1000, 1023, 1100])


@st.composite
def packets(draw: st.DrawFn) -> Any:
    """A packet, mostly well formed; sometimes missing or breaking a field, deeply nested, or not
    an object at all."""
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return draw(json_values)
    doc: dict[str, Any] = draw(extra)
    if kind != 1:
        doc["id"] = draw(ids)
    if kind != 2:
        doc["ts"] = draw(times)
    if kind == 3:
        doc["deep"] = nested(draw(depths))
    if kind == 4:
        doc["@session"] = draw(json_values)
    return doc


dumps = orjson.dumps


# --- the parser alone -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def parser() -> PacketParser:
    return PacketParser(Settings(redis_url=REDIS_URL))  # type: ignore[call-arg]


@PROPERTY
@given(items=st.lists(packets(), max_size=8), ndjson=st.booleans())
def test_the_parser_answers_every_item_with_a_packet_or_a_reason(
    parser: PacketParser, items: list[Any], ndjson: bool
) -> None:
    body = b"\n".join(dumps(item) for item in items) if ndjson else dumps(items)
    results = parser.parse_message(body, ndjson=ndjson)
    whole = (
        len(results) == 1 and isinstance(results[0], Rejection) and results[0].reason == "too_deep"
    )
    if not ndjson and not whole:
        assert len(results) == len(items)  # else an item past what JSON readers take refused all
    for result in results:
        assert isinstance(result, (Packet, Rejection))
        if isinstance(result, Rejection):
            assert result.reason in REJECT_REASONS
            assert result.detail
        else:
            assert -(2**53) < result.ts_us < 2**53


@PROPERTY
@given(body=st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_the_parser_answers_any_bytes(parser: PacketParser, body: bytes) -> None:
    for result in parser.parse_message(body) + parser.parse_message(body, ndjson=True):
        assert isinstance(result, Packet) or result.reason in REJECT_REASONS


# --- through the server ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    """One server for every example: each example writes ids of its own."""
    data = Path(tmp_path_factory.mktemp("properties"))
    configured = Settings(  # type: ignore[call-arg]
        redis_url=REDIS_URL, data_dir=str(data), es_prefix="/es", max_body_bytes=2_000_000
    )
    with (
        ServerThread(configured) as running,
        httpx.Client(base_url=running.url, timeout=30) as http,
    ):
        yield http


def stamp(items: list[Any]) -> list[Any]:
    """The packets with ids of this example's own (so examples never see each other's data)."""
    run = uuid.uuid4().hex[:8]
    stamped = []
    for item in items:
        if isinstance(item, dict) and "id" in item:
            item = {**item, "id": f"{run}/{item['id']}"}
        stamped.append(item)
    return stamped


def history(http: httpx.Client, variable_id: str) -> list[dict[str, Any]]:
    response = http.get(f"/history/{quote(variable_id, safe='')}", params={"limit": 10_000})
    assert response.status_code == 200, response.text
    return list(response.json()["entries"])


def assert_in_history(http: httpx.Client, packet: Packet) -> None:
    """An acknowledged packet is in its variable's history, by time and content."""
    entries = history(http, packet.variable_id)
    wanted = orjson.loads(packet.raw)
    assert any(e["ts"] == packet.ts_us and e["doc"] == wanted for e in entries), packet.variable_id


@HTTP_PROPERTY
@given(items=st.lists(packets(), min_size=1, max_size=6), ndjson=st.booleans())
def test_ingest_never_fails_and_keeps_every_packet_it_acknowledged(
    server: httpx.Client, parser: PacketParser, items: list[Any], ndjson: bool
) -> None:
    items = stamp(items)
    if ndjson:
        body = b"\n".join(dumps(item) for item in items)
        response = server.post(
            "/ingest", content=body, headers={"content-type": "application/x-ndjson"}
        )
    else:
        body = dumps(items)
        response = server.post("/ingest", content=body)
    assert response.status_code < 500, response.text
    answer = response.json()
    if response.status_code != 200:
        assert answer["error"]["type"] and answer["error"]["reason"]
        return
    # Duplicates (a packet repeated in the body) are a subset of the stale ones.
    assert answer["duplicates"] <= answer["stale"]
    counted = answer["accepted"] + answer["stale"] + len(answer["rejected"])
    parsed = parser.parse_message(body, ndjson=ndjson)
    assert counted == len(parsed)
    for rejected in answer["rejected"]:
        assert rejected["error"] in REJECT_REASONS and rejected["detail"]
    refused = {r["index"] for r in answer["rejected"]}
    for position, result in enumerate(parsed):
        if isinstance(result, Packet) and position not in refused and result.session_doc is None:
            assert_in_history(server, result)


@st.composite
def bulk_bodies(draw: st.DrawFn) -> tuple[list[Any], bytes]:
    """A `_bulk` body: index/create actions over generated packets, sometimes with a version."""
    items = stamp(draw(st.lists(packets(), min_size=1, max_size=5)))
    lines = []
    for item in items:
        action: dict[str, Any] = {"_index": "latest"}
        if isinstance(item, dict) and isinstance(item.get("id"), str | int):
            action["_id"] = str(item["id"])
        if draw(st.booleans()):
            action["version"] = draw(times)
            action["version_type"] = draw(st.sampled_from(["external", "external_gte"]))
        lines += [orjson.dumps({draw(st.sampled_from(["index", "create"])): action}), dumps(item)]
    return items, b"\n".join(lines) + b"\n"


@HTTP_PROPERTY
@given(bulk=bulk_bodies(), compress=st.sampled_from(["none", "gzip", "two members", "truncated"]))
def test_bulk_never_fails_and_answers_every_item(
    server: httpx.Client, bulk: tuple[list[Any], bytes], compress: str
) -> None:
    items, body = bulk
    headers = {"content-type": "application/x-ndjson"}
    if compress != "none":
        headers["content-encoding"] = "gzip"
        half = len(body) // 2
        if compress == "gzip":
            body = gzip.compress(body)
        elif compress == "two members":
            body = gzip.compress(body[:half]) + gzip.compress(body[half:])
        else:
            body = gzip.compress(body)[:-5]
    response = server.post("/es/_bulk", content=body, headers=headers)
    assert response.status_code < 500, response.text
    answer = response.json()
    if compress == "truncated":
        assert response.status_code == 400
        assert answer["error"]["type"] and answer["error"]["reason"]
        return
    assert response.status_code == 200, answer
    assert len(answer["items"]) == len(items)
    for item in answer["items"]:
        (result,) = item.values()
        if "error" in result:
            assert result["error"]["type"] and result["error"]["reason"]
            assert 400 <= result["status"] < 500
        else:
            assert result["status"] in (200, 201)
            assert history(server, result["_id"]), result
    assert answer["errors"] == any("error" in next(iter(i.values())) for i in answer["items"])
