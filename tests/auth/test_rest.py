"""Tokens and scopes on the REST API, through a real uvicorn server and httpx: 401 without or
with bad credentials, 403 for a scope or a prefix the token lacks (``/ingest`` refuses only the
packets outside the prefixes), open health checks, a token revoked by editing the file, the
Origin check and CORS."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import httpx
import orjson
import pytest

from latest_server.settings import Settings
from tests.auth.helpers import bearer, secret, write_tokens
from tests.conftest import ServerThread


@pytest.fixture
def server(
    settings: Settings, tmp_path: Path, http_server: Callable[..., ServerThread]
) -> ServerThread:
    tokens = write_tokens(tmp_path / "tokens.toml")
    return http_server(settings, amqp_url=None, tokens_file=str(tokens))


def packet(variable: str, n: int = 1) -> dict[str, object]:
    return {"id": variable, "ts": 1_700_000_000 + n, "n": n}


def test_credentials_are_needed_and_checked(server: ServerThread) -> None:
    with httpx.Client(base_url=server.url, timeout=10) as http:
        for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Digest x"}):
            answer = http.get("/latest/a/1", headers=headers)
            assert answer.status_code == 401, headers
            assert answer.json()["error"]["type"] == "unauthorized"
            assert answer.headers["www-authenticate"].startswith("Bearer")
        assert http.post("/ingest", json=packet("a/1")).status_code == 401
        assert http.get("/healthz").json()["status"] == "ok"
        assert http.get("/readyz").status_code == 200


def test_scopes_and_prefixes(server: ServerThread) -> None:
    with httpx.Client(base_url=server.url, timeout=10) as http:
        # write without read: ingest inside the prefixes, no reads
        written = http.post(
            "/ingest", json=[packet("a/1"), packet("b/1"), packet("a/2")], headers=bearer("writer")
        )
        assert written.status_code == 200
        body = written.json()
        assert body["accepted"] == 2
        assert [(r["index"], r["error"]) for r in body["rejected"]] == [(1, "forbidden")]
        refused = http.post("/ingest", json=[packet("b/1")], headers=bearer("writer"))
        assert refused.status_code == 403
        assert refused.json()["error"]["type"] == "forbidden"
        assert http.get("/latest/a/1", headers=bearer("writer")).status_code == 403
        # read without write
        assert http.get("/latest/a/1", headers=bearer("reader")).json()["n"] == 1
        assert (
            http.post("/ingest", json=[packet("a/3")], headers=bearer("reader")).status_code == 403
        )
        outside = http.get("/latest/b/1", headers=bearer("reader"))
        assert outside.status_code == 403 and "b/1" in outside.json()["error"]["reason"]
        assert (
            http.get("/latest", params={"id": ["a/1", "b/1"]}, headers=bearer("reader")).status_code
            == 403
        )
        listed = http.get("/latest", params={"id": ["a/1", "a/2"]}, headers=bearer("reader"))
        assert [d["found"] for d in listed.json()["docs"]] == [True, True]
        mget = http.post("/latest/_mget", json={"ids": ["a/1", "zz"]}, headers=bearer("reader"))
        assert mget.status_code == 403
        assert http.get("/history/a/1", headers=bearer("reader")).status_code == 200
        assert http.get("/history/b/1", headers=bearer("reader")).status_code == 403
        assert http.get("/sessions", headers=bearer("reader")).status_code == 200
        # b/1 was never written by anyone; a token without prefixes sees everything
        assert http.get("/latest/b/1", headers=bearer("both")).status_code == 404
        assert http.get("/latest/a/2", headers=bearer("admin")).json()["n"] == 1
        # Basic and ApiKey carry the token too
        basic = httpx.BasicAuth("anyone", secret("reader"))
        assert http.get("/latest/a/1", auth=basic).status_code == 200


def test_a_token_removed_from_the_file_is_refused_without_restart(
    settings: Settings, tmp_path: Path, http_server: Callable[..., ServerThread]
) -> None:
    tokens = write_tokens(tmp_path / "tokens.toml")
    server = http_server(settings, amqp_url=None, tokens_file=str(tokens))
    with httpx.Client(base_url=server.url, timeout=10) as http:
        assert http.get("/latest?id=a/1", headers=bearer("reader")).status_code == 200
        write_tokens(tokens, ["both"])  # "reader" revoked
        deadline = time.monotonic() + 5
        while http.get("/latest?id=a/1", headers=bearer("reader")).status_code == 200:
            assert time.monotonic() < deadline, "the revoked token is still accepted"
            time.sleep(0.1)
        assert http.get("/latest?id=a/1", headers=bearer("reader")).status_code == 401
        assert http.get("/latest?id=a/1", headers=bearer("both")).status_code == 200
        tokens.write_text("this is [not toml")  # a broken edit keeps the tokens read before
        time.sleep(1.2)
        assert http.get("/latest?id=a/1", headers=bearer("both")).status_code == 200


def test_foreign_origins_are_refused(
    settings: Settings, http_server: Callable[..., ServerThread]
) -> None:
    server = http_server(settings, amqp_url=None, allowed_origins=("https://dash.example",))
    plain = {"Content-Type": "text/plain"}
    body = orjson.dumps(packet("o/1"))
    with httpx.Client(base_url=server.url, timeout=10) as http:
        foreign = http.post(
            "/ingest", content=body, headers={**plain, "Origin": "https://evil.example"}
        )
        assert foreign.status_code == 403
        assert foreign.json()["error"]["type"] == "forbidden"
        assert http.get("/latest/o/1").status_code == 404  # nothing was written
        same = http.post("/ingest", content=body, headers={**plain, "Origin": server.url})
        assert same.status_code == 200
        listed = http.post("/ingest", content=body, headers={"Origin": "https://dash.example"})
        assert listed.status_code == 200
        # reads are not state-changing: a foreign page may not read them anyway (no CORS)
        read = http.get("/latest/o/1", headers={"Origin": "https://evil.example"})
        assert read.status_code == 200 and "access-control-allow-origin" not in read.headers
        assert http.post("/ingest", content=body).status_code == 200  # no Origin: not a browser


def test_cors_preflight_and_headers(
    settings: Settings, tmp_path: Path, http_server: Callable[..., ServerThread]
) -> None:
    tokens = write_tokens(tmp_path / "tokens.toml")
    server = http_server(
        settings, amqp_url=None, tokens_file=str(tokens), cors_origins=("https://app.example",)
    )
    with httpx.Client(base_url=server.url, timeout=10) as http:
        preflight = http.options(
            "/ingest",
            headers={
                "Origin": "https://app.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type",
            },
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "https://app.example"
        assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
        other = http.options(
            "/ingest",
            headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
        )
        assert other.status_code == 400
        assert "access-control-allow-origin" not in other.headers
        posted = http.post(
            "/ingest",
            json=packet("a/9"),
            headers={**bearer("writer"), "Origin": "https://app.example"},
        )
        assert posted.status_code == 200
        assert posted.headers["access-control-allow-origin"] == "https://app.example"
        read = http.get(
            "/latest/a/9", headers={**bearer("reader"), "Origin": "https://app.example"}
        )
        assert read.headers["access-control-expose-headers"].lower().count("etag") == 1


def test_sessions_outside_the_prefixes_are_neither_listed_nor_read(server: ServerThread) -> None:
    """A session's id is a variable id (its document's): the token's prefixes hold for it."""
    with httpx.Client(base_url=server.url, timeout=10) as http:
        documents = [
            {"id": sid, "ts": 1_700_000_000, "@session": {"state": "open"}}
            for sid in ("a/run-1", "b/run-2")
        ]
        assert http.post("/ingest", json=documents, headers=bearer("both")).json()["accepted"] == 2
        everything = http.get("/sessions", headers=bearer("both")).json()["sessions"]
        assert {s["id"] for s in everything} == {"a/run-1", "b/run-2"}
        listed = http.get("/sessions", headers=bearer("reader")).json()["sessions"]
        assert [s["id"] for s in listed] == ["a/run-1"]
        assert http.get("/sessions/a/run-1", headers=bearer("reader")).status_code == 200
        assert http.get("/sessions/b/run-2", headers=bearer("reader")).status_code == 403


