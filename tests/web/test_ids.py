"""Ids are free text: every id a write accepts is readable by every route. Through real uvicorn,
httpx and the websockets client, an id with a line break, a tab, ``%``, ``/``, ``?``, ``#``,
an emoji or a character outside Latin-1 goes write → read on /latest, /history, the ES API's
``_doc``, ``_source``, ``_mget``, ``_update`` and ``DELETE``, and the websocket."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from urllib.parse import quote

import httpx
import orjson
import pytest
import websockets

from latest_server.settings import Settings
from tests.conftest import ServerThread, ws_url

IDS = ["line\nbreak", "tab\there", "50%25 %zz", "a/b/c", "why?x=1", "ha#sh", "🌡 probe", "Ωmega/ß"]
T0 = 1_700_000_000


@pytest.fixture
def running(settings: Settings, http_server: Callable[..., ServerThread]) -> ServerThread:
    return http_server(settings, amqp_url=None, es_prefix="/es")


@pytest.fixture
def clients(running: ServerThread) -> Iterator[tuple[httpx.Client, httpx.Client]]:
    with (
        httpx.Client(base_url=running.url, timeout=10) as main,
        httpx.Client(base_url=running.url + "/es", timeout=10) as es,
    ):
        yield main, es


def path(doc_id: str) -> str:
    return quote(doc_id, safe="")


@pytest.mark.parametrize("doc_id", IDS)
def test_an_id_written_over_es_is_read_by_every_route(
    clients: tuple[httpx.Client, httpx.Client], running: ServerThread, doc_id: str
) -> None:
    main, es = clients
    created = es.put(f"/latest/_doc/{path(doc_id)}", json={"id": doc_id, "ts": T0, "v": 1})
    assert created.status_code == 201, created.text
    assert created.json()["_id"] == doc_id
    assert created.headers["location"] == f"/latest/_doc/{path(doc_id)}"
    latest = main.get(f"/latest/{path(doc_id)}")
    assert latest.status_code == 200
    assert latest.json() == {"id": doc_id, "ts": T0, "v": 1}
    history = main.get(f"/history/{path(doc_id)}").json()
    assert history["variable"] == doc_id and len(history["entries"]) == 1
    got = es.get(f"/latest/_doc/{path(doc_id)}").json()
    assert (got["_id"], got["_source"]["v"]) == (doc_id, 1)
    assert es.head(f"/latest/_doc/{path(doc_id)}").status_code == 200
    assert es.get(f"/latest/_source/{path(doc_id)}").json()["v"] == 1
    docs = es.post("/latest/_mget", json={"ids": [doc_id]}).json()["docs"]
    assert docs[0]["found"] is True
    updated = es.post(f"/latest/_update/{path(doc_id)}", json={"doc": {"v": 2, "ts": T0 + 1}})
    assert updated.status_code == 200, updated.text
    assert main.get(f"/latest/{path(doc_id)}").json()["v"] == 2
    assert asyncio.run(subscribe_latest(running, doc_id))["v"] == 2
    deleted = es.delete(f"/latest/_doc/{path(doc_id)}")
    assert deleted.json()["result"] == "deleted"
    assert main.get(f"/latest/{path(doc_id)}").status_code == 404


async def subscribe_latest(running: ServerThread, doc_id: str) -> dict[str, object]:
    url = ws_url(running)
    async with websockets.connect(url) as ws, asyncio.timeout(10):
        await ws.send(orjson.dumps({"op": "subscribe", "ids": [doc_id], "latest": True}).decode())
        entries = []
        while True:
            frame = orjson.loads(await ws.recv())
            assert frame["type"] != "error", frame
            assert frame["id"] == doc_id
            if frame["type"] == "backlog":
                entries += frame["entries"]
            if frame["type"] == "live":
                return dict(entries[-1]["doc"])


def test_ids_ingested_over_http_are_read_by_path(
    clients: tuple[httpx.Client, httpx.Client],
) -> None:
    main, es = clients
    body = [{"id": doc_id, "ts": T0 + n} for n, doc_id in enumerate(IDS)]
    assert main.post("/ingest", content=orjson.dumps(body)).json()["accepted"] == len(IDS)
    for n, doc_id in enumerate(IDS):
        assert main.get(f"/latest/{path(doc_id)}").json()["ts"] == T0 + n
        assert es.get(f"/latest/_doc/{path(doc_id)}").json()["_source"]["ts"] == T0 + n
    # "a\n" is its own variable, never "a" read through a final line break
    main.post("/ingest", content=orjson.dumps({"id": "a", "ts": T0}))
    assert main.get("/latest/a%0A").status_code == 404


def test_a_created_document_in_an_index_named_outside_latin_1_answers_201(
    clients: tuple[httpx.Client, httpx.Client],
) -> None:
    """The write commits before the answer is built: its Location header must never fail."""
    _, es = clients
    created = es.put("/%C3%ADndice-%CF%89/_doc/x%0Ay", json={"v": 1})
    assert created.status_code == 201, created.text
    assert created.headers["location"] == "/%C3%ADndice-%CF%89/_doc/x%0Ay"
    assert es.get("/%C3%ADndice-%CF%89/_doc/x%0Ay").json()["_source"] == {"v": 1}
