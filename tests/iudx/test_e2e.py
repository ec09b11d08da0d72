"""End to end, as an IUDX reader sees it: latest-server ingests over HTTP and AMQP (the suite's
RabbitMQ vhost) with LATEST_BACKEND=redisjson, packets out of order and redelivered, and a
separate redis-py client runs the reference reader's ``JSON.GET <prefix><group> ._<sha1>`` (and
``JSON.GET <key> .`` for the group). fakeredis' TCP server stands in for Redis Stack, because
the JSON module cannot run on this machine (tests/iudx/fakejson.py)."""

from __future__ import annotations

import dataclasses
import hashlib
import random
from collections.abc import Callable
from typing import Any

import httpx
import orjson
import redis

from latest_server import keys
from latest_server.resources import Resources
from latest_server.settings import Settings
from tests.conftest import ServerThread, publish, wait_for
from tests.test_consumer import Running

GROUP = "iisc.ac.in/89a36273d77dac4cf38114fca1bbe64392547f86/rs.iudx.io/pune-env-flood"
RESOURCES = [f"{GROUP}/FWR0{n:02d}" for n in range(4)]


def packets(resource: str, count: int) -> list[dict[str, Any]]:
    return [
        {
            "id": resource,
            "observationDateTime": f"2024-05-01T10:{minute:02d}:00+05:30",
            "currentLevel": minute / 10,
        }
        for minute in range(count)
    ]


def sha1(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


async def test_an_iudx_reader_reads_what_was_ingested_over_http_and_amqp(
    settings: Settings, http_server: Callable[..., ServerThread], fake_url: str, amqp: Any
) -> None:
    configured = dataclasses.replace(settings, redis_url=fake_url, backend="redisjson")
    rng = random.Random(26)
    sent = {resource: packets(resource, 12) for resource in RESOURCES}
    over_http: list[dict[str, Any]] = []
    over_amqp: list[dict[str, Any]] = []
    for docs in sent.values():
        for doc in docs + rng.sample(docs, 3):  # three redelivered
            (over_http if rng.random() < 0.5 else over_amqp).append(doc)
    rng.shuffle(over_http)
    rng.shuffle(over_amqp)
    late = 0  # packets sent after a newer one of their resource, on the same edge
    for resource in RESOURCES:  # each edge alone carries some packets of every resource
        mine = [[d for d in edge if d["id"] == resource] for edge in (over_http, over_amqp)]
        assert all(any(d not in other for d in edge) for edge, other in (mine, mine[::-1]))
        for edge in mine:
            times = [d["observationDateTime"] for d in edge]
            late += sum(1 for i, t in enumerate(times) if any(u > t for u in times[:i]))
    assert late > 10

    server = http_server(configured, amqp_url=None)
    resources = await Resources.open(configured)
    consumer = await Running(configured, resources).start()
    reader = redis.Redis.from_url(fake_url)  # the IUDX reader: its own client, sync
    try:
        await publish(amqp, configured.exchange, [orjson.dumps(d) for d in over_amqp])
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            for start in range(0, len(over_http), 7):
                chunk = over_http[start : start + 7]
                response = await client.post("/ingest", content=orjson.dumps(chunk))
                assert response.status_code == 200, response.text

            def every_packet_in_history() -> bool:
                lengths = [reader.xlen(keys.history(keys.key_for(r))) for r in RESOURCES]
                return lengths == [12] * len(RESOURCES)

            await wait_for(every_packet_in_history)

            key = f"iudx:{GROUP}"
            for resource, docs in sent.items():
                newest = docs[-1]
                member = reader.execute_command("JSON.GET", key, f"._{sha1(resource)}")
                assert orjson.loads(member) == newest, resource
                assert (await client.get(f"/latest/{resource}")).json() == newest
                body = (await client.get(f"/ngsi-ld/v1/entities/{resource}")).json()
                assert body["results"] == [newest]
            whole = orjson.loads(reader.execute_command("JSON.GET", key, "."))
            assert whole == {f"_{sha1(r)}": docs[-1] for r, docs in sent.items()}
    finally:
        reader.close()
        await consumer.stop()
        await resources.close()
