"""Redis connection: connect by URL, check the server is safe for history, register scripts."""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

import hiredis
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import (
    BusyLoadingError,
    ClusterDownError,
    MasterDownError,
    NoScriptError,
    OutOfMemoryError,
    ReadOnlyError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from latest_server import lua
from latest_server.errors import StoreRefused, StoreUnavailable, UnsafeRedisConfig

log = logging.getLogger(__name__)
T = TypeVar("T")
P = ParamSpec("P")

SCRIPTS = (
    "write",
    "variables",  # a page of GET /variables
    "read_hot",
    "read_seq",  # seq ranges for websocket subscribers
    "transfer",
    "finish",
    "lock_acquire",
    "lock_extend",
    "lock_release",
    "append",  # the Elasticsearch latest backend: history + feed only
    "delete",  # Elasticsearch-compatible deletes (a tombstone keeps the version)
    "session_apply",
    "session_track",
    "session_poll",
    "session_claim",
    "session_release",
)
SAFE_POLICIES = ("noeviction",)
MAX_CONNECTIONS = 512  # per process; Redis' own limit (maxclients) is 10,000 by default
POOL_TIMEOUT = 20.0  # seconds a command waits for a free connection
# Redis could not be reached, or went away mid-command (redis-py wraps socket errors in these).
REDIS_DOWN = (RedisConnectionError, RedisTimeoutError)
# A connection lost wherever it is used, also by code that holds one of its own (the live feed's
# pub/sub connection) and may meet the socket's own errors.
CONNECTION_LOST = (*REDIS_DOWN, OSError)

# Error replies of a Redis that is reachable but cannot take commands for now, by their code, with
# what the operator is told (once per episode). Each passes by itself, or by what the server does
# (offload frees memory): they are unavailability, retried, never a failed write.
REFUSALS = {
    "OOM": "Redis is out of memory (used_memory > maxmemory, policy noeviction): writes wait "
    "(503, AMQP messages stay queued); offload frees memory: check that it runs (OBJECTS_URL "
    "reachable, LATEST_OFFLOAD_RATIO below 1) or raise maxmemory",
    "READONLY": "Redis is a read-only replica (after a failover?): writes wait; point REDIS_URL "
    "at the primary",
    "BUSY": "Redis is busy running a script: commands wait until it ends (SCRIPT KILL ends it)",
    "LOADING": "Redis is loading its data set: commands wait until it is loaded",
    "MISCONF": "Redis refuses writes because it cannot persist (stop-writes-on-bgsave-error): "
    "writes wait; check Redis' disk and its log",
    "TRYAGAIN": "Redis Cluster is moving a slot: commands wait",
    "CLUSTERDOWN": "Redis Cluster is down: commands wait",
    "MASTERDOWN": "Redis' replica lost its primary (replica-serve-stale-data no): commands wait",
    "NOREPLICAS": "Redis has fewer replicas than min-replicas-to-write: writes wait",
}
# redis-py turns some codes into classes of their own (and drops the code from the message).
REFUSAL_CLASSES: tuple[tuple[type[Exception], str], ...] = (
    (OutOfMemoryError, "OOM"),
    (ReadOnlyError, "READONLY"),
    (BusyLoadingError, "LOADING"),
    (TryAgainError, "TRYAGAIN"),
    (MasterDownError, "MASTERDOWN"),
    (ClusterDownError, "CLUSTERDOWN"),
)
EPISODE_QUIET = 60.0  # seconds without a condition after which its next occurrence is logged again


def refusal(exc: BaseException) -> str | None:
    """The code of an error reply that says "not now" (REFUSALS), else None."""
    for cls, code in REFUSAL_CLASSES:
        if isinstance(exc, cls):
            return code
    if isinstance(exc, ResponseError):
        code = str(exc).partition(" ")[0]
        return code if code in REFUSALS else None
    return None


class _Episodes:
    """Logs a condition when it starts, not on every command it refuses: a consumer retrying a
    batch, or a producer retrying its 503s, would otherwise log it many times a second."""

    def __init__(self) -> None:
        self.last_seen: dict[str, float] = {}

    def note(self, code: str, exc: BaseException) -> None:
        now = time.monotonic()
        last = self.last_seen.get(code)
        self.last_seen[code] = now
        if last is None or now - last > EPISODE_QUIET:
            log.warning("%s (%s: %s)", REFUSALS[code], code, exc)


EPISODES = _Episodes()


def store_error(exc: BaseException) -> StoreUnavailable | None:
    """``exc`` as the error tree says it when Redis is out of reach or refuses commands for now
    (StoreRefused, logged once per episode), else None: an error reply that is a bug (a script
    error, WRONGTYPE) stays what it is."""
    code = refusal(exc)
    if code is not None:
        EPISODES.note(code, exc)
        return StoreRefused(code, f"Redis refused the command ({code}): {exc}")
    if isinstance(exc, REDIS_DOWN):
        return StoreUnavailable(f"Redis is unavailable: {exc}")
    return None


def redis_bounded(
    function: Callable[P, Awaitable[T]],
) -> Callable[P, Coroutine[Any, Any, T]]:
    """``function``, with Redis out of reach, or refusing commands for now (out of memory,
    read-only, busy, ...), raised as StoreUnavailable (a 503 with Retry-After at the web edge, a
    nack on AMQP): the one place where redis-py's errors enter the error tree, for every store
    method a route or a consumer calls. Other errors stay as they are."""

    @functools.wraps(function)
    async def call(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await function(*args, **kwargs)
        except (*REDIS_DOWN, ResponseError) as exc:
            error = store_error(exc)
            if error is None:
                raise
            raise error from exc

    return call


@dataclass(frozen=True)
class Scripts:
    """The script registry: SHA-1 of each script of lua/, for EVALSHA in pipelines. One is
    loaded per process (``load_scripts``, by ``Resources``) and handed to every store and job
    that calls a script; a reload after a Redis restart updates it for all of them."""

    sources: dict[str, str]
    shas: dict[str, str]

    async def reload(self, redis: Redis) -> None:
        """SCRIPT LOAD every script again: Redis lost its script cache (a restart)."""
        for name, text in self.sources.items():
            self.shas[name] = str(await redis.script_load(text))

    async def reloading(self, redis: Redis, send: Callable[[], Awaitable[T]]) -> T:
        """``send()``, sent once more after a reload if Redis answered NOSCRIPT. On NOSCRIPT
        nothing ran (a pipeline's calls all fail alike), so sending again is safe."""
        try:
            return await send()
        except NoScriptError:
            await self.reload(redis)
            return await send()

    async def call(self, redis: Redis, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """EVALSHA, loading the scripts again if Redis lost its cache (a restart)."""

        async def send() -> Any:
            return await redis.evalsha(self.shas[name], len(keys), *keys, *args)  # type: ignore[misc]

        return await self.reloading(redis, send)

    async def pipelined(
        self, redis: Redis, name: str, calls: Iterable[tuple[Sequence[Any], Sequence[Any]]]
    ) -> list[Any]:
        """One EVALSHA of script ``name`` per (keys, args) of ``calls``, in one round trip, in
        order; the replies, as redis-py gives them."""
        calls = list(calls)

        async def send() -> list[Any]:
            pipe = redis.pipeline(transaction=False)
            for keys, args in calls:
                pipe.evalsha(self.shas[name], len(keys), *keys, *args)
            return await pipe.execute()  # type: ignore[no-any-return]

        return await self.reloading(redis, send)


@contextlib.asynccontextmanager
async def _raw_connection(redis: Redis) -> AsyncIterator[Any]:
    """A connection of ``redis``'s pool for hand-sent commands. An error reply or a lost
    connection leaves replies unread: the connection is then closed, never reused."""
    pool = redis.connection_pool
    connection = await pool.get_connection()  # type: ignore[no-untyped-call]
    try:
        yield connection
    except BaseException:
        await connection.disconnect()
        raise
    finally:
        await pool.release(connection)


async def _write(connection: Any, data: bytes) -> None:
    """Send packed commands. uvloop refuses a write to a transport Redis has already closed
    with a RuntimeError, which redis-py passes on: it is a lost connection like any other
    (a batch sent in several writes meets it when Redis goes away between two of them)."""
    try:
        await connection.send_packed_command(data)
    except RuntimeError as exc:
        raise RedisConnectionError(f"Redis closed the connection: {exc}") from exc


async def send_raw(redis: Redis, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
    """Replies to ``commands``, sent in one round trip, as Redis gave them. Commands are packed
    by hiredis (C) and replies skip redis-py's callbacks: on hot paths (a history read, the
    websocket tail probe) redis-py's packing and reply parsing cost more than Redis answering.
    An error reply raises.

    Only reads are sent this way (writes go through ``send_each``), so a connection that breaks
    under them (a pooled one that Redis closed when it restarted) is given up and they are sent
    once more, on a fresh one."""
    packed = b"".join(map(hiredis.pack_command, commands))
    try:
        return await _send_packed(redis, packed, len(commands))
    except REDIS_DOWN:
        return await _send_packed(redis, packed, len(commands))


async def _send_packed(redis: Redis, packed: bytes, count: int) -> list[Any]:
    async with _raw_connection(redis) as connection:
        await _write(connection, packed)
        return [await connection.read_response() for _ in range(count)]


async def send_each(
    redis: Redis, commands: Iterable[bytes], convert: Callable[[Any], T]
) -> list[T]:
    """``send_raw`` for a long batch built as it goes, of commands already packed (RESP): each is
    written as soon as ``commands`` yields it, so Redis runs one while the caller builds the next
    (a write path batch: parsing and packing overlap the scripts). Replies are read once every
    command is sent, in order on the one connection, each passed through ``convert`` as it
    arrives, while Redis still runs the later ones."""
    async with _raw_connection(redis) as connection:
        sent = 0
        for command in commands:
            await _write(connection, command)
            sent += 1
        return [convert(await connection.read_response()) for _ in range(sent)]


def connect(url: str, **options: object) -> Redis:
    """A client for redis://, rediss:// or unix:// URLs. Values stay bytes (documents are JSON).

    Its pool holds at most MAX_CONNECTIONS connections, and a command waits (POOL_TIMEOUT) for
    one rather than failing: redis-py 8's default pool refuses the 101st concurrent command
    ("Too many connections"), which hundreds of websocket subscriptions opening at once reach."""
    # No health_check_interval: it costs a check on every command of the read hot path (a tenth
    # of GET /latest). A dead connection fails its command, which redis-py then sends once more
    # on a new one: a pool built from a URL otherwise retries nothing, and after a Redis restart
    # each stale connection would fail one request that a fresh connection could have served.
    if not url.startswith("unix:"):  # a unix socket has no keep-alive
        options.setdefault("socket_keepalive", True)
    options.setdefault("retry", Retry(NoBackoff(), 1))
    options.setdefault("retry_on_error", list(REDIS_DOWN))
    pool = BlockingConnectionPool.from_url(
        url, max_connections=MAX_CONNECTIONS, timeout=POOL_TIMEOUT, **options
    )
    return Redis.from_pool(pool)


async def load_scripts(redis: Redis) -> Scripts:
    """The registry, every script loaded once (SCRIPT LOAD); callers reload on NOSCRIPT."""
    scripts = Scripts({name: lua.source(name) for name in SCRIPTS}, {})
    await scripts.reload(redis)
    return scripts


async def check_server(redis: Redis) -> list[str]:
    """Refuse an evicting maxmemory-policy (it silently drops history); warn without persistence.

    Returns the warnings that were logged.
    """
    memory = await redis.info("memory")
    policy = str(memory.get("maxmemory_policy", "noeviction"))
    if policy not in SAFE_POLICIES:
        raise UnsafeRedisConfig(
            f"Redis maxmemory-policy is {policy!r}: it evicts keys and would silently lose "
            "history. "
            "Set it to 'noeviction' (CONFIG SET maxmemory-policy noeviction) and restart."
        )
    warnings = []
    persistence = await redis.info("persistence")
    aof = int(persistence.get("aof_enabled", 0))
    try:
        save = (await redis.config_get("save")).get("save", "")
    except ResponseError:  # CONFIG may be disabled on managed Redis; do not guess.
        save = "unknown"
    if not aof and not str(save).strip():
        warnings.append(
            'Redis has no persistence (appendonly no, save ""): a Redis restart loses the latest '
            "values and the history not yet offloaded."
        )
    for message in warnings:
        log.warning(message)
    return warnings
