"""``latest-server serve`` and access: a non-loopback address without tokens is refused unless
``--insecure`` (then a warning at start), and SIGHUP rereads the tokens file even when its
size and time did not change."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.auth.helpers import bearer, write_tokens
from tests.conftest import REDIS_URL
from tests.services import free_port, stop, until_up
from tests.test_faults import server_env

pytestmark = [pytest.mark.timeout(90)]


def start(tmp_path: Path, *args: str, **env: str) -> subprocess.Popen[bytes]:
    settings = {
        "REDIS_URL": REDIS_URL,
        "LATEST_DATA_DIR": str(tmp_path / "data"),
        "LATEST_ES_PORT": "0",
        **env,
    }
    return subprocess.Popen(
        [sys.executable, "-m", "latest_server", "serve", *args],
        env=server_env(**settings),
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def drain(process: subprocess.Popen[bytes]) -> str:
    """What a stopped server wrote to stderr."""
    assert process.stderr is not None
    with process.stderr:
        return process.stderr.read().decode(errors="replace")


def test_a_network_address_needs_tokens_or_insecure(tmp_path: Path) -> None:
    refused = start(tmp_path, LATEST_HOST="0.0.0.0", LATEST_PORT=str(free_port()))
    _, stderr = refused.communicate(timeout=45)
    assert refused.returncode == 1
    errors = [line for line in stderr.decode().splitlines() if "error" in line]
    assert errors and "--insecure" in errors[-1] and "0.0.0.0" in errors[-1], stderr

    port = free_port()
    insecure = start(tmp_path, "--insecure", LATEST_HOST="0.0.0.0", LATEST_PORT=str(port))
    try:
        health = until_up(
            insecure,
            lambda: httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1),
            (httpx.TransportError,),
            within=30,
            poll=0.1,
        )
        assert health.status_code == 200
    finally:
        stop(insecure)
    log = drain(insecure)
    assert "WARNING" in log and "INSECURE: serving 0.0.0.0 without tokens" in log, log


def test_sighup_rereads_the_tokens_file(tmp_path: Path) -> None:
    tokens = write_tokens(tmp_path / "tokens.toml", ["reader"])
    port = free_port()
    server = start(tmp_path, LATEST_PORT=str(port), LATEST_TOKENS_FILE=str(tokens))
    url = f"http://127.0.0.1:{port}/latest?id=a/1"
    try:
        first = until_up(
            server,
            lambda: httpx.get(url, headers=bearer("reader"), timeout=1),
            (httpx.TransportError,),
            within=30,
            poll=0.1,
        )
        assert first.status_code == 200
        # The same name, another secret's hash: same size, and the same mtime set back, so only
        # SIGHUP can tell the file changed.
        before = os.stat(tokens)
        other = hashlib.sha256(b"lt_test_someone-else").hexdigest()
        text = tokens.read_text()
        old = hashlib.sha256(b"lt_test_reader").hexdigest()
        with open(tokens, "r+") as file:
            file.write(text.replace(old, other))
        os.utime(tokens, ns=(before.st_atime_ns, before.st_mtime_ns))
        assert os.stat(tokens).st_size == before.st_size
        time.sleep(1.5)
        assert httpx.get(url, headers=bearer("reader"), timeout=5).status_code == 200
        server.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while httpx.get(url, headers=bearer("reader"), timeout=5).status_code != 401:
            assert time.monotonic() < deadline, "SIGHUP did not reread the tokens file"
            time.sleep(0.1)
        assert server.poll() is None  # rereading is all SIGHUP does
    finally:
        stop(server)
    log = drain(server)
    assert "1 API token(s) from" in log and "reread" in log, log
