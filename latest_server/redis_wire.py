"""Commands sent by hand on a connection: to one Redis, or to the nodes of a Redis Cluster.

A ``Client`` is either redis-py client: ``Redis`` (one server) or ``RedisCluster``. Most code
uses the commands both share and does not care which it holds; what a cluster changes is here:
which node serves a key (``node_of``, from the client's slot map), commands grouped by node and
sent to each node's connection concurrently (``send_raw``, ``NodeWriter``), and the error
replies that mean the slot map is out of date (``slot_moved``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import Any, TypeVar

import hiredis
from redis.asyncio import Redis, RedisCluster
from redis.asyncio.cluster import ClusterNode
from redis.crc import key_slot
from redis.exceptions import (
    AskError,
    MovedError,
    ReadOnlyError,
    RedisClusterUnreachableError,
    ResponseError,
    SlotNotCoveredError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

T = TypeVar("T")
Client = Redis | RedisCluster
# Redis could not be reached, or went away mid-command (redis-py wraps socket errors in these);
# no node of a cluster could be reached, or a slot has no primary for now (during a failover).
REDIS_DOWN = (
    RedisConnectionError,
    RedisTimeoutError,
    RedisClusterUnreachableError,
    SlotNotCoveredError,
)
# A connection lost wherever it is used, also by code that holds one of its own (the live feed's
# pub/sub connection) and may meet the socket's own errors.
CONNECTION_LOST = (*REDIS_DOWN, OSError)
# A script that names its keys in ARGV (numkeys 0, so that one call may touch several slots of a
# node) meets a slot that moved as this error, not as MOVED.
NON_LOCAL = "Script attempted to access a non local key"
# What a script's command meets on a node that sees the cluster down (during a failover).
SCRIPT_CLUSTER_DOWN = "while the cluster is down"


def is_cluster(client: Client) -> bool:
    return isinstance(client, RedisCluster)


def slot_moved(exc: BaseException) -> bool:
    """An error reply that means the slot map is out of date: MOVED or ASK, a key the node no
    longer serves, or a write to a node that is a replica now (its primary failed over)."""
    if isinstance(exc, (AskError, ReadOnlyError)):  # MovedError is an AskError
        return True
    return isinstance(exc, ResponseError) and NON_LOCAL in str(exc)


@functools.lru_cache(maxsize=65_536)
def slot_of(name: str) -> int:
    """The cluster slot of a key (its hash tag's when it has one)."""
    return int(key_slot(name.encode()))


@functools.lru_cache(maxsize=65_536)
def tag_slot(tag: str) -> int:
    """The slot of every key whose hash tag is ``tag`` (``lv:{tag}:…``): ``slot_of`` without
    building a key name, for the write path."""
    return int(key_slot(tag.encode()))


async def ready(client: RedisCluster) -> RedisCluster:
    """``client`` with its slot map loaded (once; again after a refresh was asked for)."""
    return await client.initialize()


def node_of(client: RedisCluster, name: str) -> ClusterNode:
    """The primary serving key ``name``, by the client's slot map (``ready`` first)."""
    return client.nodes_manager.get_node_from_slot(slot_of(name))


def node_name(client: Client, name: str) -> str:
    """The name (``host:port``) of the primary serving key ``name``; ``""`` for one Redis."""
    return node_of(client, name).name if isinstance(client, RedisCluster) else ""


async def refresh(client: RedisCluster, exc: BaseException | None = None) -> None:
    """Correct the slot map after ``exc``. A MOVED names the slot's new node. A key that is not
    local, or a write to a node that is a replica now, say only that the map is wrong: it is read
    again now (CLUSTER SLOTS). After a lost connection (or with no ``exc``), it is asked for, and
    read at the next ``ready`` once redis-py allows (at most once a second: a node that is down
    must not make every command read the map). redis-py's own commands do this themselves;
    hand-sent ones do it here."""
    if isinstance(exc, MovedError):
        await client.nodes_manager.move_slot(exc)
    elif exc is not None and slot_moved(exc):
        await client.nodes_manager.initialize()
    else:
        client._request_refresh()


def connection_options(client: Client) -> tuple[Any, dict[str, Any]]:
    """The class and the options of ``client``'s connections, for a connection of one's own
    (the live feed's); on a cluster, those of its first node."""
    if isinstance(client, RedisCluster):
        node = client.startup_nodes[0]
        return node.connection_class, dict(node.connection_kwargs)
    pool = client.connection_pool
    return pool.connection_class, dict(pool.connection_kwargs)


@contextlib.asynccontextmanager
async def connection(target: Redis | ClusterNode) -> AsyncIterator[Any]:
    """A connection of ``target``'s pool for hand-sent commands. An error reply or a lost
    connection leaves replies unread: the connection is then closed, never reused."""
    if isinstance(target, ClusterNode):
        node_conn: Any = target.acquire_connection()
        try:
            yield node_conn
        except BaseException:
            await node_conn.disconnect()
            raise
        finally:
            target.release(node_conn)
        return
    pool = target.connection_pool
    conn = await pool.get_connection()  # type: ignore[no-untyped-call]
    try:
        yield conn
    except BaseException:
        await conn.disconnect()
        raise
    finally:
        await pool.release(conn)


async def write(conn: Any, data: bytes) -> None:
    """Send packed commands. uvloop refuses a write to a transport Redis has already closed
    with a RuntimeError, which redis-py passes on: it is a lost connection like any other
    (a batch sent in several writes meets it when Redis goes away between two of them)."""
    try:
        await conn.send_packed_command(data)
    except RuntimeError as exc:
        raise RedisConnectionError(f"Redis closed the connection: {exc}") from exc


async def send_raw(client: Client, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
    """Replies to ``commands``, sent in one round trip, as Redis gave them. Commands are packed
    by hiredis (C) and replies skip redis-py's callbacks: on hot paths (a history read, the
    websocket tail probe) redis-py's packing and reply parsing cost more than Redis answering.
    An error reply raises.

    On a cluster, each command goes to the node serving its key (``commands[i][1]``; a
    ``MULTI`` … ``EXEC`` block to the node of its first command's key, so its keys must share a
    slot), each node's commands in one round trip, all nodes at once.

    Only reads are sent this way (writes go through ``NodeWriter`` or ``send_each``), so a
    connection that breaks under them (a pooled one that Redis closed when it restarted), or a
    slot that moved, is given up and they are sent once more."""
    if isinstance(client, RedisCluster):
        try:
            return await _send_routed(await ready(client), commands)
        except (*REDIS_DOWN, AskError) as exc:
            if isinstance(exc, ResponseError) and not slot_moved(exc):
                raise
            await refresh(client, exc)
            return await _send_routed(await ready(client), commands)
    packed = b"".join(map(hiredis.pack_command, commands))
    try:
        return await _send_packed(client, packed, len(commands))
    except REDIS_DOWN:
        return await _send_packed(client, packed, len(commands))


async def send_node(target: Redis | ClusterNode, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
    """``commands`` to one server (a cluster's node), in one round trip; an error reply raises."""
    return await _send_packed(target, b"".join(map(hiredis.pack_command, commands)), len(commands))


async def _send_packed(target: Redis | ClusterNode, packed: bytes, count: int) -> list[Any]:
    async with connection(target) as conn:
        await write(conn, packed)
        return [await conn.read_response() for _ in range(count)]


async def _send_routed(client: RedisCluster, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
    """``commands`` grouped by node, the replies put back in their order."""
    groups: dict[ClusterNode, list[int]] = {}
    index = 0
    while index < len(commands):
        first = index
        if commands[index][0] == "MULTI":
            while commands[index][0] != "EXEC":
                index += 1
            keyed = commands[first + 1]
        else:
            keyed = commands[index]
        index += 1
        node = node_of(client, keyed[1]) if len(keyed) > 1 else client.get_default_node()
        groups.setdefault(node, []).extend(range(first, index))
    if len(groups) == 1:
        ((node, _),) = groups.items()
        packed = b"".join(map(hiredis.pack_command, commands))
        return await _send_packed(node, packed, len(commands))
    replies: list[Any] = [None] * len(commands)

    async def send(node: ClusterNode, indexes: list[int]) -> None:
        packed = b"".join(hiredis.pack_command(commands[i]) for i in indexes)
        for i, reply in zip(indexes, await _send_packed(node, packed, len(indexes)), strict=True):
            replies[i] = reply

    await asyncio.gather(*(send(node, indexes) for node, indexes in groups.items()))
    return replies


async def send_each(
    redis: Redis, commands: Iterable[bytes], convert: Callable[[Any], T]
) -> list[T]:
    """``send_raw`` for a long batch built as it goes, of commands already packed (RESP): each is
    written as soon as ``commands`` yields it, so Redis runs one while the caller builds the next
    (a write path batch: parsing and packing overlap the scripts). Replies are read once every
    command is sent, in order on the one connection, each passed through ``convert`` as it
    arrives, while Redis still runs the later ones."""
    async with connection(redis) as conn:
        sent = 0
        for command in commands:
            await write(conn, command)
            sent += 1
        return [convert(await conn.read_response()) for _ in range(sent)]


class NodeWriter:
    """``send_each`` for the nodes of a cluster: a connection per node a batch writes to, each
    command written to its node's connection as soon as it is packed; then every node's replies
    read at once, each node's in order. An error reply is kept in its place (``replies``), not
    raised, so that the other replies are still read and used: the caller resends what a moved
    slot or a node without the script refused."""

    def __init__(self) -> None:
        self._stack = contextlib.AsyncExitStack()
        self._connections: dict[ClusterNode, Any] = {}
        self.sent: dict[ClusterNode, int] = {}

    async def __aenter__(self) -> NodeWriter:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        # With the error, if any: a connection left with replies unread is closed, not reused.
        await self._stack.__aexit__(*exc)

    async def send(self, node: ClusterNode, command: bytes) -> None:
        conn = self._connections.get(node)
        if conn is None:
            conn = self._connections[node] = await self._stack.enter_async_context(connection(node))
            self.sent[node] = 0
        await write(conn, command)
        self.sent[node] += 1

    async def replies(
        self, convert: Callable[[Any], T]
    ) -> dict[ClusterNode, list[T | ResponseError]]:
        async def read(node: ClusterNode) -> list[T | ResponseError]:
            conn = self._connections[node]
            found: list[T | ResponseError] = []
            for _ in range(self.sent[node]):
                try:
                    found.append(convert(await conn.read_response()))
                except ResponseError as exc:  # read whole: the connection stays in step
                    found.append(exc)
            return found

        nodes = list(self._connections)
        answers = await asyncio.gather(*(read(node) for node in nodes), return_exceptions=True)
        for answer in answers:  # every node read (or failed) before the first error is raised
            if isinstance(answer, BaseException):
                raise answer
        return dict(zip(nodes, answers, strict=True))  # type: ignore[arg-type]
