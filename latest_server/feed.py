"""LiveFeed: one Redis pub/sub connection per process, fanned out locally.

Every history append is published (SPUBLISH, in the same Lua call that appends it) on the
variable's feed channel as ``"<epoch> <seq> <ts> <doc>"``. A process keeps one pub/sub
connection, subscribes a channel while at least one local listener wants it, and hands each
message to the listeners of its variable synchronously, in arrival order. Listeners keep their
own bounded queues (the websocket hub): the feed never waits for a consumer.

Pub/sub is at most once: a message published while the connection is down is gone. After every
(re)subscription is confirmed the feed tells the listeners (``confirmed``), and they fill what
they may have missed from the stores; a ``subscribe`` returns only once Redis confirmed it, so a
reader that subscribes and then reads the stores misses nothing in between.

The same connection carries the session events channel (plain SUBSCRIBE; the session scripts
PUBLISH one JSON message per change) for the listeners of ``watch_sessions``, with the same
``confirmed`` call after every (re)subscription: they read the sessions' state again then.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any, Protocol

from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from latest_server import keys
from latest_server.redis_client import CONNECTION_LOST, Client, connection_options

log = logging.getLogger(__name__)

RETRY_MAX = 5.0


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


@dataclass
class _Channel:
    listeners: set[Any] = field(default_factory=set)  # Listener, or SessionListener
    pending: int = 0  # SSUBSCRIBE commands not yet confirmed
    ready: asyncio.Event = field(default_factory=asyncio.Event)


class LiveFeed:
    def __init__(self, redis: Client) -> None:
        # A connection of its own, without redis-py's silent reconnects: the feed must know
        # that it reconnected, to subscribe and confirm every channel again.
        connection_class, connection_kwargs = connection_options(redis)
        # RESP2: pub/sub messages are plain replies (redis-py 8 speaks RESP3 by default, where
        # they are push messages handled elsewhere). No read timeout: the feed may be quiet.
        options = dict(
            connection_kwargs,
            retry=Retry(NoBackoff(), 0),
            socket_timeout=None,
            protocol=2,
        )
        self._connect: Any = lambda: connection_class(**options)
        self._channels: dict[bytes, _Channel] = {}
        self._events_name = keys.session_events().encode()
        self._events = _Channel()
        self._conn: AbstractConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self._closing = False
        self.reconnects = 0

    async def subscribe(self, key: str, listener: Listener) -> None:
        """Add ``listener`` for variable ``key``; returns once Redis confirmed the channel."""
        name = keys.feed(key).encode()
        channel = self._channels.get(name)
        if channel is None:
            channel = self._channels[name] = _Channel()
        channel.listeners.add(listener)
        if not channel.ready.is_set() and channel.pending == 0:
            await self._send_subscribe(name, channel)
        await channel.ready.wait()

    def unsubscribe(self, key: str, listener: Listener) -> None:
        name = keys.feed(key).encode()
        channel = self._channels.get(name)
        if channel is None:
            return
        channel.listeners.discard(listener)
        if not channel.listeners:
            del self._channels[name]
            if self._conn is not None and self._connected.is_set():
                task = asyncio.ensure_future(self._conn.send_command("SUNSUBSCRIBE", name))
                task.add_done_callback(_ignore_result)

    async def watch_sessions(self, listener: SessionListener) -> None:
        """Add ``listener`` for session events; returns once Redis confirmed the channel. The
        channel stays subscribed for the life of the feed (one channel for every session)."""
        channel = self._events
        channel.listeners.add(listener)
        if not channel.ready.is_set() and channel.pending == 0:
            await self._send_subscribe(self._events_name, channel, "SUBSCRIBE")
        await channel.ready.wait()

    async def _send_subscribe(
        self, name: bytes, channel: _Channel, command: str = "SSUBSCRIBE"
    ) -> None:
        await self._ensure_reader()
        await self._connected.wait()
        assert self._conn is not None
        channel.pending += 1
        try:
            await self._conn.send_command(command, name)
        except CONNECTION_LOST:
            channel.pending -= 1  # the reader's reconnect subscribes every channel again

    async def _ensure_reader(self) -> None:
        if self._reader is None:
            self._reader = asyncio.create_task(self._run(), name="live-feed")

    async def _run(self) -> None:
        delay = 0.05
        while not self._closing:
            conn = self._connect()
            try:
                await conn.connect()  # type: ignore[no-untyped-call]
                self._conn = conn
                for name, channel in list(self._channels.items()):
                    channel.ready.clear()
                    channel.pending = 1
                    await conn.send_command("SSUBSCRIBE", name)
                if self._events.listeners:
                    self._events.ready.clear()
                    self._events.pending = 1
                    await conn.send_command("SUBSCRIBE", self._events_name)
                self._connected.set()
                delay = 0.05
                await self._read(conn)
            except CONNECTION_LOST as exc:
                if self._closing:
                    break
                self.reconnects += 1
                log.warning("live feed connection lost (%s); reconnecting in %.2fs", exc, delay)
            finally:
                self._connected.clear()
                self._conn = None
                with contextlib.suppress(Exception):
                    await conn.disconnect()
            if not self._closing:
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)

    async def _read(self, conn: AbstractConnection) -> None:
        while True:
            reply = await conn.read_response(disconnect_on_error=True)
            if not isinstance(reply, list) or len(reply) < 3:
                continue
            kind = reply[0]
            if kind == b"smessage":
                channel = self._channels.get(reply[1])
                if channel is None or not channel.ready.is_set():
                    continue  # not confirmed yet: the subscriber reads the stores after this
                epoch, seq, ts, doc = reply[2].split(b" ", 3)
                e, s, t = int(epoch), int(seq), int(ts)
                for listener in list(channel.listeners):
                    listener.entry(e, s, t, doc)
            elif kind == b"message" and reply[1] == self._events_name:
                if self._events.ready.is_set():
                    for listener in list(self._events.listeners):
                        listener.session_event(reply[2])
            elif kind in (b"ssubscribe", b"subscribe"):
                channel = self._events if kind == b"subscribe" else self._channels.get(reply[1])
                if channel is None:
                    continue
                channel.pending = max(channel.pending - 1, 0)
                if channel.pending == 0 and not channel.ready.is_set():
                    channel.ready.set()
                    for listener in list(channel.listeners):
                        listener.confirmed()

    async def close(self) -> None:
        self._closing = True
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        self._reader = None


def _ignore_result(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()
