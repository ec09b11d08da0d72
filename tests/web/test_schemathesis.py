"""schemathesis against the real server's own /openapi.json: every documented operation gets
generated requests (valid ones and, in negative mode, invalid ones), each answer checked: no 5xx,
a documented status, content type, headers and a body matching its schema.

Bounded: at most MAX_EXAMPLES requests per operation and mode, derandomized (the same examples
every run), no shrinking past the first failure's phase; about 15 s on two cores."""

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
from tests.conftest import REDIS_URL, ServerThread

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
@settings(
    max_examples=MAX_EXAMPLES,
    derandomize=True,
    deadline=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)
def test_every_answer_matches_the_document(case: Any, base_url: str) -> None:
    case.call_and_validate(base_url=base_url, checks=CHECKS)
