"""The access log, request ids and secrets, through real uvicorn: one line per request and per
websocket connection, in text and in JSON (formatted by the formatters ``latest-server`` logs
with, logs.py), and no credential in any line of any logger."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import orjson
import pytest
import websockets
from redis.asyncio import Redis

from latest_server.logs import ACCESS_LOGGER, REQUEST_ID, formatter
from latest_server.settings import Settings
from latest_server.web.observe import request_id
from tests.conftest import REDIS_URL, ServerThread, unique, wait_for, ws_url
from tests.services import free_port, stop, until_up


@pytest.fixture
def server(settings: Settings, http_server: Callable[..., ServerThread]) -> ServerThread:
    return http_server(settings, amqp_url=None)


@pytest.fixture
def client(server: ServerThread) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10) as http:
        yield http


def access_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == ACCESS_LOGGER]


def test_one_text_line_per_request(client: httpx.Client, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
    v = unique("v")
    answer = client.post("/ingest", json={"id": v, "ts": 1_700_000_000})
    assert answer.status_code == 200
    client.get(f"/latest/{v}")
    client.get("/latest/nothing-here")
    lines = [formatter("text").format(r) for r in access_records(caplog)]
    assert len(lines) == 3
    rid = answer.headers["x-request-id"]
    pattern = (
        r' INFO latest_server\.access: 127\.0\.0\.1:\d+ "POST /ingest" 200 [\d.]+ms '
        rf"in=\d+ out={len(answer.content)} token=anonymous request_id={rid}$"
    )
    assert re.search(pattern, lines[0]), lines[0]
    assert '"GET /latest/{variable_id}" 200 ' in lines[1]
    assert '"GET /latest/{variable_id}" 404 ' in lines[2]
    assert v not in "".join(lines)  # the route, never the variable id


def test_json_lines_carry_the_fields(
    client: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
    answer = client.get("/healthz", headers={"X-Request-Id": "from-the-proxy.42"})
    (record,) = access_records(caplog)
    line = formatter("json").format(record)
    assert "\n" not in line
    body = orjson.loads(line)
    assert body["logger"] == ACCESS_LOGGER
    assert body["level"] == "info"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", body["time"])
    assert {k: body[k] for k in ("method", "route", "status", "token", "request_id")} == {
        "method": "GET",
        "route": "/healthz",
        "status": 200,
        "token": "anonymous",
        "request_id": "from-the-proxy.42",
    }
    assert body["bytes_in"] == 0
    assert body["bytes_out"] == len(answer.content)
    assert body["duration_ms"] >= 0
    assert body["client"].startswith("127.0.0.1:")
    # Any other log line is JSON too, its traceback included.
    try:
        raise ValueError("boom")
    except ValueError:
        other = logging.getLogger("latest_server.x").makeRecord(
            "latest_server.x", logging.ERROR, "f", 1, "failed %s", ("here",), sys.exc_info()
        )
    parsed = orjson.loads(formatter("json").format(other))
    assert parsed["message"] == "failed here"
    assert "ValueError: boom" in parsed["exception"]
    assert "request_id" not in parsed
    answering = REQUEST_ID.set("r-7")  # logged while a request is answered: its id
    try:
        assert orjson.loads(formatter("json").format(other))["request_id"] == "r-7"
    finally:
        REQUEST_ID.reset(answering)


def test_request_id_echoed_when_sane_else_made(client: httpx.Client) -> None:
    assert client.get("/healthz", headers={"X-Request-Id": "abc-123_x"}).headers[
        "x-request-id"
    ] == ("abc-123_x")
    for insane in ("a" * 129, "two words", "<script>", "é".encode()):
        made = client.get("/healthz", headers={"X-Request-Id": insane}).headers["x-request-id"]
        assert re.fullmatch(r"[0-9a-f]{32}", made), insane
    first = client.get("/healthz").headers["x-request-id"]
    second = client.get("/healthz").headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", first) and first != second
    assert (
        len(client.get("/healthz", headers={"X-Request-Id": "a" * 128}).headers["x-request-id"])
        == 128
    )
    # Errors carry it too.
    assert (
        client.get("/nowhere", headers={"X-Request-Id": "lost"}).headers["x-request-id"] == "lost"
    )
    assert request_id({"headers": [(b"x-request-id", b"")]}) != ""


async def test_websocket_line_and_handshake_header(
    server: ServerThread, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
    async with websockets.connect(
        ws_url(server), additional_headers={"X-Request-Id": "ws-1"}
    ) as ws:
        assert ws.response.headers["x-request-id"] == "ws-1"
        await ws.send(orjson.dumps({"op": "ping"}).decode())
        assert orjson.loads(await ws.recv()) == {"type": "pong"}
    await wait_for(lambda: access_records(caplog), within=10)
    (record,) = access_records(caplog)
    line = formatter("text").format(record)
    assert re.search(
        r'"WS /ws" 101 close=1000 [\d.]+ms in=13 out=15 token=anonymous request_id=ws-1$', line
    ), line


SECRETS = ("tok-SECRET-bearer", "pw-SECRET-basic", "SECRET-amqp", "SECRET-query")


async def test_no_secret_reaches_any_log_line(
    server: ServerThread, client: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    """Requests carrying a Bearer token, Basic credentials and amqp:// URLs with a password,
    every logger at debug: no line, text or JSON, has any of them, while the access log has
    a line for every request."""
    caplog.set_level(logging.DEBUG)
    url = "amqp://guest:SECRET-amqp@rabbit:5672/vhost"
    bearer = {"Authorization": "Bearer tok-SECRET-bearer"}
    basic = base64.b64encode(b"user:pw-SECRET-basic").decode()

    def requests() -> int:
        client.post("/ingest", json={"id": url, "ts": 1_700_000_000}, headers=bearer)
        client.get("/latest/" + quote(url, safe=""), headers=bearer)
        client.get("/latest", params={"id": url}, auth=("user", "pw-SECRET-basic"))
        client.get("/history/" + quote(url, safe=""), params={"password": "SECRET-query"})
        client.get("/history/x", params={"source": url}, headers=bearer)  # a 400
        return 5

    sent = await asyncio.to_thread(requests)
    async with websockets.connect(ws_url(server), additional_headers=bearer) as ws:
        await ws.send(orjson.dumps({"op": "subscribe", "ids": [url]}).decode())
        await ws.recv()
    await wait_for(lambda: len(access_records(caplog)) == sent + 1, within=10)
    logging.getLogger("latest_server.test").warning("could not reach %s", url)  # redact's job
    text, json = formatter("text"), formatter("json")
    # The server's lines: the test's own clients (httpx, websockets) log the URLs they ask for.
    server_records = [r for r in caplog.records if not r.name.startswith(("httpx", "websockets"))]
    lines = [f.format(r) for r in server_records for f in (text, json)]
    assert any("amqp://guest:***@rabbit" in line for line in lines)
    for line in lines:
        for secret in (*SECRETS, basic):
            assert secret not in line, line


def test_serve_with_json_logs_writes_json_lines_only(tmp_path: Path, redis: Redis) -> None:
    """`latest-server serve` with LATEST_LOG_FORMAT=json: every line it writes, uvicorn's
    included, is a JSON object; a request's access line carries the request id it was given."""
    port = free_port()
    env = {
        **os.environ,
        "REDIS_URL": REDIS_URL,
        "LATEST_PORT": str(port),
        "LATEST_ES_PORT": "0",
        "LATEST_DATA_DIR": str(tmp_path / "data"),
        "LATEST_LOG_FORMAT": "json",
    }
    env.pop("AMQP_URL", None)
    output = tmp_path / "serve.log"
    with output.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "latest_server", "serve"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        until_up(
            process,
            lambda: httpx.get(url + "/healthz", timeout=2).raise_for_status(),
            (httpx.HTTPError,),
            within=30,
            poll=0.1,
        )
        answer = httpx.get(url + "/latest/none", headers={"X-Request-Id": "json-1"}, timeout=5)
        assert answer.status_code == 404
    finally:
        stop(process)
    lines = [orjson.loads(line) for line in output.read_text().splitlines() if line]
    assert all({"time", "level", "logger", "message"} <= line.keys() for line in lines)
    assert any(line["logger"].startswith("uvicorn") for line in lines)
    (access,) = [line for line in lines if line.get("request_id") == "json-1"]
    assert access["logger"] == ACCESS_LOGGER
    assert (access["route"], access["status"]) == ("/latest/{variable_id}", 404)
