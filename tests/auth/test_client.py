"""The producers' library against a server with tokens: a ``Session`` posts over
``http://<user>:<token>@host`` (HTTP Basic, the token as the password), ``subscribe(token=...)``
upgrades with ``Authorization: Bearer``, and a refused token ends ``subscribe`` at once instead
of reconnecting forever."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import InvalidStatus

from ingest_client import Session, subscribe
from latest_server.settings import Settings
from tests.auth.helpers import bearer, secret, write_tokens
from tests.conftest import ServerThread, ws_url


@pytest.fixture
def server(
    settings: Settings, tmp_path: Path, http_server: Callable[..., ServerThread]
) -> ServerThread:
    tokens = write_tokens(tmp_path / "tokens.toml")
    return http_server(settings, amqp_url=None, tokens_file=str(tokens))


async def test_session_and_subscribe_with_a_token(server: ServerThread) -> None:
    url = server.url.replace("http://", f"http://producer:{secret('both')}@")

    def produce() -> None:
        with Session("a/run-1", url=url, min_interval=0.05) as run:
            run.sample("a/speed", 1.5, ts=1_700_000_000)

    def read() -> httpx.Response:
        return httpx.get(server.url + "/latest/a/speed", headers=bearer("reader"), timeout=10)

    await asyncio.to_thread(produce)
    found = await asyncio.to_thread(read)
    assert found.status_code == 200 and found.json()["value"] == 1.5
    entries = subscribe(ws_url(server), ["a/speed"], latest=True, token=secret("reader"))
    async with asyncio.timeout(20):
        first = await anext(entries)
    assert first.id == "a/speed" and first.doc["value"] == 1.5
    await entries.aclose()
    with pytest.raises(InvalidStatus) as refused:
        async with asyncio.timeout(20):
            await anext(subscribe(ws_url(server), ["a/speed"], token="lt_wrong"))
    assert refused.value.response.status_code == 401
