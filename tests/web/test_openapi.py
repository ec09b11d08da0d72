"""The OpenAPI document stays complete: every route of create_app is in it with its methods and
exactly the query parameters its route accepts (web/http/params.py ``strict``); it is valid
OpenAPI 3.1; /openapi.json and /docs are served by the real server, the page with local assets
only."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterator
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
import pytest
from openapi_spec_validator import validate
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles

from latest_server.settings import Settings
from latest_server.web.app import create_app
from latest_server.web.openapi import routes as openapi_routes
from latest_server.web.openapi.document import build, openapi_path, served
from latest_server.web.openapi.operations import operations
from tests.conftest import ServerThread

# Described, and served by an app whose routes include it: the document of an app without the
# route leaves it out (document.py), so this is the one entry with no route on create_app here.
DESCRIBED_AHEAD = {("/metrics", "get")}


def app_routes(settings: Settings | None = None) -> list[Any]:
    return list(create_app(settings or Settings()).router.routes)


def documented(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {(path, method) for path, ops in document["paths"].items() for method in ops}


def test_every_route_is_documented_with_its_methods() -> None:
    routes = app_routes()
    document = build(routes)
    expected = {(path, m) for path, methods in served(routes).items() for m in methods}
    assert documented(document) == expected
    # Nothing else is served: the websocket is in the description, the assets are /docs'.
    for route in routes:
        if isinstance(route, WebSocketRoute):
            assert f"`GET {route.path}`" in document["info"]["description"]
        elif isinstance(route, Mount):
            assert route.path == openapi_routes.ASSETS
            assert isinstance(route.app, StaticFiles)
        else:
            assert isinstance(route, Route)
    # And the catalogue describes no route that does not exist.
    catalogue = {(path, method) for path, ops in operations().items() for method in ops}
    assert catalogue - expected <= DESCRIBED_AHEAD


def test_a_route_missing_from_the_catalogue_fails_the_check() -> None:
    """The check above is not vacuous: an undocumented route is noticed."""
    routes = app_routes()
    routes.append(Route("/undocumented", lambda request: None, methods=["GET"]))
    document = build(routes)
    expected = {(path, m) for path, methods in served(routes).items() for m in methods}
    assert expected - documented(document) == {("/undocumented", "get")}


def test_the_document_is_valid_openapi_3_1() -> None:
    document = build(app_routes())
    assert document["openapi"] == "3.1.0"
    validate(document)  # raises on an invalid document


def test_the_elasticsearch_api_is_out_of_scope() -> None:
    routes = app_routes(dataclasses.replace(Settings(), es_prefix="/es"))
    document = build(routes)
    assert not [path for path in document["paths"] if path.startswith("/es")]
    assert "Elasticsearch" in document["info"]["description"]


def test_errors_and_limits_are_described() -> None:
    document = build(app_routes())
    ingest = document["paths"]["/ingest"]["post"]["responses"]
    assert {"200", "400", "401", "403", "413", "415", "429", "503"} <= set(ingest)
    responses = document["components"]["responses"]
    assert "Retry-After" in responses["RateLimited"]["headers"]
    assert "Retry-After" in responses["Unavailable"]["headers"]
    error = document["components"]["schemas"]["Error"]
    assert error["properties"]["error"]["required"] == ["type", "reason"]
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


# --- served by the real server ---------------------------------------------------------------


@pytest.fixture
def client(settings: Settings, http_server: Callable[..., ServerThread]) -> Iterator[httpx.Client]:
    server = http_server(settings, amqp_url=None)
    with httpx.Client(base_url=server.url, timeout=10) as http:
        yield http


class Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [value for name, value in attrs if name in ("src", "href") and value]


PROBE = "zz_probe"  # a name no route takes
TAKES = re.compile(r"takes \[([^\]]*)\]|takes no parameters")
IUDX_TAKES = re.compile(r"\(takes: ([^)]*)\)")


def takes(client: httpx.Client, method: str, path: str) -> set[str]:
    """The query parameters a route accepts, as its strict check says in a 400 (web/http/
    params.py): whatever wraps the endpoint, this is what the route does."""
    answer = client.request(method, path, params={PROBE: "1"}, content=b"{}")
    assert answer.status_code == 400, (method, path, answer.text)
    if "detail" in answer.json():  # the IUDX API refuses in its own envelope (web/http/iudx.py)
        found = IUDX_TAKES.search(answer.json()["detail"])
        assert found and PROBE in answer.json()["detail"], answer.text
        return set() if found.group(1) == "none" else set(found.group(1).split(", "))
    error = answer.json()["error"]
    assert error["type"] == "bad_parameter" and f"[{PROBE}]" in error["reason"], error
    found = TAKES.search(error["reason"])
    assert found, error["reason"]
    return set(found.group(1).split(", ")) if found.group(1) else set()


def test_query_parameters_are_exactly_those_the_route_accepts(client: httpx.Client) -> None:
    document = build(app_routes())
    checked = 0
    for route in app_routes():
        if not isinstance(route, Route):
            continue
        for method in sorted(set(route.methods or ()) - {"HEAD"}):
            operation = document["paths"][openapi_path(route.path)][method.lower()]
            params = operation.get("parameters", [])
            path_names = {p["name"] for p in params if p["in"] == "path"}
            assert path_names == set(route.param_convertors), f"{method} {route.path}"
            url = re.sub(r"\{(\w+):any\}", "x", route.path)
            documented_names = {p["name"] for p in params if p["in"] == "query"}
            assert takes(client, method, url) == documented_names, f"{method} {route.path}"
            checked += 1
    assert checked == len(documented(document)) >= 12


def test_openapi_json_is_the_apps_document(client: httpx.Client) -> None:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == build(app_routes())
    assert client.get("/openapi.json?x=1").json()["error"]["type"] == "bad_parameter"


def test_docs_loads_local_assets_only(client: httpx.Client) -> None:
    page = client.get("/docs")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    links = Links()
    links.feed(page.text)
    assert len(links.urls) == 3  # the CSS, Swagger UI, its start-up
    types = {}
    for url in links.urls:
        parts = urlsplit(url)
        assert not parts.scheme and not parts.netloc, f"{url} is not local"
        asset = client.get(urljoin(str(page.url), url))
        assert asset.status_code == 200, url
        types[url.rsplit("/", 1)[-1]] = asset.headers["content-type"].split(";")[0]
    assert types == {
        "swagger-ui.css": "text/css",
        "swagger-ui-bundle.js": "text/javascript",
        "latest-docs.js": "text/javascript",
    }
    start = client.get("/docs/static/latest-docs.js").text
    assert 'url: "openapi.json"' in start and "validatorUrl: null" in start
    assert "SwaggerUIBundle" in client.get("/docs/static/swagger-ui-bundle.js").text
    assert "Apache License" in client.get("/docs/static/LICENSE").text


def test_aggregation_answers_match_their_schemas(client: httpx.Client) -> None:
    """The history API's agg=, lastN= and at= answers, from a real server, validate against the
    schemas the document gives them (schemathesis seldom builds a valid aggregation itself)."""
    import jsonschema
    from referencing import Registry, Resource

    document = client.get("/openapi.json").json()
    registry = Registry().with_resource("urn:doc", Resource.opaque(document))  # type: ignore[var-annotated]
    packets = [{"id": "agg/1", "ts": 1_700_000_000 + i, "t": float(i)} for i in range(30)]
    assert client.post("/ingest", json=packets).json()["accepted"] == 30
    span = {"from": "1700000000", "to": "1700000100"}
    answers = {
        "Aggregates": client.get(
            "/history",
            params={"id": "agg/1", "agg": "min,max,avg,count", "field": "t", "interval": "10s"}
            | span,
        ),
        "LastEntries": client.get("/history/agg/1", params={"lastN": "3", "field": "t"} | span),
        "ValuesAt": client.get("/history/agg/1", params={"at": "1700000012", "field": "t"}),
    }
    for name, answer in answers.items():
        assert answer.status_code == 200, (name, answer.text)
        body = answer.json()
        schema = {"$ref": f"urn:doc#/components/schemas/{name}"}
        jsonschema.Draft202012Validator(schema, registry=registry).validate(body)
        assert body["variables"][0]["variable"] == "agg/1"
    buckets = answers["Aggregates"].json()["variables"][0]["buckets"]
    assert [b["docs"] for b in buckets] == [10, 10, 10]
