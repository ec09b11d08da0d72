"""What a user sees on stderr when ``latest-server serve`` cannot start: one line naming the
service and the setting, never a traceback, never a password (real processes, real servers:
a redis-server of the test's own with a password, a port the test holds, nothing listening)."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from latest_server.redact import RedactingFormatter, redact
from tests.conftest import free_port
from tests.services import private_redis, until_up
from tests.test_faults import server_env

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

SECRET = "s3cret-Pa55"  # in every URL given below; never on stderr


def serve(tmp_path: Path, within: float = 45, **env: str) -> tuple[int, str]:
    """Run ``serve`` until it exits (it must, by itself); its exit code and stderr."""
    settings = {"LATEST_DATA_DIR": str(tmp_path / "data"), "LATEST_ES_PORT": "0", **env}
    settings.setdefault("LATEST_PORT", str(free_port()))
    done = subprocess.run(
        [sys.executable, "-m", "latest_server", "serve"],
        env=server_env(**settings),
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=within,
    )
    return done.returncode, done.stderr.decode(errors="replace")


def the_error(stderr: str) -> str:
    """The one error line; asserts there is exactly one, and no traceback, no password."""
    assert "Traceback" not in stderr, stderr
    assert SECRET not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("latest-server: error:")]
    assert len(errors) == 1, stderr
    return errors[0]


@pytest.fixture
def redis_with_password() -> Iterator[int]:
    with private_redis("--requirepass", "the-right-one") as url:
        yield int(url.rsplit(":", 1)[1].split("/")[0])


def test_unreachable_redis(tmp_path: Path) -> None:
    port = free_port()
    code, stderr = serve(tmp_path, REDIS_URL=f"redis://:{SECRET}@127.0.0.1:{port}/0")
    assert code == 1, stderr
    line = the_error(stderr)
    assert f"cannot reach Redis at redis://:***@127.0.0.1:{port}/0 (REDIS_URL)" in line, line


@pytest.mark.parametrize("credentials", [f":{SECRET}@", f"default:{SECRET}@", ""])
def test_redis_refusing_the_credentials(
    tmp_path: Path, redis_with_password: int, credentials: str
) -> None:
    """WRONGPASS (a wrong password, with or without a user name) and NOAUTH (none given)."""
    url = f"redis://{credentials}127.0.0.1:{redis_with_password}/0"
    code, stderr = serve(tmp_path, REDIS_URL=url)
    assert code == 1, stderr
    line = the_error(stderr)
    assert f"cannot log in to Redis at {redact(url)} (REDIS_URL)" in line, line


def test_http_port_in_use(tmp_path: Path, redis_with_password: int) -> None:
    url = f"redis://:the-right-one@127.0.0.1:{redis_with_password}/0"
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        code, stderr = serve(tmp_path, REDIS_URL=url, LATEST_PORT=str(port))
    assert code == 1, stderr
    line = the_error(stderr)
    assert f"cannot listen on 127.0.0.1:{port} for the HTTP API" in line, line
    assert "set LATEST_PORT to a free port" in line, line


def test_es_port_in_use_turns_that_api_off_in_one_line(
    tmp_path: Path, redis_with_password: int
) -> None:
    """The main API keeps running (the documented choice): one logged line says why the
    Elasticsearch-compatible one is off, naming its setting."""
    url = f"redis://:the-right-one@127.0.0.1:{redis_with_password}/0"
    port = free_port()
    with socket.create_server(("127.0.0.1", 0)) as taken:
        es_port = taken.getsockname()[1]
        server = subprocess.Popen(
            [sys.executable, "-m", "latest_server", "serve"],
            env=server_env(
                REDIS_URL=url,
                LATEST_DATA_DIR=str(tmp_path / "data"),
                LATEST_PORT=str(port),
                LATEST_ES_PORT=str(es_port),
            ),
            stdin=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            until_up(
                server,
                lambda: socket.create_connection(("127.0.0.1", port), timeout=0.5).close(),
                (OSError,),
                within=30,
                poll=0.05,
            )
        finally:
            server.terminate()
            _out, err = server.communicate(timeout=30)
    stderr = err.decode(errors="replace")
    assert server.returncode == 0, stderr
    assert "Traceback" not in stderr, stderr
    [line] = [line for line in stderr.splitlines() if "Elasticsearch-compatible API is off" in line]
    assert f"cannot listen on 127.0.0.1:{es_port}" in line and "LATEST_ES_PORT" in line, line


def test_unreachable_elasticsearch(tmp_path: Path, redis_with_password: int) -> None:
    es_port = free_port()
    code, stderr = serve(
        tmp_path,
        REDIS_URL=f"redis://:the-right-one@127.0.0.1:{redis_with_password}/0",
        LATEST_BACKEND="elasticsearch",
        ELASTICSEARCH_URL=f"http://elastic:{SECRET}@127.0.0.1:{es_port}",
    )
    assert code == 1, stderr
    line = the_error(stderr)
    expected = f"cannot reach Elasticsearch at http://elastic:***@127.0.0.1:{es_port}"
    assert line.startswith(f"latest-server: error: {expected} (ELASTICSEARCH_URL): "), line
    assert "Redis" not in line, line


def test_unreachable_rabbitmq(tmp_path: Path, redis_with_password: int) -> None:
    amqp_port = free_port()
    code, stderr = serve(
        tmp_path,
        REDIS_URL=f"redis://:the-right-one@127.0.0.1:{redis_with_password}/0",
        AMQP_URL=f"amqp://guest:{SECRET}@127.0.0.1:{amqp_port}/",
    )
    assert code == 1, stderr
    line = the_error(stderr)
    assert f"cannot reach RabbitMQ at amqp://guest:***@127.0.0.1:{amqp_port}/ (AMQP_URL)" in line


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("redis://:pw@h:6379/0", "redis://:***@h:6379/0"),
        ("rediss://user:p/w@h:6380", "rediss://user:***@h:6380"),
        ("amqp://guest:guest@h:5672/ and http://elastic:x@es:9200", None),
        ("unix:///run/v.sock?db=0&password=pw", "unix:///run/v.sock?db=0&password=***"),
        ("s3://bucket/prefix and http://host:9200/x", "s3://bucket/prefix and http://host:9200/x"),
    ],
)
def test_redact_masks_only_passwords(text: str, masked: str | None) -> None:
    if masked is None:
        masked = "amqp://guest:***@h:5672/ and http://elastic:***@es:9200"
    assert redact(text) == masked


def test_every_log_line_is_redacted_tracebacks_included() -> None:
    formatter = RedactingFormatter("%(message)s")
    try:
        raise ConnectionError("cannot connect to redis://:pw@h:6379")
    except ConnectionError:
        record = logging.LogRecord(
            "x", logging.ERROR, __file__, 1, "at %s", ("amqp://u:pw@h/",), sys.exc_info()
        )
    line = formatter.format(record)
    assert "pw" not in line and "amqp://u:***@h/" in line and "redis://:***@h:6379" in line


def test_embedded_valkey_that_cannot_start(tmp_path: Path) -> None:
    """Its own reason, from its log, in the one line (here: a damaged append-only manifest)."""
    aof = tmp_path / "data" / "valkey" / "appendonlydir"
    aof.mkdir(parents=True)
    (aof / "appendonly.aof.manifest").write_text("garbage\n")
    code, stderr = serve(tmp_path)
    assert code == 1, stderr
    line = the_error(stderr)
    assert "the embedded Valkey (data in " in line and "LATEST_DATA_DIR" in line, line
    assert "Invalid AOF manifest file format" in line, line
