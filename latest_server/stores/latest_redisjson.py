"""LatestStore on Redis with the RedisJSON layout of IUDX readers (``LATEST_BACKEND=redisjson``).

Everything ``RedisLatestStore`` keeps stays as it is (the latest hash, history, the feed, the
compare-and-set); in the same script call, a packet that becomes the latest is also set as the
member ``_<sha1>`` of its resource group's RedisJSON key ``<prefix><group id>``
(``lua/iudx_write.lua``), where an IUDX reader's ``JSON.GET <key> ._<sha1>`` finds it. Reads of
``/latest`` and the Elasticsearch-compatible API stay on the hash; the group key is read for a
whole group (``group_docs``).

A Redis Cluster is refused: a group key's slot is not its resources' (each resource's keys carry
its own hash tag ``{k}``, and one group key holds many resources), so no script may touch both.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import re
from collections.abc import Sequence
from typing import Any, cast

import orjson
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ResponseError

from latest_server import keys, lua
from latest_server.errors import ConfigError
from latest_server.packets import Packet, lookup
from latest_server.redact import redact
from latest_server.redis_client import Scripts, load_scripts, redis_bounded
from latest_server.redis_wire import Client
from latest_server.settings import Settings
from latest_server.stores.base import DeleteOutcome, WriteOutcome
from latest_server.stores.latest_redis import RedisLatestStore, _bulk_string

log = logging.getLogger(__name__)

SCRIPTS = ("iudx_write", "iudx_forget")
NO_MEMBER = _bulk_string("")  # iudx_write.lua's member path of a packet it leaves out
# MODULE LIST names of the JSON module: RedisJSON (Redis Stack, Redis 8) and valkey-json.
JSON_MODULES = ("rejson", "redisjson", "json")
NO_JSON = (
    "LATEST_BACKEND=redisjson needs the JSON module in Redis, which {url} does not have: use "
    "Redis Stack (or Redis 8), or Valkey with valkey-json"
)
ON_CLUSTER = (
    "LATEST_BACKEND=redisjson does not run on a Redis Cluster ({url}): a resource group's JSON "
    "key is in another slot than its resources' keys, so one script cannot write both; use a "
    "single Redis (with replicas), or LATEST_BACKEND=redis"
)


class GroupRule:
    """A resource's group id from its id: the first ``segments`` /-separated segments, or the one
    capturing group of ``pattern`` (searched); an id that has neither is a group of its own."""

    def __init__(self, segments: int, pattern: str | None = None) -> None:
        self.segments = segments
        self.pattern = re.compile(pattern) if pattern else None

    @classmethod
    def from_settings(cls, settings: Settings) -> GroupRule:
        return cls(settings.iudx_group_segments, settings.iudx_group_pattern)

    def group_of(self, resource_id: str) -> str:
        if self.pattern is not None:
            found = self.pattern.search(resource_id)
            return found.group(1) if found and found.group(1) else resource_id
        parts = resource_id.split("/")
        if len(parts) < self.segments:
            return resource_id
        return "/".join(parts[: self.segments])


class RedisJsonLatestStore(RedisLatestStore):
    script = "iudx_write"

    def __init__(
        self,
        redis: Redis,
        scripts: Scripts,
        *,
        version_type: str = "external",
        prefix: str = "iudx:",
        groups: GroupRule | None = None,
        unique_attribute: str | None = None,
    ) -> None:
        super().__init__(redis, scripts, version_type=version_type)
        self.prefix = prefix
        self.groups = groups or GroupRule(4)
        self.unique = tuple(unique_attribute.split(".")) if unique_attribute else None
        # Packed once per variable, like the hash's keys (ids repeat).
        self._packed = functools.lru_cache(maxsize=65_536)(self._pack_names)

    @classmethod
    async def from_url(
        cls, url: str, *, redis: Client, settings: Settings, scripts: Scripts | None = None
    ) -> RedisJsonLatestStore:
        """The stores/__init__.py entry point: refuses a Redis without the JSON module, or a
        Redis Cluster (ConfigError, one line), then registers its scripts in ``scripts``."""
        if isinstance(redis, RedisCluster):
            raise ConfigError(ON_CLUSTER.format(url=redact(url)))
        await check_json_redis(redis, url)
        scripts = scripts or await load_scripts(redis)
        for name in SCRIPTS:
            scripts.sources[name] = lua.source(name)
            scripts.shas[name] = str(await redis.script_load(scripts.sources[name]))
        return cls(
            redis,
            scripts,
            version_type=settings.version_type,
            prefix=settings.iudx_prefix,
            groups=GroupRule.from_settings(settings),
            unique_attribute=settings.iudx_unique_attribute,
        )

    # --- names ---------------------------------------------------------------------------------

    def group_key(self, resource_id: str) -> str:
        """The RedisJSON key of the group of ``resource_id``."""
        return keys.iudx_group(self.prefix, self.groups.group_of(resource_id))

    def member(self, resource_id: str, doc: bytes | None = None) -> str:
        """The member path of a resource in its group key: ``._<sha1>`` of the value of the
        unique attribute in ``doc`` when one is set and found, else of the resource id."""
        if self.unique is not None and doc is not None:
            value = lookup(orjson.loads(doc), self.unique)
            if value is not None:
                text = value if isinstance(value, str) else orjson.dumps(value).decode()
                return keys.iudx_member(hashlib.sha1(text.encode()).hexdigest())
        return keys.iudx_member(keys.digest(resource_id))

    def _pack_names(self, variable_id: str, key: str) -> tuple[bytes, bytes]:
        """A packet's group key and member path (by its id), packed; no member ('') for a
        packet of a namespaced Elasticsearch index."""
        member = self.member(variable_id) if key == keys.digest(variable_id) else ""
        return _bulk_string(self.group_key(variable_id)), _bulk_string(member)

    # --- writes --------------------------------------------------------------------------------

    def _command(  # type: ignore[override]
        self,
        sha: str,
        gte: bytes,
        chunk: list[Packet],
        extra_keys: Sequence[bytes] = (),
        extra_args: Sequence[bytes] = (),
    ) -> bytes:
        """write.lua's call for ``chunk``, with iudx_write.lua's KEYS (a group key per packet)
        and ARGV (a member path per packet, '' for a packet of another Elasticsearch index)."""
        names = [self._packed(p.variable_id, p.key) for p in chunk]
        groups = [group for group, _ in names]
        if self.unique is None:
            members = [member for _, member in names]
        else:  # named by a value of each packet
            members = [
                member if member == NO_MEMBER else _bulk_string(self.member(p.variable_id, p.raw))
                for p, (_, member) in zip(chunk, names, strict=True)
            ]
        return RedisLatestStore._command(sha, gte, chunk, groups, members)

    @staticmethod
    def _outcomes(replies: list[list[Any]]) -> list[WriteOutcome]:
        for reply in replies:
            if len(reply) > 6 and reply[6]:
                log.warning(
                    "RedisJSON refused a latest packet's member (the packet is kept in history "
                    "and in GET /latest): %s",
                    reply[6].decode(errors="replace"),
                )
        return RedisLatestStore._outcomes(replies)

    @redis_bounded
    async def delete(
        self, variable_id: str, key: str, version: int | None, version_type: str
    ) -> DeleteOutcome:
        """The hash's delete, then the member's removal (``iudx_forget.lua``: only while no
        document is back in the hash). The member is the stored document's: the Elasticsearch
        API may name it by the SHA-1 of its id (``variable_id`` is then that SHA-1)."""
        stored, doc = cast(
            "list[bytes | None]", await self.redis.hmget(keys.latest(key), "id", "doc")
        )
        resource = stored.decode() if stored else variable_id
        outcome = await super().delete(variable_id, key, version, version_type)
        if outcome.result != "conflict" and key == keys.digest(resource):
            await self.scripts.call(
                self.redis,
                "iudx_forget",
                [keys.latest(key), self.group_key(resource)],
                [self.member(resource, doc)],
            )
        return outcome

    # --- reads ---------------------------------------------------------------------------------

    @redis_bounded
    async def group_docs(self, group_id: str) -> list[bytes] | None:
        """Every member of group ``group_id`` (``JSON.GET <key> .``, as an IUDX reader reads a
        group), each as JSON; None when the group has no key."""
        raw = await self.redis.execute_command(  # type: ignore[no-untyped-call]
            "JSON.GET", keys.iudx_group(self.prefix, group_id), "."
        )
        if raw is None:
            return None
        members = orjson.loads(raw)
        if not isinstance(members, dict):
            return None
        return [orjson.dumps(value) for value in members.values()]


async def check_json_redis(redis: Client, url: str) -> None:
    """Refuse (ConfigError) a Redis Cluster, or a Redis without the JSON module: ``MODULE LIST``
    names it, or (a Redis that has it built in, or has MODULE renamed) ``JSON.GET`` of a missing
    key answers instead of "unknown command"."""
    if isinstance(redis, RedisCluster):
        raise ConfigError(ON_CLUSTER.format(url=redact(url)))
    try:
        cluster = await redis.info("cluster")
    except ResponseError:  # INFO refused or renamed: nothing says it is a cluster
        cluster = {}
    # A cluster client answers per node ({node: {...}}), a client of one node its fields.
    nodes = [v for v in cluster.values() if isinstance(v, dict)] or [cluster]
    if any(int(n.get("cluster_enabled", 0)) for n in nodes):
        raise ConfigError(ON_CLUSTER.format(url=redact(url)))
    try:
        modules = await redis.execute_command(  # type: ignore[no-untyped-call]
            "MODULE", "LIST"
        )
    except ResponseError:
        modules = []
    if any(_module_name(m).lower() in JSON_MODULES for m in modules or []):
        return
    try:
        await redis.execute_command(  # type: ignore[no-untyped-call]
            "JSON.GET", "lv:iudx:probe"
        )
    except ResponseError as exc:
        if "unknown command" in str(exc).lower():
            raise ConfigError(NO_JSON.format(url=redact(url))) from None
        # Any other refusal (WRONGTYPE on that key, say) came from the JSON module.


def _module_name(module: Any) -> str:
    """A MODULE LIST entry's name: a flat [name, n, ver, v, ...] list or a parsed dict."""
    if isinstance(module, dict):
        name = module.get(b"name", module.get("name", b""))
    elif isinstance(module, list | tuple) and len(module) > 1:
        name = module[1]
    else:
        return ""
    return name.decode() if isinstance(name, bytes) else str(name)
