"""One pub/sub connection of the live feed to one Redis node, and the channels routed to it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Protocol

from redis.asyncio.connection import AbstractConnection

from latest_server.redis_client import CONNECTION_LOST

log = logging.getLogger("latest_server.feed")

RETRY_MAX = 5.0  # seconds between reconnects to a single Redis, at most
CLUSTER_RETRY_MAX = 1.0  # the same on a cluster, where a failover takes a few seconds
SSUBSCRIBE, SUNSUBSCRIBE, SUBSCRIBE = b"ssubscribe", b"sunsubscribe", b"subscribe"


class Owner(Protocol):
    """What a link needs of its feed."""

    channels: dict[bytes, Channel]
    events: Channel
    events_name: bytes
    closing: bool
    clustered: bool
    reconnects: int

    async def read(self, link: Link, conn: AbstractConnection) -> None:
        """Hand every reply of ``conn`` to its channel, until the connection is lost."""

    async def moved_away(self, link: Link) -> bool:
        """``link`` lost its node: its channels go where they are served now. True if nothing
        is left on it (it ends)."""


@dataclass(eq=False)
class Channel:
    listeners: set[Any] = field(default_factory=set)  # Listener, or SessionListener
    pending: int = 0  # subscribe commands sent on ``link`` and not yet confirmed
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    link: Link | None = None  # the connection it is subscribed on, or will be

    def lost(self) -> None:
        """Its subscription is gone (a lost connection, a moved slot): not ready until the next
        one is confirmed."""
        self.pending = 0
        self.ready.clear()


class Link:
    """One pub/sub connection to one node, and the channels routed to it."""

    def __init__(self, feed: Owner, name: str, options: dict[str, Any], connection: Any) -> None:
        self.feed = feed
        self.name = name  # "host:port"
        self._connect: Any = lambda: connection(**options)
        self.channels: set[bytes] = set()
        self.events = False  # carries the session events channel
        self.conn: AbstractConnection | None = None
        self.connected = asyncio.Event()
        # Commands sent and not yet answered, in order: Redis answers them in order, so an
        # error reply (MOVED) belongs to the first, and an sunsubscribe that answers none was
        # pushed by the server (the slot left the node).
        self.sent: deque[tuple[bytes, bytes]] = deque()
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.task is None:
            self.task = asyncio.create_task(self._run(), name=f"live-feed {self.name}")

    async def send(self, kind: bytes, name: bytes, channel: Channel | None) -> None:
        """Send ``kind`` for ``name`` if connected (else the next connection sends it)."""
        conn = self.conn
        if self.feed.closing:
            return
        if conn is None or not self.connected.is_set():
            self.start()
            return
        if channel is not None:
            channel.pending += 1
        self.sent.append((kind, name))
        try:
            await conn.send_command(kind.decode(), name)
        except CONNECTION_LOST:
            if channel is not None:  # the reader's reconnect subscribes every channel again
                channel.pending = max(channel.pending - 1, 0)

    async def _run(self) -> None:
        feed = self.feed
        delay = 0.05
        cap = CLUSTER_RETRY_MAX if feed.clustered else RETRY_MAX
        while not feed.closing:
            conn = self._connect()
            try:
                await conn.connect()  # type: ignore[no-untyped-call]
                self.conn = conn
                self.sent.clear()
                self.connected.set()
                for name in list(self.channels):
                    channel = feed.channels.get(name)
                    if channel is not None and channel.link is self:
                        await self.send(SSUBSCRIBE, name, channel)
                if self.events:
                    await self.send(SUBSCRIBE, feed.events_name, feed.events)
                delay = 0.05
                await feed.read(self, conn)
            except CONNECTION_LOST as exc:
                if feed.closing:
                    break
                feed.reconnects += 1
                log.warning(
                    "live feed connection to %s lost (%s); reconnecting in %.2fs",
                    self.name,
                    exc,
                    delay,
                )
            finally:
                self.connected.clear()
                self.conn = None
                for name in self.channels:
                    channel = feed.channels.get(name)
                    if channel is not None and channel.link is self:
                        channel.lost()
                if self.events:
                    feed.events.lost()
                with contextlib.suppress(Exception):
                    await conn.disconnect()
            if feed.closing:
                break
            await asyncio.sleep(delay)
            delay = min(delay * 2, cap)
            if feed.clustered:
                try:
                    if await feed.moved_away(self):
                        return
                except Exception as exc:  # the cluster cannot say where now: try again
                    log.warning("live feed: the channels of %s stay for now (%s)", self.name, exc)

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        self.task = None
