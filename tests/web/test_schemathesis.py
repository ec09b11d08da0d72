"""schemathesis against a real server and the document it serves at /openapi.json: every
documented operation gets generated requests (valid ones and, in negative mode, invalid ones),
each answer checked: no 5xx, a documented status, content type, headers and a body matching its
schema.

Bounded: at most MAX_EXAMPLES generated requests per operation and mode plus the explicit
examples, derandomized (the same requests every run), no shrinking (a failure is reported as
found), 60 s per operation at most; about 15 s in all on two cores."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from latest_server.settings import Settings
from latest_server.web.app import create_app
from latest_server.web.http.ingest import NDJSON_TYPES
from latest_server.web.openapi.document import build
from latest_server.web.openapi.operations import EXAMPLE_ID
from latest_server.web.openapi.schemas import JSON
from tests.conftest import REDIS_URL, ServerThread
from tests.services import private_redis

MAX_EXAMPLES = 20
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@schemathesis.serializer(*NDJSON_TYPES)
def ndjson(context: Any, value: Any) -> bytes:
    """The document gives NDJSON bodies as text, sent as it is; anything else generated (in
    negative mode) is sent as JSON."""
    return value.encode() if isinstance(value, str) else json.dumps(value).encode()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    """One server for every operation: a Redis holding one variable with history and one
    session, so that 200s are generated beside 404s."""
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    data = tmp_path_factory.mktemp("schemathesis")
    settings_ = Settings(redis_url=REDIS_URL, amqp_url=None, data_dir=str(Path(data) / "data"))
    with ServerThread(settings_) as running:
        for n in range(5):  # the example variable of the document's path parameters
            packet = {"id": EXAMPLE_ID, "ts": 1_700_000_000 + n, "n": n, "deep": {"x": n / 2}}
            assert httpx.post(running.url + "/ingest", json=packet).status_code == 200
        yield running
    client.flushdb()
    client.close()


# The document as create_app builds it; the test checks first that the server serves this one.
# (schemathesis' lazy loading from a fixture, which could load it from the server, does not run
# on pytest 9: it reads a pytest internal that is gone.)
DOCUMENT = build(create_app(Settings()).router.routes)
schema = schemathesis.openapi.from_dict(DOCUMENT)


@pytest.fixture(scope="module")
def base_url(server: ServerThread) -> str:
    served = httpx.get(server.url + "/openapi.json", timeout=10)
    assert served.json() == DOCUMENT
    return server.url


@schema.parametrize()
@pytest.mark.timeout(60)  # per operation; the whole file takes about 15 s
@settings(
    max_examples=MAX_EXAMPLES,
    derandomize=True,
    deadline=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)
def test_every_answer_matches_the_document(case: Any, base_url: str) -> None:
    case.call_and_validate(base_url=base_url, checks=CHECKS, timeout=10)


def test_an_unreachable_store_answers_as_documented(tmp_path: Path) -> None:
    """The 503 no generated request can cause: Redis gone. Its status, Retry-After header and
    body are checked against the document by the same checks (but the one that refuses every
    5xx: this one is the documented answer)."""
    with private_redis() as url:
        running = ServerThread(Settings(redis_url=url, amqp_url=None, data_dir=str(tmp_path)))
        running.__enter__()
    try:
        for operation, parameters in [
            (schema["/latest/{variable_id}"]["GET"], {"path_parameters": {"variable_id": "x"}}),
            (schema["/latest"]["GET"], {"query": {"id": ["x"]}}),
            (schema["/ingest"]["POST"], {"body": {"id": "x", "ts": 1}, "media_type": JSON}),
        ]:
            case = operation.Case(**parameters)
            response = case.call_and_validate(base_url=running.url, checks=CHECKS[1:], timeout=30)
            assert response.status_code == 503
            assert response.headers["retry-after"] == ["1"]
            assert response.json()["error"]["type"] == "store_unavailable"
    finally:
        running.__exit__()
