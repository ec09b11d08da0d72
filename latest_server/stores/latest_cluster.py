"""LatestStore on a Redis Cluster: a batch grouped by node, each node's write.lua calls pipelined
on a connection of its own, every node at once, the outcomes put back in the batch's order.

One call of write.lua may touch only one node. It carries the packets of many slots of that
node (``allow-cross-slot-keys``, the keys passed after the arguments: Redis wants declared keys
in one slot), so a batch costs as many calls per node as on one Redis; grouping by slot instead
(``cross_slot=False``, the keys declared) makes nearly one call per packet, as variables rarely
share a slot: see bench/cluster_write.py for both.

A slot that moved (MOVED, a key no longer local, a primary that became a replica) and a node
without the script (a replica promoted: scripts are not replicated) answer only their calls: the
slot map is corrected, the script loaded, and those calls' packets sent again; the write is
idempotent (dedup by ``(ts, digest)`` and compare-and-set), so a packet that a call wrote before
it met the moved slot is found as a redelivery. CLUSTERDOWN, TRYAGAIN and a node out of reach
are unavailability (``redis_bounded``): the edges retry the batch, as on one Redis.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from redis.asyncio import RedisCluster
from redis.asyncio.cluster import ClusterNode
from redis.exceptions import NoScriptError, ResponseError

from latest_server import keys
from latest_server.errors import StoreRefused
from latest_server.packets import Packet
from latest_server.redis_client import REDIS_DOWN, Scripts, redis_bounded, store_error
from latest_server.redis_wire import NodeWriter, node_of, ready, refresh, slot_moved, slot_of
from latest_server.stores.base import WriteOutcome
from latest_server.stores.latest_redis import (
    FIRST_CHUNK,
    WRITE_CHUNK,
    RedisLatestStore,
    _outcomes,
)

RESENDS = 4  # passes of a batch's refused calls before it is given up (the edge retries it)
RESEND_PAUSE = 0.05  # seconds before the first resend, doubled each time
Item = tuple[int, Packet]  # a packet and its place in the batch


class ClusterLatestStore(RedisLatestStore):
    redis: RedisCluster

    def __init__(
        self,
        redis: RedisCluster,
        scripts: Scripts,
        *,
        version_type: str = "external",
        cross_slot: bool = True,
    ) -> None:
        super().__init__(redis, scripts, version_type=version_type)
        self.cross_slot = cross_slot

    @redis_bounded
    async def write_batch(self, packets: Iterable[Packet]) -> list[WriteOutcome]:
        """``packets`` may be built lazily (a generator): each call is sent to its node as soon
        as it is packed."""
        outcomes: dict[int, WriteOutcome] = {}
        pending = await self._pass(enumerate(packets), outcomes)
        pause = RESEND_PAUSE
        for attempt in range(RESENDS + 1):
            if attempt:
                pending = await self._pass(pending, outcomes)
            if not pending:
                return [outcomes[index] for index in range(len(outcomes))]
            if attempt:
                await asyncio.sleep(pause)
                pause *= 2
        raise StoreRefused(
            "TRYAGAIN", f"Redis Cluster kept moving the slots of {len(pending)} packets"
        )

    async def _pass(self, items: Iterable[Item], outcomes: dict[int, WriteOutcome]) -> list[Item]:
        """Send ``items`` grouped by node, put their outcomes in ``outcomes``; the items of the
        calls to send again, in batch order."""
        client = await ready(self.redis)
        sent: dict[ClusterNode, list[list[Item]]] = {}
        try:
            async with NodeWriter() as writer:
                await self._send(client, writer, items, sent)
                replies = await writer.replies(_outcomes)
        except REDIS_DOWN:
            await refresh(client)  # a primary may have failed over: the edge's retry finds it
            raise
        again: list[Item] = []
        for node, calls in sent.items():
            for call, reply in zip(calls, replies[node], strict=True):
                if not isinstance(reply, ResponseError):
                    for (index, _), outcome in zip(call, reply, strict=True):
                        outcomes[index] = outcome
                    continue
                if isinstance(reply, NoScriptError):
                    await self.scripts.load_on(node)
                elif slot_moved(reply):
                    await refresh(client, reply)
                else:
                    raise store_error(reply) or reply
                again += call
        return sorted(again, key=lambda item: item[0])

    async def _send(
        self,
        client: RedisCluster,
        writer: NodeWriter,
        items: Iterable[Item],
        sent: dict[ClusterNode, list[list[Item]]],
    ) -> None:
        """Each node's (or slot's) packets in calls of FIRST_CHUNK growing to WRITE_CHUNK, each
        call written to its node as soon as it is full, the rest at the end."""
        sha = self.scripts.shas["write"]
        open_calls: dict[Any, tuple[ClusterNode, list[Item]]] = {}
        sizes: dict[Any, int] = {}
        for item in items:
            name = keys.latest(item[1].key)
            node = node_of(client, name)
            group: Any = node if self.cross_slot else slot_of(name)
            call = open_calls.get(group)
            if call is None:
                call = open_calls[group] = (node, [])
            call[1].append(item)
            size = sizes.get(group, FIRST_CHUNK)
            if len(call[1]) == size:
                await self._write(writer, sha, *call, sent)
                del open_calls[group]
                sizes[group] = min(size * 3 // 2, WRITE_CHUNK)
        for node, call_items in open_calls.values():
            await self._write(writer, sha, node, call_items, sent)

    async def _write(
        self,
        writer: NodeWriter,
        sha: str,
        node: ClusterNode,
        call: list[Item],
        sent: dict[ClusterNode, list[list[Item]]],
    ) -> None:
        packets = [packet for _, packet in call]
        await writer.send(node, self._command(sha, self.gte, packets, undeclared=self.cross_slot))
        sent.setdefault(node, []).append(call)
