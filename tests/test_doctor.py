"""``latest-server doctor`` run as the command it is, against real services: a Redis of the
test's own (an evicting one, a good one), the test's RabbitMQ vhost with the topology declared,
moto's S3 server over HTTP, an AMQP URL nobody listens on; and the tokens and bind checks."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aio_pika
import pytest

from latest_server.access import is_loopback
from latest_server.doctor.access import check_bind, check_tokens
from latest_server.settings import Settings
from tests.conftest import AMQP_URL, S3_BUCKET, unique
from tests.services import free_port, private_redis


def doctor(*args: str) -> subprocess.CompletedProcess[str]:
    """The command line, in a process of its own (the environment, AWS_* included, inherited)."""
    return subprocess.run(
        [sys.executable, "-m", "latest_server", "doctor", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "LATEST_LOG_LEVEL": "warning"},
    )


def lines(result: subprocess.CompletedProcess[str], level: str) -> list[str]:
    return [line for line in result.stdout.splitlines() if line.startswith(level)]


def test_an_evicting_redis_fails_naming_the_policy(tmp_path: Path) -> None:
    with private_redis("--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru") as url:
        result = doctor("--redis-url", url, "--objects-url", (tmp_path / "objects").as_uri())
    assert result.returncode == 1, result.stdout + result.stderr
    [failed] = lines(result, "FAIL")
    assert "maxmemory-policy is allkeys-lru" in failed
    assert "CONFIG SET maxmemory-policy noeviction" in failed
    assert "1 checks failed" in result.stderr


async def declare(names: dict[str, str]) -> None:
    """The topology as the consumer declares it (consumer.py)."""
    connection = await aio_pika.connect(AMQP_URL)
    channel = await connection.channel()
    exchange = await channel.declare_exchange(
        names["exchange"], aio_pika.ExchangeType.TOPIC, durable=True
    )
    dlx = await channel.declare_exchange(
        names["dead_letter_exchange"], aio_pika.ExchangeType.TOPIC, durable=True
    )
    dlq = await channel.declare_queue(names["dead_letter_queue"], durable=True)
    await dlq.bind(dlx, "#")
    queue = await channel.declare_queue(names["queue"], durable=True)
    await queue.bind(exchange, "#")
    await connection.close()


async def test_good_services_pass(names: dict[str, str], amqp: Any, s3_endpoint: str) -> None:
    await declare(names)
    await amqp.default_exchange.publish(
        aio_pika.Message(b"{}"), routing_key=names["dead_letter_queue"]
    )
    prefix = unique("doctor")
    objects = f"s3://{S3_BUCKET}/{prefix}"
    flags = [f"--{name.replace('_', '-')}={value}" for name, value in names.items()]
    with private_redis("--maxmemory", "256mb", "--appendonly", "yes") as url:
        result = doctor(
            "--redis-url", url, "--amqp-url", AMQP_URL, "--objects-url", objects, *flags
        )
    assert result.returncode == 0, result.stdout + result.stderr
    assert not lines(result, "FAIL")
    out = result.stdout
    assert "maxmemory-policy noeviction" in out
    assert "persistence: append-only file" in out
    assert "of 256.0 MiB" in out
    assert f"exchange {names['exchange']!r} exists" in out
    assert f"dead-letter exchange {names['dead_letter_exchange']!r} exists" in out
    assert f"dead-letter queue {names['dead_letter_queue']!r} holds 1 rejected packets" in out
    assert f"queue {names['queue']!r}: 0 messages waiting, 0 consumers" in out
    assert f"ok    objects  {objects}: wrote, read and deleted doctor/" in out
    import boto3

    listed = boto3.client("s3").list_objects_v2(Bucket=S3_BUCKET, Prefix=prefix)
    assert listed.get("KeyCount", 0) == 0  # the probe is gone


def test_an_unreachable_broker_fails(tmp_path: Path) -> None:
    with private_redis() as url:
        result = doctor(
            "--redis-url",
            url,
            "--amqp-url",
            f"amqp://guest:secret@127.0.0.1:{free_port()}/",
            "--objects-url",
            (tmp_path / "objects").as_uri(),
        )
    assert result.returncode == 1
    [failed] = lines(result, "FAIL")
    assert failed.startswith("FAIL  rabbitmq")
    assert "does not answer" in failed and "secret" not in result.stdout


def test_an_unreachable_redis_fails(tmp_path: Path) -> None:
    result = doctor(
        "--redis-url",
        f"redis://127.0.0.1:{free_port()}/0",
        "--objects-url",
        (tmp_path / "objects").as_uri(),
    )
    assert result.returncode == 1
    assert lines(result, "FAIL")[0].startswith("FAIL  redis")


# --- tokens and the bind address -------------------------------------------------------------


def hashed(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def toml(entries: list[dict[str, Any]]) -> str:
    """A tokens file: one ``[[tokens]]`` table per entry."""
    tables = []
    for entry in entries:
        lines = [f"{key} = {json.dumps(value)}" for key, value in entry.items()]
        tables.append("[[tokens]]\n" + "\n".join(lines))
    return "\n\n".join(tables) + "\n"


def check_file(path: Path, text: str) -> list[Any]:
    path.write_text(text)
    return check_tokens(SimpleNamespace(tokens_file=str(path)))


def test_tokens_file_checks(tmp_path: Path) -> None:
    file = tmp_path / "tokens.toml"
    good = [
        {"name": "ingest", "sha256": hashed("a"), "scopes": ["write"]},
        {"name": "reader", "sha256": hashed("b"), "scopes": ["read"], "prefixes": ["city/"]},
    ]
    [found] = check_file(file, toml(good))
    assert found.level == "ok" and "2 tokens" in found.message
    bad = [
        {"name": "ingest", "sha256": hashed("a"), "scopes": ["write"]},
        {"name": "ingest", "sha256": hashed("c"), "scopes": ["read"]},
        {"name": "clear", "token": "hunter2", "scopes": ["read"]},
        {"name": "odd", "sha256": hashed("d"), "scopes": ["root"]},
        {"name": "none", "sha256": hashed("e"), "scopes": []},
    ]
    failed = check_file(file, toml(bad))
    assert {f.level for f in failed} == {"FAIL"}
    said = " ".join(f.message for f in failed)
    assert "'ingest' is used twice" in said
    assert "'clear' is stored in clear" in said and "hunter2" not in said
    assert "'clear' has unknown keys ['token']" in said
    assert "unknown scopes ['root']" in said
    assert "'none' has no scopes" in said
    assert check_file(file, "[not toml")[0].level == "FAIL"
    assert check_file(file, '[[tokens]]\nname = "a"\n[other]\n')[0].level == "FAIL"
    missing = SimpleNamespace(tokens_file=str(tmp_path / "absent.toml"))
    assert "does not exist" in check_tokens(missing)[0].message
    # A build without the setting, or the setting unset: nothing to check.
    assert check_tokens(SimpleNamespace())[0].level == "ok"
    assert check_tokens(SimpleNamespace(tokens_file=None))[0].level == "ok"


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("::1", True), ("localhost", True), ("0.0.0.0", False), ("::", False)],
)
def test_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_a_public_bind_without_tokens_fails() -> None:
    [found] = check_bind(dataclasses.replace(Settings(), host="0.0.0.0"))
    assert found.level == "FAIL" and "no tokens are configured" in found.message
    [found] = check_bind(Settings())
    assert found.level == "ok"
    for source in ("tokens_file", "jwt_public_key_file", "jwks_file"):
        with_tokens = SimpleNamespace(host="0.0.0.0", port=8000, es_port=0, **{source: "/etc/x"})
        [found] = check_bind(with_tokens)
        assert found.level == "ok" and "tokens required" in found.message
    insecure = SimpleNamespace(host="0.0.0.0", port=8000, es_port=0, insecure=True)
    assert check_bind(insecure)[0].level == "warn"
