"""The checks of the services: Redis, RabbitMQ, the object store."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import aio_pika
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError, ResponseError

from latest_server.doctor.findings import TIMEOUT, Finding, fail, ok, warn
from latest_server.errors import LatestError, ObjectMissing
from latest_server.redis_client import SAFE_POLICIES, connect
from latest_server.resources import objects_url
from latest_server.settings import Settings
from latest_server.stores import open_object_store

FULL = 0.95  # used_memory / maxmemory past which writes are about to be refused


# --- Redis -----------------------------------------------------------------------------------


async def check_redis(settings: Settings) -> list[Finding]:
    url = str(settings.redis_url)
    redis = connect(url, socket_connect_timeout=TIMEOUT, socket_timeout=TIMEOUT)
    try:
        if isinstance(redis, RedisCluster):  # every primary holds variables: check each
            try:
                await redis.initialize()
                primaries = redis.get_primaries()
            except (RedisError, OSError) as exc:
                return [
                    fail("redis", f"{url} does not answer: {exc}", "start Redis or set REDIS_URL")
                ]
            found = [ok("redis", f"{url} answers: a cluster of {len(primaries)} primaries")]
            for node in primaries:
                try:
                    info = await redis.info(target_nodes=node)
                    save = await redis.config_get("save", target_nodes=node)
                except (RedisError, OSError) as exc:
                    found.append(fail("redis", f"{node.name} does not answer: {exc}", "start it"))
                    continue
                found += _node_findings(settings, info, str(save.get("save", "")), node.name)
            return found
        try:
            info = await redis.info()
        except (RedisError, OSError) as exc:
            return [fail("redis", f"{url} does not answer: {exc}", "start Redis or set REDIS_URL")]
        return [
            ok("redis", f"{url} answers"),
            _version(info),
            _policy(info),
            await _persistence(redis, info),
            _memory(settings, info),
            _cluster(info),
        ]
    finally:
        await redis.aclose()


def _node_findings(settings: Settings, info: dict[str, Any], save: str, name: str) -> list[Finding]:
    """A cluster primary's version, policy, persistence and memory, each named by the node."""
    if int(info.get("aof_enabled", 0)):
        persistence = ok("redis", "persistence: append-only file")
    elif save.strip():
        persistence = ok("redis", f"persistence: snapshots (save {save})")
    else:
        persistence = warn("redis", 'no persistence (appendonly no, save "")')
    findings = [_version(info), _policy(info), persistence, _memory(settings, info)]
    return [Finding(f.level, f.area, f"{name}: {f.message}", f.fix) for f in findings]


def _version(info: dict[str, Any]) -> Finding:
    version = str(info.get("redis_version", "0"))
    name = f"Valkey {info['valkey_version']}" if "valkey_version" in info else f"Redis {version}"
    try:
        major = int(version.split(".")[0])
    except ValueError:
        major = 0
    if major >= 7:
        return ok("redis", f"{name}: sharded pub/sub and script flags available")
    return fail(
        "redis",
        f"{name} is older than 7: no SPUBLISH (the live feed) and no script flags (offload "
        "when Redis is out of memory)",
        "upgrade to Redis 7 or later, or Valkey",
    )


def _policy(info: dict[str, Any]) -> Finding:
    policy = str(info.get("maxmemory_policy", "noeviction"))
    if policy in SAFE_POLICIES:
        return ok("redis", f"maxmemory-policy {policy}: nothing is evicted")
    return fail(
        "redis",
        f"maxmemory-policy is {policy}: it evicts keys and would silently lose history (the "
        "server refuses to start)",
        "CONFIG SET maxmemory-policy noeviction, and set it in redis.conf",
    )


async def _persistence(redis: Redis, info: dict[str, Any]) -> Finding:
    if int(info.get("aof_enabled", 0)):
        return ok("redis", "persistence: append-only file")
    try:
        save = str((await redis.config_get("save")).get("save", ""))
    except ResponseError:  # CONFIG disabled (managed Redis): do not guess
        return warn("redis", "persistence unknown: CONFIG GET is refused")
    if save.strip():
        return ok("redis", f"persistence: snapshots (save {save})")
    return warn(
        "redis",
        'no persistence (appendonly no, save ""): a restart loses the latest values and the '
        "history not yet offloaded",
        "CONFIG SET appendonly yes",
    )


def _memory(settings: Settings, info: dict[str, Any]) -> Finding:
    used = int(info.get("used_memory", 0))
    budget = int(info.get("maxmemory", 0)) or settings.offload_max_bytes
    if not budget:
        return warn(
            "redis",
            f"no maxmemory and no LATEST_OFFLOAD_MAX_BYTES: {_mib(used)} used, history is never "
            "offloaded automatically and Redis grows until the machine runs out",
            "set maxmemory (with noeviction) or LATEST_OFFLOAD_MAX_BYTES",
        )
    ratio = used / budget
    said = f"memory {_mib(used)} of {_mib(budget)} ({ratio:.0%})"
    if ratio >= FULL:
        return fail(
            "redis",
            f"{said}: writes are about to be refused",
            "check that offload runs (OBJECTS_URL reachable, `latest-server offload`) or raise "
            "maxmemory",
        )
    if ratio >= settings.offload_ratio:
        return warn(
            "redis",
            f"{said}: past LATEST_OFFLOAD_RATIO ({settings.offload_ratio:g}), offload should be "
            "moving history out",
            "if it stays there, check OBJECTS_URL and the offload logs",
        )
    return ok("redis", f"{said}; offload starts at {settings.offload_ratio:.0%}")


