"""What the Grafana tests share: data written across every tier of history, what Grafana's
Elasticsearch data source sends (the shapes of its Go backend, pkg/tsdb/elasticsearch: the
``_msearch`` header of client.go, the bodies of its request fixtures testdata_request/*.json with
our field names), and the brute-force answers the tests hold the server's to.

The data: three variables, an entry every 10 s for 15 minutes each. The first third is merged
(a merged object), the second offloaded (transfer objects), the last in Redis; a late packet
goes back into the merged third, and a packet of the transfer third is delivered again after it
left Redis (history keeps both copies, reads drop the second)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from latest_server import keys
from latest_server.packets import Packet
from latest_server.resources import Resources
from tests.conftest import PARSER

T0 = 1_700_000_000  # 2023-11-14T22:13:20Z
STEP = 10  # seconds between entries
COUNT = 90  # entries per variable
VARIABLES = ("room/1", "room/2", "room/3")
TIME_FIELD = "ts"
FROM_MS = (T0 - 60) * 1000
TO_MS = (T0 + STEP * COUNT + 60) * 1000
MSEARCH = "/_msearch?max_concurrent_shard_requests=5"
HEADER = {"search_type": "query_then_fetch", "ignore_unavailable": True, "index": "latest"}


@dataclass(frozen=True)
class Entry:
    variable: str
    ts_ms: int
    doc: dict[str, Any]

    @property
    def temp(self) -> float:
        return float(self.doc["temp"])


def document(variable: str, n: int, *, late: bool = False) -> dict[str, Any]:
    number = VARIABLES.index(variable)
    temp = round(20 + 5 * math.sin(n / 7 + number) + number, 3)
    if late:
        temp += 100.0
    return {
        "id": variable,
        "ts": T0 + STEP * n + (3 if late else 0),
        "temp": temp,
        "unit": "C",
        "meta": {"rssi": -40 - (n % 9)},
    }


def _packet(doc: dict[str, Any]) -> Packet:
    item = PARSER.parse_document(0, orjson.loads(orjson.dumps(doc)))
    assert isinstance(item, Packet)
    return item


async def fill(stores: Resources) -> list[Entry]:
    """Write the data (see the module's docstring); returns the entries history holds, once
    each."""
    written: list[dict[str, Any]] = []

    async def write(docs: list[dict[str, Any]]) -> None:
        await stores.ingestor.write_batch([_packet(d) for d in docs])
        written.extend(docs)

    third = COUNT // 3
    await write([document(v, n) for v in VARIABLES for n in range(third)])
    await stores.offloader.run_job(everything=True)
    for variable in VARIABLES:
        report = await stores.merger.merge_variable(variable)
        assert report.inputs, "a merged object of the first third"
    await write([document(v, n) for v in VARIABLES for n in range(third, 2 * third)])
    await stores.offloader.run_job(everything=True)
    await write([document(v, n) for v in VARIABLES for n in range(2 * third, COUNT)])
    await write([document("room/2", 5, late=True)])  # late: into the merged third's time
    await stores.ingestor.write_batch([_packet(document("room/1", 40))])  # again, from Redis gone
    for variable in VARIABLES:  # every tier holds some of each variable
        key = keys.key_for(variable)
        assert stores.objects.list(keys.merged_prefix(key)), variable
        assert stores.objects.list(keys.transfer_prefix(key)), variable
    return [Entry(d["id"], d["ts"] * 1000, d) for d in written]


def msearch_body(*bodies: dict[str, Any]) -> bytes:
    """The NDJSON Grafana's client.go sends: a header line and a body line per query."""
    return b"".join(orjson.dumps(HEADER) + b"\n" + orjson.dumps(b) + b"\n" for b in bodies)


def time_filter(query: str | None = None) -> dict[str, Any]:
    """Grafana's ``query``: a range on the time field, and its query string when set."""
    clauses: list[dict[str, Any]] = [
        {"range": {TIME_FIELD: {"gte": FROM_MS, "lte": TO_MS, "format": "epoch_millis"}}}
    ]
    if query:
        clauses.append({"query_string": {"analyze_wildcard": True, "query": query}})
    return {"bool": {"filter": clauses[0] if len(clauses) == 1 else clauses}}


def histogram(interval: str, **extra: Any) -> dict[str, Any]:
    """Grafana's date_histogram (data_query.go addDateHistogramAgg)."""
    return {
        "field": TIME_FIELD,
        "min_doc_count": 0,
        "extended_bounds": {"min": FROM_MS, "max": TO_MS},
        "format": "epoch_millis",
        "fixed_interval": interval,
        **extra,
    }


def fixed_buckets(entries: list[Entry], size_ms: int) -> Iterator[tuple[int, list[Entry]]]:
    """The buckets of a fixed interval over the extended bounds, computed by counting."""
    first = FROM_MS // size_ms * size_ms
    key = first
    while key <= TO_MS:
        yield key, [e for e in entries if key <= e.ts_ms < key + size_ms]
        key += size_ms


def series(buckets: list[dict[str, Any]], metric: str) -> list[tuple[int, Any]]:
    """What Grafana's response_parser.go reads of a date_histogram: (key, metric value)."""
    return [(b["key"], b[metric]["value"]) for b in buckets]
