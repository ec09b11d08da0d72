"""LatestStore on a Redis Cluster: a batch grouped by node, each node's write.lua calls pipelined
on a connection of its own, every node at once, the outcomes put back in the batch's order.

One call of write.lua may touch only one node. It carries the packets of many slots of that
node (``allow-cross-slot-keys``, the keys passed after the arguments: Redis wants declared keys
in one slot), so a batch costs as many calls per node as on one Redis; grouping by slot instead
(``cross_slot=False``, the keys declared) makes nearly one call per packet, as variables rarely
share a slot: see bench/cluster_write.py for both.

A slot that moved (MOVED, a key no longer local, a primary that became a replica) and a node
without the script (a replica promoted: scripts are not replicated) refuse only their packets,
before writing them: the slot map is corrected, the script loaded, and those packets sent again.
All of a variable's packets share its slot, so they are all refused or none: its packets keep
their order, and each is written once. CLUSTERDOWN, TRYAGAIN and a node out of reach are
unavailability (``redis_bounded``): the edges retry the batch, as on one Redis (whose packets
the other nodes took are then found as redeliveries: the write is idempotent).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from redis.asyncio import RedisCluster
from redis.asyncio.cluster import ClusterNode
from redis.exceptions import MovedError, NoScriptError, ResponseError

from latest_server.errors import StoreRefused
from latest_server.packets import Packet
from latest_server.redis_client import REDIS_DOWN, Scripts, redis_bounded, store_error
from latest_server.redis_wire import (
    SCRIPT_CLUSTER_DOWN,
    NodeWriter,
    ready,
    refresh,
    slot_moved,
    tag_slot,
)
from latest_server.stores.base import WriteOutcome
from latest_server.stores.latest_redis import (
    FIRST_CHUNK,
    WRITE_CHUNK,
    RedisLatestStore,
)

RESENDS = 6  # passes of a batch's refused packets before it is given up (the edge retries it)
RESEND_PAUSE = 0.05  # seconds before the second resend, doubled each time: 1.55 s in all, past
# redis-py's least interval between two refreshes of the slot map (1 s)
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
        self.resent = 0  # packets sent again to another node (or after loading the scripts)
        self.down = False  # the last packet refused was refused by a cluster that is down

    @redis_bounded
    async def write_batch(self, packets: Iterable[Packet]) -> list[WriteOutcome]:
        """``packets`` may be built lazily (a generator): each call is sent to its node as soon
        as it is packed."""
        outcomes: dict[int, WriteOutcome] = {}
        pending = await self._pass(enumerate(packets), outcomes)
        pause = RESEND_PAUSE
        for attempt in range(RESENDS):
            if not pending:
                return [outcomes[index] for index in range(len(outcomes))]
            if attempt:  # the first resend at once: the slot map was just corrected
                await asyncio.sleep(pause)
                pause *= 2
            pending = await self._pass(pending, outcomes)
        if not pending:
            return [outcomes[index] for index in range(len(outcomes))]
        down = self.down
        raise StoreRefused(
            "CLUSTERDOWN" if down else "TRYAGAIN",
            f"Redis Cluster {'was down' if down else 'kept moving slots'} for {len(pending)} "
            "packets of the batch",
        )

    async def _pass(self, items: Iterable[Item], outcomes: dict[int, WriteOutcome]) -> list[Item]:
        """Send ``items`` grouped by node, put their outcomes in ``outcomes``; the items of the
        calls to send again, in batch order."""
        client = await ready(self.redis)
        sent: dict[ClusterNode, list[list[Item]]] = {}
        try:
            async with NodeWriter() as writer:
                await self._send(client, writer, items, sent)
                if self.replicas.count:  # LATEST_REDIS_WAIT_REPLICAS: after each node's calls
                    for node in list(sent):
                        await writer.send(node, self.replicas.command())
                replies = await writer.replies(_replies)
        except REDIS_DOWN:
            await refresh(client)  # a primary may have failed over: the edge's retry finds it
            raise
        again: list[Item] = []
        moved: list[ResponseError] = []
        for node, calls in sent.items():
            loaded = False
            if self.replicas.count:
                self.replicas.check(replies[node].pop())
            for call, reply in zip(calls, replies[node], strict=True):
                if isinstance(reply, ResponseError):
                    if isinstance(reply, NoScriptError):
                        if not loaded:  # once for all of that node's calls
                            await self.scripts.load_on(node)
                            loaded = True
                    elif slot_moved(reply):
                        moved.append(reply)
                    else:
                        raise store_error(reply) or reply
                    again += call
                    continue
                for item, outcome in zip(call, reply, strict=True):
                    if isinstance(outcome, WriteOutcome):
                        outcomes[item[0]] = outcome
                    else:  # a packet of a slot that moved, or of a cluster down: not written
                        moved.append(ResponseError(outcome))
                        again.append(item)
                        self.down = SCRIPT_CLUSTER_DOWN in outcome
        for exc in moved:  # MOVED corrects one slot; the others read the map once, then stop
            await refresh(client, exc)
            if not isinstance(exc, MovedError):
                break
        self.resent += len(again)
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
        slots = client.nodes_manager.slots_cache  # a slot's primary first (node_of, inlined)
        by_node = self.cross_slot
        open_calls: dict[Any, tuple[ClusterNode, list[Item]]] = {}
        sizes: dict[Any, int] = {}
        for item in items:
            slot = tag_slot(item[1].key)  # every key of a variable is lv:{key}:…
            node = slots[slot][0]
            group: Any = node if by_node else slot
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


def _replies(reply: Any) -> Any:
    """A write.lua call's reply (``_node_outcomes``), or WAIT's (a number of replicas)."""
    return reply if isinstance(reply, int) else _node_outcomes(reply)


def _node_outcomes(replies: list[Any]) -> list[WriteOutcome | str]:
    """write.lua's reply to a call without declared keys: per packet its outcome, or the text
    of the error that kept it out (a key of a slot its node does not serve)."""
    return [
        r.decode()
        if isinstance(r, bytes)
        else WriteOutcome(
            bool(r[0]), int(r[1]), int(r[2]), int(r[3]) if r[3] else None, bool(r[4]), int(r[5])
        )
        for r in replies
    ]
