"""/docs in a real browser: Debian's chromium, headless, driven by playwright. The page renders
every operation of the document, asks nothing of any other origin, and its "Try it out" sends
a request to the server and shows the answer. .ci/run installs chromium when it is missing."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator

import pytest
from playwright.sync_api import Browser, sync_playwright

from latest_server.settings import Settings
from latest_server.web.app import create_app
from latest_server.web.openapi.document import build
from tests.conftest import ServerThread

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture
def browser() -> Iterator[Browser]:
    if shutil.which(CHROMIUM) is None:
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (.ci/run does)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield launched
        launched.close()


def test_docs_renders_every_operation_offline(
    settings: Settings, http_server: Callable[..., ServerThread], browser: Browser
) -> None:
    server = http_server(settings, amqp_url=None)
    page = browser.new_page()
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    page.goto(server.url + "/docs")
    page.wait_for_selector(".opblock-summary-path", timeout=30_000)
    shown = page.locator(".opblock-summary-path").all_inner_texts()
    document = build(create_app(settings).router.routes)
    expected = [path for path, ops in document["paths"].items() for _ in ops]
    assert sorted(shown) == sorted(expected)
    assert requested and all(url.startswith(server.url + "/") for url in requested), requested

    # Try it out: GET /healthz from the page, answered by the server.
    healthz = page.locator("#operations-operations-healthz")
    healthz.locator(".opblock-summary").click()
    healthz.locator("button.try-out__btn").click()
    healthz.locator("button.execute").click()
    answer = healthz.locator(".live-responses-table tr.response td.response-col_status").first
    answer.wait_for(timeout=10_000)
    assert answer.inner_text().strip() == "200"
    assert '"status": "ok"' in healthz.locator(".live-responses-table").inner_text()
    assert server.url + "/healthz" in requested
