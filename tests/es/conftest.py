"""Fixtures of the Elasticsearch-compatibility tests: the ES-compatible API on its own uvicorn
listener (as LATEST_ES_PORT serves it), and the official client in its 8.x and 9.x majors,
installed once into .es-clients/ (git-ignored) with ``pip install --target``."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from latest_server.settings import Settings
from latest_server.web.app import create_es_app
from tests.servers import UvicornThread

ROOT = Path(__file__).resolve().parents[2]
CLIENTS_DIR = ROOT / ".es-clients"
# The majors users run; each pulls its own elastic-transport major.
CLIENT_SPECS = {"8": "elasticsearch>=8.13,<9", "9": "elasticsearch>=9,<10"}


EsServerThread = UvicornThread  # ``create_es_app`` (or any app) in uvicorn in a thread


@pytest.fixture
def es_server(redis: Redis) -> Iterator[Callable[..., EsServerThread]]:
    """Factory: ``es_server(settings, **overrides)`` serves the ES-compatible API; stopped at
    teardown, before the Redis database is flushed."""
    started: list[EsServerThread] = []

    def start(settings: Settings, **overrides: Any) -> EsServerThread:
        configured = dataclasses.replace(settings, **{"amqp_url": None, **overrides})
        server = EsServerThread(create_es_app(configured)).__enter__()
        started.append(server)
        return server

    yield start
    for server in reversed(started):
        server.__exit__()


def install_client(major: str) -> Path:
    """``pip install --target .es-clients/es<major>`` once; later runs reuse it. The directory is
    built beside its final name and renamed, so concurrent runs never see half an install."""
    spec = CLIENT_SPECS[major]
    target = CLIENTS_DIR / f"es{major}"
    marker = target / ".spec"
    if marker.exists() and marker.read_text() == spec:
        return target
    CLIENTS_DIR.mkdir(exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f"es{major}-", dir=CLIENTS_DIR))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-warn-script-location",
            "--target",
            str(building),
            spec,
        ],
        check=True,
        timeout=600,
    )
    (building / ".spec").write_text(spec)
    if target.exists():
        shutil.rmtree(target, ignore_errors=True)
    try:
        building.rename(target)
    except OSError:  # another run finished first: use its copy
        shutil.rmtree(building, ignore_errors=True)
    return target


def client_env(major: str) -> dict[str, str]:
    """The environment of a subprocess that imports elasticsearch ``major`` (and nothing of the
    project's virtual environment shadows it: the target comes first on sys.path)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(install_client(major)), str(ROOT)])
    return env