def _cluster(info: dict[str, Any]) -> Finding:
    if int(info.get("cluster_enabled", 0)):
        return ok("redis", "cluster mode on")
    return ok("redis", "cluster mode off (one server)")


def _mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"


# --- RabbitMQ --------------------------------------------------------------------------------


async def check_broker(settings: Settings) -> list[Finding]:
    if not settings.amqp_url:
        return [ok("rabbitmq", "AMQP_URL unset: no consumer, nothing to check")]
    url = settings.amqp_url
    try:
        connection = await asyncio.wait_for(aio_pika.connect(url, timeout=TIMEOUT), TIMEOUT * 2)
    except (TimeoutError, OSError, aio_pika.exceptions.AMQPError) as exc:
        return [
            fail(
                "rabbitmq",
                f"{url} does not answer: {exc or type(exc).__name__}",
                "start RabbitMQ or set AMQP_URL (user, password and vhost in the URL)",
            )
        ]
    found = [ok("rabbitmq", f"{url} answers")]
    try:
        for kind, name in (
            ("exchange", settings.exchange),
            ("dead-letter exchange", settings.dead_letter_exchange),
        ):
            found.append(await _exchange(connection, settings, kind, name))
        dlq = await _queue(connection, settings.dead_letter_queue)
        queue = await _queue(connection, settings.queue)
    finally:
        await connection.close()
    found += _dead_letters(settings, dlq) + _consumers(settings, queue)
    return found


async def _exchange(connection: Any, settings: Settings, kind: str, name: str) -> Finding:
    channel = await connection.channel()
    try:
        await channel.declare_exchange(name, passive=True)
    except aio_pika.exceptions.ChannelClosed:
        return _missing(settings, kind, name)
    await channel.close()
    return ok("rabbitmq", f"{kind} {name!r} exists")


async def _queue(connection: Any, name: str) -> tuple[str, int, int] | None:
    """(name, messages, consumers) of a queue, or None when it does not exist."""
    channel = await connection.channel()
    try:
        queue = await channel.declare_queue(name, passive=True)
    except aio_pika.exceptions.ChannelClosed:
        return None
    result = queue.declaration_result
    await channel.close()
    return name, int(result.message_count or 0), int(result.consumer_count or 0)


def _missing(settings: Settings, kind: str, name: str) -> Finding:
    if settings.declare:
        return warn("rabbitmq", f"{kind} {name!r} does not exist yet: the server declares it")
    return fail(
        "rabbitmq",
        f"{kind} {name!r} does not exist and LATEST_DECLARE is off",
        "declare it, or set LATEST_DECLARE=true (or the right name)",
    )


def _dead_letters(settings: Settings, dlq: tuple[str, int, int] | None) -> list[Finding]:
    if dlq is None:
        return [_missing(settings, "dead-letter queue", settings.dead_letter_queue)]
    name, messages, _ = dlq
    if messages:
        return [
            warn(
                "rabbitmq",
                f"dead-letter queue {name!r} holds {messages} rejected packets",
                "read them (header x-latest-error names each reason), fix the producer, purge",
            )
        ]
    return [ok("rabbitmq", f"dead-letter queue {name!r} exists, empty")]


def _consumers(settings: Settings, queue: tuple[str, int, int] | None) -> list[Finding]:
    if queue is None:
        return [_missing(settings, "queue", settings.queue)]
    name, messages, consumers = queue
    said = f"queue {name!r}: {messages} messages waiting, {consumers} consumers"
    if consumers:
        return [ok("rabbitmq", said)]
    return [warn("rabbitmq", said, "start `latest-server serve` (or `consume`) with AMQP_URL")]


# --- the object store ------------------------------------------------------------------------


async def check_objects(settings: Settings) -> list[Finding]:
    url = objects_url(settings)
    name = f"doctor/{uuid.uuid4().hex}.probe"
    data = b"latest-server doctor probe\n"
    try:
        store = open_object_store(url, settings)
        await asyncio.to_thread(store.put, name, data)
        read = await asyncio.to_thread(store.get, name)
        await asyncio.to_thread(store.delete, name)
        try:
            await asyncio.to_thread(store.get, name)
            gone = False
        except ObjectMissing:
            gone = True
    except (LatestError, OSError) as exc:
        message = exc.message if isinstance(exc, LatestError) else str(exc)
        return [
            fail(
                "objects",
                f"{url}: the probe failed: {message}",
                "check OBJECTS_URL, the bucket and the AWS_* credentials (or the directory)",
            )
        ]
    if read != data or not gone:
        return [fail("objects", f"{url}: the probe read back wrong", "check the object store")]
    return [ok("objects", f"{url}: wrote, read and deleted {name}")]
