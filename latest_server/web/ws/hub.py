"""The process's websocket hub: the live feed (one Redis pub/sub connection), the seq-range
reader, the frame cache, a cap on concurrent catch-ups, the sockets, the tail probe, and the
watchdog that closes sockets whose writes stall. A process holds at most
LATEST_WS_MAX_CONNECTIONS sockets (endpoint.py answers the next upgrade 503)."""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Iterable

from redis.exceptions import RedisError

from latest_server.errors import StoreUnavailable
from latest_server.feed import LiveFeed
from latest_server.resources import Resources
from latest_server.settings import Settings
from latest_server.stores.ranges import RangeReader
from latest_server.web.ws.protocol import CLOSE_GOING_AWAY, FrameCache
from latest_server.web.ws.sessions import SessionWatch
from latest_server.web.ws.socket import Socket
from latest_server.web.ws.subscription import Subscription
from latest_server.web.ws.tasks import stop_tasks

log = logging.getLogger(__name__)

CATCHUPS = 16  # concurrent catch-ups per process
PROBE_BATCH = 200  # variables per round trip of the tail probe


class Hub:
    def __init__(self, resources: Resources, settings: Settings) -> None:
        self.settings = settings
        self.parser = resources.parser
        self.feed = LiveFeed(resources.redis)
        self.ranges = RangeReader(resources.redis, resources.history.scripts, resources.objects)
        self.frames = FrameCache()
        self.catchups = asyncio.Semaphore(CATCHUPS)
        self.sockets: set[Socket] = set()
        self.connections = 0  # sockets accepted or being accepted (LATEST_WS_MAX_CONNECTIONS)
        # the same per client (access.client_key): LATEST_WS_MAX_CONNECTIONS_PER_CLIENT
        self.per_client: collections.Counter[str] = collections.Counter()
        self._closing: set[asyncio.Task[None]] = set()  # slow sockets being closed
        self._probe: asyncio.Task[None] | None = None
        self._watchdog: asyncio.Task[None] | None = None
        # None: this server keeps no sessions
        self.sessions = (
            None if resources.sessions is None else SessionWatch(self.feed, resources.sessions)
        )
        self._due: list[Socket] = []  # sockets with frames to write directly (direct.py)

    def subscription(
        self,
        socket: Socket,
        variable_id: str,
        key: str,
        *,
        since: tuple[int, int] | None,
        from_us: int | None,
        latest: bool,
    ) -> Subscription:
        """A subscription of ``socket`` to one variable, on this process's feed and stores."""
        return Subscription(
            socket,
            variable_id,
            key,
            feed=self.feed,
            ranges=self.ranges,
            frames=self.frames,
            catchups=self.catchups,
            since=since,
            from_us=from_us,
            latest=latest,
        )

    def due(self, socket: Socket) -> None:
        """``socket`` has frames to write directly: written in the event loop's next turn, with
        whatever else it gets in this one."""
        if not self._due:
            asyncio.get_running_loop().call_soon(self._write_due)
        self._due.append(socket)

    def _write_due(self) -> None:
        due, self._due = self._due, []
        for socket in due:
            socket.write_pending()

    def unwatch(self, socket: Socket, session_ids: Iterable[str]) -> None:
        if self.sessions is not None:
            self.sessions.unwatch(socket, session_ids)

    def start(self) -> None:
        self._probe = asyncio.create_task(self._probe_loop(), name="ws-probe")
        self._watchdog = asyncio.create_task(self._watch_writes(), name="ws-watchdog")

    async def _watch_writes(self) -> None:
        """Close (4008) every socket whose write in progress began more than
        LATEST_WS_SEND_TIMEOUT ago, checking a few times per timeout."""
        loop = asyncio.get_running_loop()
        every = min(1.0, self.settings.ws_send_timeout / 4)
        while True:
            await asyncio.sleep(every)
            now = loop.time()
            for socket in [s for s in self.sockets if s.stalled(now)]:
                socket.writing_since = None
                self.close_slow(socket, f"write stalled for {self.settings.ws_send_timeout}s")

    def close_slow(self, socket: Socket, why: str) -> None:
        """Close ``socket`` with 4008 in a task of its own (the caller may be the socket's)."""
        if socket.closer is not None:
            return
        task = socket.closer = asyncio.create_task(socket.close_slow(why), name="ws-close-slow")
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _probe_loop(self) -> None:
        """Every LATEST_WS_PROBE_INTERVAL, compare each live subscription with its variable's
        top: the last message before a pub/sub drop is revealed by nothing else. One position
        per variable, however many sockets follow it, read PROBE_BATCH variables at a time: read
        all at once, the probe of a busy fan-out stalled the loop for tens of milliseconds."""
        while True:
            await asyncio.sleep(self.settings.ws_probe_interval)
            followed: dict[str, list[Subscription]] = {}
            for socket in self.sockets:
                for subscription in socket.subscriptions.values():
                    if subscription.mode == "live":
                        followed.setdefault(subscription.key, []).append(subscription)
            variables = list(followed)
            for start in range(0, len(variables), PROBE_BATCH):
                batch = variables[start : start + PROBE_BATCH]
                try:
                    positions = await self.ranges.positions(batch)
                except (RedisError, StoreUnavailable, OSError) as exc:
                    log.warning("tail probe skipped: %s", exc)
                    break
                for key, position in zip(batch, positions, strict=True):
                    for subscription in followed[key]:
                        subscription.probe(position)

    async def close(self) -> None:
        refresh = None if self.sessions is None else self.sessions.refresh
        tasks = [t for t in (refresh, self._watchdog, self._probe) if t is not None]
        await stop_tasks([*tasks, *self._closing])
        for socket in list(self.sockets):
            await socket.close(CLOSE_GOING_AWAY, "server shutting down")
        await self.feed.close()