def test_the_description_is_open_and_the_iudx_api_keeps_to_the_prefixes(
    server: ServerThread,
) -> None:
    """A browser loads /docs, its assets and /openapi.json without a token; the IUDX latest API
    is a read like /latest, limited to the token's prefixes."""
    with httpx.Client(base_url=server.url, timeout=10) as http:
        assert http.get("/openapi.json").json()["openapi"].startswith("3.")
        page = http.get("/docs")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        assert http.get("/docs/static/swagger-ui.css").status_code == 200
        assert http.post("/ingest", json=packet("a/1"), headers=bearer("writer")).status_code == 200
        for version in ("v1", "v2"):
            assert http.get(f"/ngsi-ld/{version}/entities/a/1").status_code == 401
            inside = http.get(f"/ngsi-ld/{version}/entities/a/1", headers=bearer("reader"))
            assert inside.status_code == 200 and inside.json()["results"][0]["n"] == 1
            outside = http.get(f"/ngsi-ld/{version}/entities/b/1", headers=bearer("reader"))
            assert outside.status_code == 403 and outside.json()["error"]["type"] == "forbidden"


def test_listings_keep_to_the_prefixes(server: ServerThread) -> None:
    """GET /variables and GET /latest?prefix= list only under one of the token's prefixes: a
    broader prefix is a 403, never a page of ids the token may not read."""
    with httpx.Client(base_url=server.url, timeout=10) as http:
        batch = [packet("a/1"), packet("a/2"), packet("b/1")]
        assert http.post("/ingest", json=batch, headers=bearer("both")).json()["accepted"] == 3
        for path in ("/variables", "/latest"):
            inside = http.get(path, params={"prefix": "a/"}, headers=bearer("reader"))
            assert inside.status_code == 200, inside.text
            body = inside.json()
            found = body["variables"] if path == "/variables" else body["docs"]
            assert [item["id"] for item in found] == ["a/1", "a/2"]
            for prefix in ("", "b/", "a"):
                outside = http.get(path, params={"prefix": prefix}, headers=bearer("reader"))
                assert outside.status_code == 403, (path, prefix)
                assert outside.json()["error"]["type"] == "forbidden"
            everything = http.get(path, params={"prefix": ""}, headers=bearer("both")).json()
            listed = everything["variables"] if path == "/variables" else everything["docs"]
            assert [item["id"] for item in listed] == ["a/1", "a/2", "b/1"]
        assert http.get("/variables", headers=bearer("writer")).status_code == 403  # no read
