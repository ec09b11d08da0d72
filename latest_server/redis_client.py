"""Redis connection: connect by URL, check the server is safe for history, register scripts."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

from redis.asyncio import BlockingConnectionPool, Redis, RedisCluster
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.connection import SSLConnection, parse_url
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import (
    AskError,
    BusyLoadingError,
    ClusterDownError,
    MasterDownError,
    NoScriptError,
    OutOfMemoryError,
    ReadOnlyError,
    ResponseError,
    TryAgainError,
)

from latest_server import lua
from latest_server.errors import ConfigError, StoreRefused, StoreUnavailable, UnsafeRedisConfig
from latest_server.redis_wire import (
    CONNECTION_LOST,
    REDIS_DOWN,
    SCRIPT_CLUSTER_DOWN,
    Client,
    connection_options,
    is_cluster,
    send_each,
    send_node,
    send_raw,
)

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
__all__ = [  # what the rest of the code takes from here, sent by hand in redis_wire
    "CONNECTION_LOST",
    "REDIS_DOWN",
    "Client",
    "connection_options",
    "is_cluster",
    "send_each",
    "send_raw",
]
# REDIS_URL schemes of a Redis Cluster, and the scheme of each of its nodes.
CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}

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
    # A slot still moving after redis-py's (or the write path's) own resends: a reshard or a
    # failover in progress (MovedError is an AskError).
    (AskError, "TRYAGAIN"),
)
EPISODE_QUIET = 60.0  # seconds without a condition after which its next occurrence is logged again


def refusal(exc: BaseException) -> str | None:
    """The code of an error reply that says "not now" (REFUSALS), else None."""
    for cls, code in REFUSAL_CLASSES:
        if isinstance(exc, cls):
            return code
    if isinstance(exc, ResponseError):
        if SCRIPT_CLUSTER_DOWN in str(exc):  # a script's command, on a cluster that is down
            return "CLUSTERDOWN"
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

    async def reload(self, redis: Client) -> None:
        """SCRIPT LOAD every script again: Redis lost its script cache (a restart). On a
        cluster, every primary loads them."""
        for name, text in self.sources.items():
            self.shas[name] = _text(await redis.script_load(text))

    async def load_on(self, node: ClusterNode) -> None:
        """SCRIPT LOAD every script on one node of a cluster: a replica promoted to primary has
        none (scripts are not replicated), and answers NOSCRIPT to hand-sent calls."""
        await send_node(node, [("SCRIPT", "LOAD", text) for text in self.sources.values()])

    async def reloading(self, redis: Client, send: Callable[[], Awaitable[T]]) -> T:
        """``send()``, sent once more after a reload if Redis answered NOSCRIPT. On NOSCRIPT
        nothing ran (a pipeline's calls all fail alike), so sending again is safe."""
        try:
            return await send()
        except NoScriptError:
            await self.reload(redis)
            return await send()

    async def call(self, redis: Client, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """EVALSHA, loading the scripts again if Redis lost its cache (a restart)."""

        async def send() -> Any:
            return await redis.evalsha(self.shas[name], len(keys), *keys, *args)  # type: ignore[misc]

        return await self.reloading(redis, send)

    async def pipelined(
        self, redis: Client, name: str, calls: Iterable[tuple[Sequence[Any], Sequence[Any]]]
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


def connect(url: str, **options: object) -> Client:
    """A client for redis://, rediss:// or unix:// URLs, or for a Redis Cluster:
    redis+cluster:// or rediss+cluster:// with one or more nodes (``host:port,host:port``; the
    client learns the others from them). Values stay bytes (documents are JSON).

    Its pool holds at most MAX_CONNECTIONS connections (per node of a cluster), and a command
    waits (POOL_TIMEOUT) for one rather than failing: redis-py 8's default pool refuses the
    101st concurrent command ("Too many connections"), which hundreds of websocket
    subscriptions opening at once reach."""
    scheme = url.partition("://")[0]
    if scheme in CLUSTER_SCHEMES:
        return _connect_cluster(url, options)
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


def _connect_cluster(url: str, options: dict[str, object]) -> RedisCluster:
    """``redis+cluster://[user:password@]host:port[,host:port...][/0][?option=value...]``: the
    options are redis-py's URL options, as for one Redis. A cluster has only database 0."""
    scheme, _, rest = url.partition("://")
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    if path.strip("/") not in ("", "0"):
        raise ConfigError(
            f"REDIS_URL: a Redis Cluster has only database 0, not {path.strip('/')!r}"
        )
    nodes = []
    for address in filter(None, hosts.split(",")):
        host, colon, port = address.rpartition(":")
        if not colon or not port.isdigit():
            host, port = address, "6379"
        if not host:
            raise ConfigError(f"REDIS_URL: {address!r} is not host:port")
        nodes.append(ClusterNode(host.strip("[]"), int(port)))
    if not nodes:
        raise ConfigError("REDIS_URL: a Redis Cluster URL names at least one host:port")
    one = f"{CLUSTER_SCHEMES[scheme]}://{userinfo}{at}{hosts.split(',')[0]}/0"
    kwargs: dict[str, Any] = dict(parse_url(one + (f"?{query}" if query else "")))
    for name in ("host", "port", "db", "path"):
        kwargs.pop(name, None)
    if kwargs.pop("connection_class", None) is SSLConnection:
        kwargs["ssl"] = True
    kwargs.update(options)
    return RedisCluster(startup_nodes=nodes, max_connections=MAX_CONNECTIONS, **kwargs)


async def each_primary(client: Client, *command: Any) -> dict[str, Any]:
    """``command``'s reply from every primary of a cluster, by node name (``host:port``), asked
    of all at once; of the one Redis otherwise (named ``""``). Replies are parsed by redis-py
    as for one server."""
    if not isinstance(client, RedisCluster):
        return {"": await client.execute_command(*command)}  # type: ignore[no-untyped-call]
    await client.initialize()
    nodes = client.get_primaries()
    replies = await asyncio.gather(
        *(client.execute_command(*command, target_nodes=node) for node in nodes)
    )
    return {node.name: reply for node, reply in zip(nodes, replies, strict=True)}


async def load_scripts(redis: Client) -> Scripts:
    """The registry, every script loaded once (SCRIPT LOAD); callers reload on NOSCRIPT."""
    scripts = Scripts({name: lua.source(name) for name in SCRIPTS}, {})
    await scripts.reload(redis)
    return scripts


async def check_server(client: Client) -> list[str]:
    """Refuse an evicting maxmemory-policy (it silently drops history); warn without
    persistence. On a cluster, every primary is checked.

    Returns the warnings that were logged.
    """
    if not isinstance(client, RedisCluster):
        cluster = await client.info("cluster")
        if int(cluster.get("cluster_enabled", 0)):
            raise ConfigError(
                "REDIS_URL names a node of a Redis Cluster: write it "
                "redis+cluster://host:port[,host:port...] (rediss+cluster:// for TLS)"
            )
    for memory in (await each_primary(client, "INFO", "memory")).values():
        policy = str(memory.get("maxmemory_policy", "noeviction"))
        if policy not in SAFE_POLICIES:
            raise UnsafeRedisConfig(
                f"Redis maxmemory-policy is {policy!r}: it evicts keys and would silently lose "
                "history. "
                "Set it to 'noeviction' (CONFIG SET maxmemory-policy noeviction) and restart."
            )
    warnings = []
    persistence = list((await each_primary(client, "INFO", "persistence")).values())
    try:
        saves = [
            reply.get("save", "")
            for reply in (await each_primary(client, "CONFIG GET", "save")).values()
        ]
    except ResponseError:  # CONFIG may be disabled on managed Redis; do not guess.
        saves = ["unknown"] * len(persistence)
    unsafe = sum(
        1
        for info, save in zip(persistence, saves, strict=True)
        if not int(info.get("aof_enabled", 0)) and not str(save).strip()
    )
    if unsafe:
        nodes = "" if len(persistence) == 1 else f" ({unsafe} of {len(persistence)} primaries)"
        warnings.append(
            f'Redis has no persistence (appendonly no, save ""){nodes}: a Redis restart loses '
            "the latest values and the history not yet offloaded."
        )
    for message in warnings:
        log.warning(message)
    return warnings


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
