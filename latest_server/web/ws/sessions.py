"""Sockets watching sessions: the current state first (``snapshot``), then every change the
session scripts publish (``state``, ``update``, ``complete``), and a fresh snapshot after the
feed reconnected (a change published meanwhile is not lost to the client, only merged)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from typing import Any

import orjson
from redis.exceptions import RedisError

from latest_server.errors import StoreUnavailable
from latest_server.feed import LiveFeed
from latest_server.sessions import SessionStore
from latest_server.web.ws.socket import Socket

log = logging.getLogger(__name__)

WATCH_WAIT = 5.0  # seconds a session subscription waits for the live feed before it says so


class SessionWatch:
    """The process's watchers of sessions, a listener of the feed's session events."""

    def __init__(self, feed: LiveFeed, sessions: SessionStore) -> None:
        self.feed = feed
        self.sessions = sessions
        self.watchers: dict[str, set[Socket]] = {}  # session id → sockets watching it
        self.refresh: asyncio.Task[None] | None = None

    async def watch(self, socket: Socket, session_ids: list[str]) -> None:
        """Send ``socket`` each session's state, then its changes."""
        for session_id in session_ids:
            self.watchers.setdefault(session_id, set()).add(socket)
        # At once, once the channel is confirmed. While Redis is away that waits for it: the
        # client is told after WATCH_WAIT (its socket must not stop reading meanwhile), and the
        # snapshot follows when the channel is confirmed (``confirmed``).
        async with asyncio.timeout(WATCH_WAIT):
            await self.feed.watch_sessions(self)
        for session_id in session_ids:  # read after the channel is confirmed: nothing missed
            await self._snapshot(session_id, [socket])

    def unwatch(self, socket: Socket, session_ids: Iterable[str]) -> None:
        for session_id in session_ids:
            sockets = self.watchers.get(session_id)
            if sockets is not None:
                sockets.discard(socket)
                if not sockets:
                    del self.watchers[session_id]

    def session_event(self, payload: bytes) -> None:
        try:
            event = orjson.loads(payload)
            sockets = self.watchers.get(event["id"])
        except (orjson.JSONDecodeError, TypeError, KeyError):
            log.warning("ignored a malformed session event: %r", payload[:200])
            return
        if not sockets:
            return
        frame = orjson.dumps({"type": "session", **event})
        for socket in sockets:
            socket.session_frame(event["id"], frame, droppable=event.get("event") == "update")

    def confirmed(self) -> None:
        """The events channel was subscribed again after a reconnect: changes published while
        it was down are gone from pub/sub, so every watcher gets a fresh snapshot."""
        if self.watchers and (self.refresh is None or self.refresh.done()):
            self.refresh = asyncio.create_task(self._snapshot_all(), name="ws-sessions")

    async def _snapshot_all(self) -> None:
        for session_id, sockets in list(self.watchers.items()):
            with contextlib.suppress(RedisError, StoreUnavailable, OSError):
                await self._snapshot(session_id, list(sockets))

    async def _snapshot(self, session_id: str, sockets: list[Socket]) -> None:
        """Queue the session's stored state on ``sockets``. An event that reached a socket
        while the state was being read may be newer than what was read: read again then."""
        for _ in range(5):
            seen = [socket.session_events.get(session_id, 0) for socket in sockets]
            session = await self.sessions.get(session_id)
            if seen == [socket.session_events.get(session_id, 0) for socket in sockets]:
                break
        body: dict[str, Any] = {"type": "session", "event": "snapshot", "id": session_id}
        if session is None:
            body.update(state=None, session=None)
        else:
            body.update(
                state=session.state,
                count=session.count,
                start=session.start,
                end=session.end,
                session=session.to_json(),
            )
        frame = orjson.dumps(body)
        for socket in sockets:
            socket.session_frame(session_id, frame, droppable=False)
