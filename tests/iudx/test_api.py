"""The IUDX resource server's latest API through real uvicorn and httpx, checked against the
shapes of the IUDX API documentation: the resource server's (iudx-resource-server,
docs/openapi.yaml: ``entityresponse``, ``standardResourceNotFoundErrorResponse``,
``standardBadRequestErrorResponse``) and the newer data plane's (dx-dataplane-rs,
docs/dataplane-openapi: ``entityresponse`` with ``paginationInfo``, ``invalidParam…``,
``standardResourceNotFoundErrorResponse``). The sample packet is the one those documents show."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import orjson
import pytest

from latest_server.settings import Settings
from tests.conftest import REDIS_URL, ServerThread
from tests.servers import Relay

GROUP = (
    "iisc.ac.in/89a36273d77dac4cf38114fca1bbe64392547f86/example.com/"
    "surat-itms-realtime-information"
)
ITEM = f"{GROUP}/surat-itms-live-eta"
SAMPLE = {  # the IUDX documentation's latest-data example
    "trip_direction": "NT",
    "trip_id": "24374871",
    "route_id": "17AD",
    "trip_delay": 948,
    "last_stop_arrival_time": "15:09:58",
    "actual_trip_start_time": "2020-11-03T14:22:30+05:30",
    "vehicle_label": "A09",
    "observationDateTime": "2020-11-03T15:12:08+05:30",
    "speed": 25.0,
    "license_plate": "GJ05BX1916",
    "last_stop_id": "2028",
    "location": {"coordinates": [72.870511, 21.218943], "type": "Point"},
    "id": ITEM,
}
V1 = "/ngsi-ld/v1/entities/"
V2 = "/ngsi-ld/v2/entities/"


def serve(http_server: Callable[..., ServerThread], settings: Settings, **overrides: Any) -> Any:
    server = http_server(settings, amqp_url=None, **overrides)
    return httpx.Client(base_url=server.url, timeout=10)


@pytest.fixture
def client(settings: Settings, http_server: Callable[..., ServerThread]) -> Iterator[httpx.Client]:
    with serve(http_server, settings) as http:
        yield http


def ingest(client: httpx.Client, *docs: dict[str, Any]) -> None:
    response = client.post("/ingest", content=orjson.dumps(list(docs)))
    assert response.status_code == 200, response.text
    assert response.json()["rejected"] == []


def test_resource_server_latest_entity(client: httpx.Client) -> None:
    older = {**SAMPLE, "observationDateTime": "2020-11-03T15:10:00+05:30", "speed": 3.0}
    ingest(client, SAMPLE, older)
    response = client.get(V1 + ITEM)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"type": "urn:dx:rs:success", "title": "Success", "results": [SAMPLE]}


def test_resource_server_errors(client: httpx.Client) -> None:
    missing = client.get(V1 + GROUP + "/no-such-item")
    assert missing.status_code == 404
    assert missing.json() == {
        "type": "urn:dx:rs:resourceNotFound",
        "title": "Not Found",
        "detail": "Resource Not Found",
    }
    for bad in (client.get(V1 + ITEM, params={"options": "count"}), client.get(V1 + "x" * 513)):
        assert bad.status_code == 400
        body = bad.json()
        assert set(body) == {"type", "title", "detail"}
        assert (body["type"], body["title"]) == ("urn:dx:rs:badRequest", "Bad Request Data")
        assert body["detail"]


def test_data_plane_latest_entity(client: httpx.Client) -> None:
    ingest(client, SAMPLE)
    response = client.get(V2 + ITEM)
    assert response.status_code == 200
    assert response.json() == {
        "type": "dx:dataplane:success",
        "title": "Success",
        "results": [SAMPLE],
        "paginationInfo": {
            "page": 1,
            "size": 10,
            "totalCount": 1,
            "totalPages": 1,
            "hasNext": False,
            "hasPrevious": False,
        },
    }


def test_data_plane_errors(client: httpx.Client) -> None:
    missing = client.get(V2 + "f29d4456-b712-4b96-af64-82916bffcb62")
    assert missing.status_code == 404
    assert missing.json() == {
        "type": "dx:dataplane:resourceNotFound",
        "title": "Not Found",
        "detail": "Not Found",
    }
    ingest(client, SAMPLE)
    for params in ({"size": "0"}, {"page": "first"}, {"timeRel": "before"}):
        bad = client.get(V2 + ITEM, params=params)
        assert bad.status_code == 400, params
        body = bad.json()
        assert (body["type"], body["title"]) == ("dx:dataplane:badrequest", "Bad Request")
        assert body["detail"]


def test_a_group_id_answers_every_resource_of_the_group(
    settings: Settings, http_server: Callable[..., ServerThread], fake_url: str
) -> None:
    """With LATEST_BACKEND=redisjson on fakeredis (standing in for Redis Stack: the JSON module
    cannot run here), a group's id reads its RedisJSON key, as the IUDX resource server does."""
    with serve(http_server, settings, redis_url=fake_url, backend="redisjson") as client:
        other = {**SAMPLE, "id": f"{GROUP}/surat-itms-live-position", "speed": 1.5}
        stale = {**SAMPLE, "observationDateTime": "2020-11-03T15:00:00+05:30", "speed": 9.0}
        ingest(client, SAMPLE, other, stale)
        whole = client.get(V1 + GROUP)
        assert whole.status_code == 200
        body = whole.json()
        assert (body["type"], body["title"]) == ("urn:dx:rs:success", "Success")
        assert sorted(body["results"], key=lambda d: d["id"]) == [SAMPLE, other]
        page = client.get(V2 + GROUP, params={"size": "1", "page": "2"}).json()
        assert len(page["results"]) == 1 and page["results"][0] in (other, SAMPLE)
        assert page["paginationInfo"] == {
            "page": 2,
            "size": 1,
            "totalCount": 2,
            "totalPages": 2,
            "hasNext": False,
            "hasPrevious": True,
        }
        assert client.get(V1 + ITEM).json()["results"] == [SAMPLE]


@pytest.mark.parametrize(("path", "urn"), [(V1, "urn:dx:rs:backend"), (V2, "dx:dataplane:backend")])
def test_redis_out_of_reach_is_a_503_in_the_envelope(
    settings: Settings, http_server: Callable[..., ServerThread], path: str, urn: str
) -> None:
    relay = Relay(int(REDIS_URL.rsplit(":", 1)[1].split("/")[0]))
    try:
        url = f"redis://127.0.0.1:{relay.port}/0"
        with serve(http_server, settings, redis_url=url) as client:
            relay.cut()
            response = client.get(path + ITEM)
            assert response.status_code == 503
            assert response.headers["retry-after"] == "1"
            body = response.json()
            assert (body["type"], body["title"]) == (urn, "Service Unavailable")
            assert "Redis" in body["detail"]
    finally:
        relay.close()
