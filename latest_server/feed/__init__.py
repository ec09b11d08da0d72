"""LiveFeed: Redis pub/sub, one connection per Redis node, fanned out locally.

Every history append is published (SPUBLISH, in the same Lua call that appends it) on the
variable's feed channel as ``"<epoch> <seq> <ts> <doc>"``. A process keeps one pub/sub
connection per node (one for a single Redis; one per primary of a Redis Cluster, each channel on
the node that owns its slot), subscribes a channel while at least one local listener wants it,
and hands each message to the listeners of its variable synchronously, in arrival order.
Listeners keep their own bounded queues (the websocket hub): the feed never waits for them.

Pub/sub is at most once: a message published while a connection is down is gone. After every
(re)subscription is confirmed the feed tells the channel's listeners (``confirmed``), and they
fill what they may have missed from the stores; a ``subscribe`` returns only once Redis confirmed
it, so a reader that subscribes and then reads the stores misses nothing in between.

On a cluster a channel leaves its node with its slot: the node answers MOVED to a subscribe sent
to the wrong node, pushes an ``sunsubscribe`` when the slot migrates or the node becomes a
replica (a failover), or its connection is lost (the node died). The feed resolves the owner
again from the cluster client's slot map and subscribes there; only the listeners of the
channels that moved get ``confirmed``.

The session events channel (plain SUBSCRIBE; the session scripts PUBLISH one JSON message per
change, which a cluster broadcasts to every node) rides on one of these connections for the
listeners of ``watch_sessions``, with the same ``confirmed`` after every (re)subscription: they
read the sessions' state again then. On a cluster it moves to another primary if its node is lost.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import MovedError, RedisClusterException, RedisError, ResponseError

from latest_server import keys
from latest_server.feed.link import (
    CLUSTER_RETRY_MAX,
    SSUBSCRIBE,
    SUBSCRIBE,
    SUNSUBSCRIBE,
    Channel,
    Link,
)
from latest_server.redis_client import CONNECTION_LOST, Client
from latest_server.redis_wire import ready

log = logging.getLogger(__name__)

MOVE_DELAY = 0.05  # seconds before a channel a node refused is subscribed again


class Listener(Protocol):
    def entry(self, epoch: int, seq: int, ts: int, doc: bytes) -> None:
        """A published entry; must not block."""

    def confirmed(self) -> None:
        """The channel was (re)subscribed: messages published before may have been missed."""


class SessionListener(Protocol):
    def session_event(self, payload: bytes) -> None:
        """One message of the session events channel (JSON); must not block."""

    def confirmed(self) -> None:
        """The events channel was (re)subscribed: messages published before may have been
        missed."""


class LiveFeed:
    def __init__(self, redis: Client) -> None:
        # Connections of its own, without redis-py's silent reconnects: the feed must know
        # that it reconnected, to subscribe and confirm every channel again. RESP2: pub/sub
        # messages are plain replies (redis-py 8 speaks RESP3 by default, where they are push
        # messages handled elsewhere). No read timeout: the feed may be quiet.
        self._overrides: dict[str, Any] = {
            "retry": Retry(NoBackoff(), 0),
            "socket_timeout": None,
            "protocol": 2,
        }
        self.cluster = redis if isinstance(redis, RedisCluster) else None
        self.clustered = self.cluster is not None
        self._links: dict[str, Link] = {}
        if isinstance(redis, Redis):
            pool = redis.connection_pool
            options = dict(pool.connection_kwargs, **self._overrides)
            self._single: Link | None = Link(self, "redis", options, pool.connection_class)
        else:
            self._single = None
        self.channels: dict[bytes, Channel] = {}
        self.events_name = keys.session_events().encode()
        self.events = Channel()
        self.closing = False
        self.reconnects = 0
        self._refreshing: asyncio.Task[None] | None = None

    async def subscribe(self, key: str, listener: Listener) -> None:
        """Add ``listener`` for variable ``key``; returns once Redis confirmed the channel."""
        name = keys.feed(key).encode()
        channel = self.channels.get(name)
        if channel is None:
            channel = self.channels[name] = Channel()
        channel.listeners.add(listener)
        if not channel.ready.is_set() and channel.pending == 0:
            await self._place(name, channel)
        await channel.ready.wait()

    def unsubscribe(self, key: str, listener: Listener) -> None:
        name = keys.feed(key).encode()
        channel = self.channels.get(name)
        if channel is None:
            return
        channel.listeners.discard(listener)
        if not channel.listeners:
            del self.channels[name]
            link = channel.link
            if link is None:
                return
            link.channels.discard(name)
            if link.conn is not None and link.connected.is_set():
                task = asyncio.ensure_future(link.send(SUNSUBSCRIBE, name, None))
                task.add_done_callback(_ignore_result)

    async def watch_sessions(self, listener: SessionListener) -> None:
        """Add ``listener`` for session events; returns once Redis confirmed the channel. The
        channel stays subscribed for the life of the feed (one channel for every session)."""
        channel = self.events
        channel.listeners.add(listener)
        if not channel.ready.is_set() and channel.pending == 0:
            if self.cluster is not None and channel.link is None:
                await ready(self.cluster)  # the slot map, loaded
            link = channel.link or self._route(self.events_name)
            channel.link = link
            link.events = True
            await link.send(SUBSCRIBE, self.events_name, channel)
        await channel.ready.wait()

    # --- routing ---------------------------------------------------------------------------

    def _route(self, name: bytes) -> Link:
        """The link to the node that serves channel ``name`` now (by the client's slot map)."""
        if self._single is not None:
            return self._single
        assert self.cluster is not None
        try:
            node = self.cluster.get_node_from_key(name.decode())
        except (RedisError, RedisClusterException):  # not covered now: its last node again
            channel = self.channels.get(name)
            if channel is not None and channel.link is not None:
                return channel.link
            node = self.cluster.get_random_node()
        assert node is not None
        return self._link_to(node)

    def _link_to(self, node: Any) -> Link:
        link = self._links.get(node.name)
        if link is None:
            options = dict(node.connection_kwargs, **self._overrides)
            link = self._links[node.name] = Link(self, node.name, options, node.connection_class)
        return link

    async def _place(self, name: bytes, channel: Channel) -> None:
        """Subscribe ``name`` on the node that serves it, leaving the one it was on."""
        if self.cluster is not None:
            await ready(self.cluster)  # the slot map, loaded
        link = self._route(name)
        if channel.link is not link:
            if channel.link is not None:
                channel.link.channels.discard(name)
            channel.lost()
            channel.link = link
        link.channels.add(name)
        await link.send(SSUBSCRIBE, name, channel)

    async def _refresh(self) -> None:
        """The cluster client's slot map read again; concurrent callers share one read."""
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.ensure_future(self._read_slots())
        await asyncio.shield(self._refreshing)

    async def _read_slots(self) -> None:
        assert self.cluster is not None
        try:
            await self.cluster.nodes_manager.initialize()
        except (
            RedisError,
            RedisClusterException,
            *CONNECTION_LOST,
        ) as exc:  # the old map is kept; tried again later
            log.info("live feed: the cluster's slot map could not be read (%s)", exc)

    async def moved_away(self, link: Link) -> bool:
        """After ``link`` lost its node: every channel on it goes where its slot is served now,
        the events channel to another primary. True if nothing is left on it (it ends)."""
        await self._refresh()
        for name in list(link.channels):
            channel = self.channels.get(name)
            if channel is None or channel.link is not link:
                link.channels.discard(name)
            elif self._route(name) is not link:
                await self._place(name, channel)
        if link.events:
            assert self.cluster is not None
            others = [n for n in self.cluster.get_primaries() if n.name != link.name]
            if others:
                link.events = False
                self.events.lost()
                self.events.link = target = self._link_to(others[0])
                target.events = True
                await target.send(SUBSCRIBE, self.events_name, self.events)
        if link.channels or link.events:
            return False
        if self._links.get(link.name) is link:
            del self._links[link.name]
        link.task = None
        return True

    async def _move(
        self, names: list[bytes], error: BaseException | None, delay: float = MOVE_DELAY
    ) -> None:
        """Channels whose node refused them or let them go: subscribed where they are served
        (tried again, less often, while the cluster cannot say where)."""
        await asyncio.sleep(delay)
        try:
            if isinstance(error, MovedError) and self.cluster is not None:
                await self.cluster.nodes_manager.move_slot(error)
            elif self.cluster is not None:
                await self._refresh()
            for name in names:
                channel = self.channels.get(name)
                if channel is not None and channel.pending == 0 and not channel.ready.is_set():
                    await self._place(name, channel)
        except (RedisError, RedisClusterException, *CONNECTION_LOST) as exc:
            log.warning("live feed: channels not placed yet (%s); trying again", exc)
            if not self.closing:
                self._moving(names, None, min(delay * 2, CLUSTER_RETRY_MAX))

    def _moving(
        self, names: list[bytes], error: BaseException | None = None, delay: float = MOVE_DELAY
    ) -> None:
        task = asyncio.ensure_future(self._move(names, error, delay))
        task.add_done_callback(_ignore_result)

    # --- reading ---------------------------------------------------------------------------

    async def read(self, link: Link, conn: AbstractConnection) -> None:
        channels = self.channels
        sent = link.sent
        while True:
            try:
                reply = await conn.read_response(disconnect_on_error=True)
            except ResponseError as exc:  # the answer to the oldest command sent
                self._refused(link, exc)
                continue
            if not isinstance(reply, list) or len(reply) < 3:
                continue
            kind = reply[0]
            if kind == b"smessage":
                channel = channels.get(reply[1])
                if channel is None or not channel.ready.is_set():
                    continue  # not confirmed yet: the subscriber reads the stores after this
                epoch, seq, ts, doc = reply[2].split(b" ", 3)
                e, s, t = int(epoch), int(seq), int(ts)
                for listener in list(channel.listeners):
                    listener.entry(e, s, t, doc)
            elif kind == b"message" and reply[1] == self.events_name:
                if self.events.ready.is_set():
                    for listener in list(self.events.listeners):
                        listener.session_event(reply[2])
            elif kind in (SSUBSCRIBE, SUBSCRIBE):
                if sent and sent[0] == (kind, reply[1]):
                    sent.popleft()
                channel = self.events if kind == SUBSCRIBE else channels.get(reply[1])
                if channel is not None and channel.link is link:
                    self._confirm(channel)
            elif kind == SUNSUBSCRIBE:
                if sent and sent[0] == (kind, reply[1]):
                    sent.popleft()  # ours
                    continue
                channel = channels.get(reply[1])  # pushed: the slot left this node
                if channel is not None and channel.link is link:
                    channel.lost()
                    self._moving([reply[1]])

    def _confirm(self, channel: Channel) -> None:
        channel.pending = max(channel.pending - 1, 0)
        if channel.pending == 0 and not channel.ready.is_set():
            channel.ready.set()
            for listener in list(channel.listeners):
                listener.confirmed()

    def _refused(self, link: Link, exc: ResponseError) -> None:
        """An error reply: the node refused the oldest command sent (MOVED: another node serves
        the channel's slot; TRYAGAIN, CLUSTERDOWN: not now). Sent again where it is served."""
        if not link.sent:
            log.warning("live feed: unexpected error reply from %s: %s", link.name, exc)
            return
        kind, name = link.sent.popleft()
        if kind == SUNSUBSCRIBE:
            return  # the channel is not subscribed there
        channel = self.events if kind == SUBSCRIBE else self.channels.get(name)
        if channel is None or channel.link is not link:
            return
        if not isinstance(exc, MovedError):
            log.warning("live feed: %s refused %s %s: %s", link.name, kind, name, exc)
        channel.pending = max(channel.pending - 1, 0)
        if channel.pending == 0:
            if kind == SUBSCRIBE:
                task = asyncio.ensure_future(self._resubscribe_events(link))
                task.add_done_callback(_ignore_result)
            else:
                self._moving([name], exc)

    async def _resubscribe_events(self, link: Link) -> None:
        await asyncio.sleep(MOVE_DELAY)
        if self.events.link is link and not self.events.ready.is_set():
            await link.send(SUBSCRIBE, self.events_name, self.events)

    async def close(self) -> None:
        self.closing = True
        links = [*self._links.values(), *([self._single] if self._single else [])]
        for link in links:
            await link.close()


def _ignore_result(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()
