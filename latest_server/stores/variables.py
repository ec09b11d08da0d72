"""The index of variables: every variable id in one sorted set, kept by the write path.

``lv:{vars}:ids`` (``keys.VARIABLES``) holds each variable id of the main namespace once, all
with score 0, so ``ZRANGEBYLEX`` answers a page of the ids under a prefix, in byte order, in
O(log n + page): no ``SCAN`` of the keyspace per request. The ``Ingestor`` adds the ids of a
batch after the write and before the batch is acknowledged (``VariableIndex.written``); ids
this process added before are not sent again, so a steady stream costs nothing. The key is
outside every variable's hash tag, so no per-variable script touches it, and on a Redis Cluster
it is one more key on one node.

Repairs. ``reindex`` scans every variable's ``lv:{k}:meta`` (on every primary) and adds the id
it names (``meta``'s ``id``, or the latest hash's ``id`` for variables written before meta
held it); ``ensure`` runs it when the index key is missing while variables exist (a Redis that
lost the key, or data written before the index existed). While a reindex runs, a listing may
miss ids it has not reached yet.

Deleted variables (an Elasticsearch ``DELETE`` leaves a tombstone) stay listed: they have a
history. Ids of other Elasticsearch indices (namespaces, ``keys.namespaced``) are not listed.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Sequence
from dataclasses import dataclass
from typing import Any

from latest_server import keys
from latest_server.packets import Packet
from latest_server.redis_client import Scripts, redis_bounded
from latest_server.redis_wire import Client, is_cluster, send_raw
from latest_server.stores.base import WriteOutcome

log = logging.getLogger(__name__)

DEFAULT_LIMIT = 1_000
MAX_LIMIT = 10_000
# The variable keys this process has indexed, so that a batch sends only new ids: past this
# many the set starts again (the cost is one ZADD of ids already there per variable).
MAX_KNOWN = 1_000_000
SCAN_COUNT = 1_000
ADD_CHUNK = 1_000  # members per ZADD of a reindex


@dataclass(frozen=True, slots=True)
class Variable:
    id: str
    version: int | None  # the latest document's (µs, or an Elasticsearch request's); None: none
    entries: int  # history entries appended (the last seq)
    deleted: bool  # no latest document: deleted, its tombstone left (history stays)

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "version": self.version,
            "entries": self.entries,
            "deleted": self.deleted,
        }


class VariableIndex:
    def __init__(self, redis: Client, scripts: Scripts) -> None:
        self.redis = redis
        self.scripts = scripts
        self.known: set[str] = set()  # variable keys (keys.key_for) indexed by this process

    # --- reads ---------------------------------------------------------------------------------

    @redis_bounded
    async def ids(
        self, prefix: str = "", limit: int = DEFAULT_LIMIT, after: str | None = None
    ) -> tuple[list[str], str | None]:
        """Up to ``limit`` variable ids starting with ``prefix``, in the byte order of their
        UTF-8, strictly after ``after`` (the previous page's last id; None: from the start),
        and the ``after`` of the next page (None when this page is the last)."""
        if limit < 1:
            raise ValueError("limit must be at least 1")
        start = b"[" + prefix.encode()
        if after is not None and after.encode() >= prefix.encode():
            start = b"(" + after.encode()
        # Every id under the prefix sorts before prefix + 0xff: no UTF-8 text has that byte.
        end = b"(" + prefix.encode() + b"\xff" if prefix else b"+"
        found = await self.redis.zrangebylex(keys.VARIABLES, start, end, start=0, num=limit + 1)
        page = [_text(member) for member in found[:limit]]
        return page, page[-1] if len(found) > limit else None

    async def every(self, prefix: str = "", page: int = MAX_LIMIT) -> AsyncIterator[str]:
        """Every variable id under ``prefix``, in order, read ``page`` ids at a time (for a
        caller that bounds the count itself: ``ids`` is the paged form)."""
        after = None
        while True:
            ids, after = await self.ids(prefix, page, after)
            for variable_id in ids:
                yield variable_id
            if after is None:
                return

    @redis_bounded
    async def entries(self, variable_ids: Sequence[str]) -> list[int]:
        """The number of history entries appended to each variable (its last seq, ``meta``'s
        ``s``: entries held in Redis or moved to objects; 0 for none), in one round trip."""
        if not variable_ids:
            return []
        commands = [("HGET", keys.meta(keys.key_for(v)), "s") for v in variable_ids]
        return [int(seq or 0) for seq in await send_raw(self.redis, commands)]

    @redis_bounded
    async def describe(self, variable_ids: Sequence[str]) -> list[Variable]:
        """Each variable with its entries (as ``entries``) and its latest version as Redis holds
        it (the latest hash of the Redis backends), in one call of lua/variables.lua: no
        document is read. (On a Redis Cluster, the same reads sent to each key's node.)"""
        if not variable_ids:
            return []
        names: list[str] = []
        for variable_id in variable_ids:
            key = keys.key_for(variable_id)
            names += (keys.meta(key), keys.latest(key))
        if is_cluster(self.redis):
            # A script call takes one node's keys: the same reads, each sent to its node.
            commands: list[tuple[str, ...]] = []
            for meta, latest in zip(names[::2], names[1::2], strict=True):
                commands += (("HGET", meta, "s"), ("HMGET", latest, "v", "id"))
            replies = await send_raw(self.redis, commands)
            flat: list[Any] = []
            for seq, (version, stored_id) in zip(replies[::2], replies[1::2], strict=True):
                flat += (seq, version if stored_id is not None else None)
        else:
            # Packed by hiredis (send_raw): redis-py's packer costs more than Redis' answer.
            def send() -> Awaitable[list[Any]]:
                sha = self.scripts.shas["variables"]
                return send_raw(self.redis, [("EVALSHA", sha, len(names), *names)])

            [flat] = await self.scripts.reloading(self.redis, send)
        return [
            Variable(variable_id, int(version) if version else None, int(seq or 0), not version)
            for variable_id, seq, version in zip(variable_ids, flat[::2], flat[1::2], strict=True)
        ]

    # --- the write path ------------------------------------------------------------------------

    async def written(self, packets: Sequence[Packet], outcomes: Sequence[WriteOutcome]) -> None:
        """Index the variables of a written batch (``outcomes[i]`` is ``packets[i]``'s): those
        this process has not indexed yet, in one ``ZADD``. A first history entry (seq 1) of a
        variable it had indexed means Redis lost its data (the index with it): every id is
        sent again from then on."""
        known = self.known
        fresh = {p.key: p.variable_id for p in packets if p.key not in known}
        for packet, outcome in zip(packets, outcomes, strict=True):
            if outcome.seq == 1 and packet.key in known:
                log.warning("variable %r started anew: indexing every variable again", packet.key)
                known.clear()
                fresh = {p.key: p.variable_id for p in packets}
                break
        if fresh:
            await self.add(fresh)

    @redis_bounded
    async def add(self, variables: dict[str, str]) -> None:
        """Index variables, ``{key: id}``; an id of another namespace is only remembered."""
        ids = {vid for key, vid in variables.items() if key == keys.key_for(vid)}
        if ids:
            await self.redis.zadd(keys.VARIABLES, dict.fromkeys(ids, 0))
        if len(self.known) + len(variables) > MAX_KNOWN:
            self.known.clear()
        self.known.update(variables)

    # --- repairs -------------------------------------------------------------------------------

    @redis_bounded
    async def reindex(self) -> int:
        """Add every variable found in Redis (a ``SCAN`` of the metas of every primary) to the
        index; the number of ids found."""
        found = 0
        batch: list[str] = []
        async for name in self.redis.scan_iter(match=keys.META_PATTERN, count=SCAN_COUNT):
            batch.append(keys.key_of(name.decode() if isinstance(name, bytes) else name))
            if len(batch) == ADD_CHUNK:
                found += await self._reindex(batch)
                batch = []
        if batch:
            found += await self._reindex(batch)
        return found

    async def _reindex(self, variable_keys: list[str]) -> int:
        pipe = self.redis.pipeline(transaction=False)
        for key in variable_keys:
            pipe.hget(keys.meta(key), "id")
            pipe.hget(keys.latest(key), "id")
        replies = await pipe.execute()
        ids: set[str] = set()
        for key, meta_id, latest_id in zip(variable_keys, replies[::2], replies[1::2], strict=True):
            raw = meta_id or latest_id
            if raw is not None and keys.digest(_text(raw)) == key:  # main namespace only
                ids.add(_text(raw))
        if ids:
            await self.redis.zadd(keys.VARIABLES, dict.fromkeys(ids, 0))
        return len(ids)

    @redis_bounded
    async def ensure(self) -> int | None:
        """At start-up: reindex when the index key is missing while some variable exists; the
        number of ids found, or None when nothing was to be done."""
        if await self.redis.exists(keys.VARIABLES):
            return None
        async for _ in self.redis.scan_iter(match=keys.META_PATTERN, count=SCAN_COUNT):
            break
        else:
            return None
        log.info("the index of variables is missing: rebuilding it from Redis")
        found = await self.reindex()
        log.info("the index of variables holds %d variables again", found)
        return found


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
