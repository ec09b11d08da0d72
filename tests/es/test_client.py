"""The ES-compatible API driven by the official elasticsearch client, 8.x and 9.x.

Each major is pip-installed once into .es-clients/ (tests/es/conftest.py) and runs
tests/es/client_checks.py in a subprocess against a real uvicorn listener serving the API;
each check is reported here as its own test.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from latest_server.settings import Settings
from tests.es.client_checks import CHECKS
from tests.es.conftest import EsServerThread, client_env

SCRIPT = Path(__file__).with_name("client_checks.py")


@pytest.fixture(scope="module")
def outcomes() -> dict[str, dict[str, str | None]]:
    return {}


@pytest.fixture(params=["8", "9"])
def major(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def run_checks(major: str, url: str) -> dict[str, str | None]:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), url],
        env=client_env(major),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr
    found: dict[str, str | None] = json.loads(result.stdout.strip().splitlines()[-1])
    return found


@pytest.mark.parametrize("name", list(CHECKS))
def test_official_client(
    name: str,
    major: str,
    outcomes: dict[str, dict[str, str | None]],
    settings: Settings,
    es_server: Callable[..., EsServerThread],
) -> None:
    if major not in outcomes:  # every check of one major runs in one subprocess, once
        # version_limits checks the 2**53 bound itself: no bound ahead of the clock (tests/
        # test_limits.py checks LATEST_MAX_FUTURE with this client)
        server = es_server(settings, max_future=0.0)
        outcomes[major] = run_checks(major, server.url)
    version = str(outcomes[major]["version"])
    assert version.startswith(f"{major}.")  # the target directory, not the project's copy
    failure = outcomes[major][name]
    assert failure is None, f"elasticsearch {version}, check {name}:\n{failure}"
