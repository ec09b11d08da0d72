"""Fixtures of the RedisJSON layout's tests: fakeredis' TCP server stands in for Redis Stack
(tests/iudx/fakejson.py says why)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.iudx.fakejson import fake_redis_server


@pytest.fixture
def fake_url() -> Iterator[str]:
    """The URL of a fresh fakeredis TCP server (Lua and JSON), stopped at teardown."""
    with fake_redis_server() as url:
        yield url
