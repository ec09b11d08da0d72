"""GET /ws: websocket subscriptions, the whole history then live (the protocol is in README.md).

A ``Hub`` per process owns the live feed (one Redis pub/sub connection), the seq-range reader,
a cap on concurrent catch-ups and the tail probe. Each ``Socket`` has one sender task and a
queue bounded in bytes: live entries are offered without waiting, and when the queue is full
the socket drops every queued entry, rolls each stream back to what it had really queued and
lets it catch up from the stores (server memory per slow client stays bounded); a write that
stalls past LATEST_WS_SEND_TIMEOUT closes the socket with 4008. Where the server allows it, a
socket writes its frames straight to the connection, all it got in one turn of the event loop in
one write (ws_direct.py). Each (socket, variable) is a ``Stream`` (ws_stream.py).

Nothing a client sends makes the server hold more for it than its queue's limit: control frames
(pong, error, subscribed, session frames...) count against the same limit as entries. Entries
can be read again from the stores, control frames cannot: a control frame that finds the queue
full first drops the queued entries (their streams catch up, as above), and a client whose
control frames alone fill its queue is closed with 4008, as a stalled one is. A socket whose
close frame cannot be written (the client reads nothing) is dropped after
LATEST_WS_SEND_TIMEOUT. A process holds at most LATEST_WS_MAX_CONNECTIONS sockets: the next
upgrade is answered 503 with Retry-After.

Sockets may also watch sessions: the current state first (``snapshot``), then every change the
session scripts publish (``state``, ``update``, ``complete``), and a fresh snapshot after the
feed reconnected (a change published meanwhile is not lost to the client, only merged).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass
from typing import Any, cast

import orjson
from redis.exceptions import RedisError
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from latest_server import keys
from latest_server.errors import PacketRejected, StoreUnavailable
from latest_server.feed import LiveFeed
from latest_server.resources import Resources
from latest_server.settings import Settings
from latest_server.stores.ranges import RangeReader
from latest_server.web._request import json_error
from latest_server.web.ws_direct import DirectWriter, abort, header
from latest_server.web.ws_stream import Stream, stop_tasks

log = logging.getLogger(__name__)

CLOSE_SLOW = 4008  # "slow: resume with since" (Centrifugo uses 3008)
CLOSE_GOING_AWAY = 1001
CLOSE_TRY_AGAIN = 1013
MAX_ID_LENGTH = 1024
CATCHUPS = 16  # concurrent catch-ups per process
PROBE_BATCH = 200  # variables per round trip of the tail probe
PENDING_BYTES = 65_536  # frames taken for a direct write are written once they are this large
WATCH_WAIT = 5.0  # seconds a session subscription waits for the live feed before it says so
# Seconds a 4008 close frame waits for a client that stopped reading: one that reads again (after
# a pause, a GC, a debugger) learns why it was closed and resumes with since; one that never does
# is dropped then. Other closes (shutdown) wait LATEST_WS_SEND_TIMEOUT.
SLOW_CLOSE_WAIT = 30.0


@dataclass(slots=True)
class _Item:
    frame: bytes
    stream: Stream | None  # None: a control frame, never dropped
    first: int  # the seqs the frame carries: first..last
    last: int


class Hub:
    def __init__(self, resources: Resources, settings: Settings) -> None:
        self.settings = settings
        self.parser = resources.parser
        self.feed = LiveFeed(resources.redis)
        self.ranges = RangeReader(resources.redis, resources.history.scripts, resources.objects)
        self.catchups = asyncio.Semaphore(CATCHUPS)
        self.sockets: set[Socket] = set()
        self.connections = 0  # sockets accepted or being accepted (LATEST_WS_MAX_CONNECTIONS)
        self._closing: set[asyncio.Task[None]] = set()  # slow sockets being closed
        self._frames: dict[str, tuple[int, int, bytes]] = {}
        self._probe: asyncio.Task[None] | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self.sessions = resources.sessions
        self.watchers: dict[str, set[Socket]] = {}  # session id → sockets watching it
        self._refresh: asyncio.Task[None] | None = None
        self._due: list[Socket] = []  # sockets with frames to write directly (ws_direct.py)

    def entry_frame(self, variable_id: str, epoch: int, seq: int, ts: int, doc: bytes) -> bytes:
        """The entry frame, encoded once for every socket that gets it."""
        cached = self._frames.get(variable_id)
        if cached is not None and cached[0] == epoch and cached[1] == seq:
            return cached[2]
        frame = orjson.dumps(
            {
                "type": "entry",
                "id": variable_id,
                "epoch": epoch,
                "seq": seq,
                "ts": ts,
                "doc": orjson.Fragment(doc),
            }
        )
        if len(self._frames) > 100_000:
            self._frames.clear()
        self._frames[variable_id] = (epoch, seq, frame)
        return frame

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
        """Every LATEST_WS_PROBE_INTERVAL, compare each live stream with its variable's top:
        the last message before a pub/sub drop is revealed by nothing else. One position per
        variable, however many sockets follow it, read PROBE_BATCH variables at a time: read
        all at once, the probe of a busy fan-out stalled the loop for tens of milliseconds."""
        while True:
            await asyncio.sleep(self.settings.ws_probe_interval)
            followed: dict[str, list[Stream]] = {}
            for socket in self.sockets:
                for stream in socket.streams.values():
                    if stream.mode == "live":
                        followed.setdefault(stream.key, []).append(stream)
            variables = list(followed)
            for start in range(0, len(variables), PROBE_BATCH):
                batch = variables[start : start + PROBE_BATCH]
                try:
                    positions = await self.ranges.positions(batch)
                except (RedisError, StoreUnavailable, OSError) as exc:
                    log.warning("tail probe skipped: %s", exc)
                    break
                for key, position in zip(batch, positions, strict=True):
                    for stream in followed[key]:
                        stream.probe(position)

    # --- sessions ----------------------------------------------------------------------------

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
        if self.watchers and (self._refresh is None or self._refresh.done()):
            self._refresh = asyncio.create_task(self._snapshot_all(), name="ws-sessions")

    async def _snapshot_all(self) -> None:
        for session_id, sockets in list(self.watchers.items()):
            with contextlib.suppress(RedisError, StoreUnavailable, OSError):
                await self._snapshot(session_id, list(sockets))

    async def _snapshot(self, session_id: str, sockets: list[Socket]) -> None:
        """Queue the session's stored state on ``sockets``. An event that reached a socket
        while the state was being read may be newer than what was read: read again then."""
        assert self.sessions is not None
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

    async def close(self) -> None:
        tasks = [t for t in (self._refresh, self._watchdog, self._probe) if t is not None]
        await stop_tasks([*tasks, *self._closing])
        for socket in list(self.sockets):
            await socket.close(CLOSE_GOING_AWAY, "server shutting down")
        await self.feed.close()


class Socket:
    def __init__(self, hub: Hub, ws: WebSocket, send: Send) -> None:
        self.hub = hub
        self.ws = ws
        self.send = send  # the server's, for frames: accept and close go through ``ws``
        self.settings = hub.settings
        self.streams: dict[str, Stream] = {}
        self.watched: set[str] = set()  # session ids
        self.session_events: dict[str, int] = {}  # session id → frames queued
        self.queue: deque[_Item] = deque()
        self.queued = 0  # bytes
        self.limit = self.settings.ws_queue_bytes
        self.ready = asyncio.Event()  # items are queued
        self.space = asyncio.Event()  # below half the limit
        self.space.set()
        self.closed = False
        # A close with 4008 under way: nothing more is queued, and the connection is not let go
        # (which would reset it, losing what the client has not read yet) before it is done.
        self.closer: asyncio.Task[None] | None = None
        self.sender: asyncio.Task[None] | None = None
        self.send_timeout = self.settings.ws_send_timeout
        self.writing_since: float | None = None  # loop time the write in progress began
        self.idle = False  # the sender waits for work: a frame may be written at once
        self.suspended: tuple[Coroutine[Any, Any, None], Any] | None = None  # see _write_now
        self.failed: BaseException | None = None  # a write at once failed: the sender closes
        self.direct = DirectWriter.of(ws.scope)  # None: every frame goes through ``send``
        self.pending: list[bytes] = []  # headers and frames to write directly, in order
        self.pending_bytes = 0

    # --- queueing --------------------------------------------------------------------------

    def control(self, message: dict[str, Any]) -> None:
        """A protocol frame (subscribed, live, reset, error, pong): always queued."""
        self._append(_Item(orjson.dumps(message), None, 0, 0))

    def session_frame(self, session_id: str, frame: bytes, *, droppable: bool) -> None:
        """A session's snapshot or change. ``update`` events only move its count and time
        range, and the next one supersedes them: past half the queue's limit they are skipped
        rather than let a slow client's queue grow; state changes are always queued."""
        self.session_events[session_id] = self.session_events.get(session_id, 0) + 1
        if droppable and self.queued > self.limit // 2:
            return
        self._append(_Item(frame, None, 0, 0))

    def offer(self, frame: bytes, stream: Stream, last: int) -> bool:
        """Queue entries of ``stream`` ending at seq ``last`` unless the queue is full; a full
        queue makes every stream with queued entries (and this one) catch up from the stores.
        When the sender is idle the queue is empty: the frame is written at once (or with the
        other frames of this event-loop turn, ``_write_now``), without the queue item
        ``_append`` would build and drop (about a tenth of the interpreter's work on our side of
        a live frame)."""
        if self._writes_now():
            if frame:  # an empty frame only moves the stream's position
                self._write_now(frame)
            return True
        first = (stream.seq or 0) + 1
        if self.queued + len(frame) > self.limit and self.queued:
            self._overflow()
            stream.rolled_back(first)
            return False
        self._append(_Item(frame, stream, first, last))
        return True

    async def put(self, frame: bytes, stream: Stream, last: int) -> bool:
        """Queue a backlog page once the queue has room; False if the stream was rolled back
        meanwhile (the page no longer follows what is queued)."""
        expected = stream.seq
        while not self.space.is_set() and not self.closed:
            await self.space.wait()
        if self.closed or stream.seq != expected or stream.mode != "catchup":
            return False
        self._append(_Item(frame, stream, (expected or 0) + 1, last))
        return True

    def _writes_now(self) -> bool:
        """Whether a frame is written at once: the sender waits for work (so nothing is queued
        or being written) and the socket is open."""
        return self.idle and not self.ready.is_set() and not self.closed

    def _append(self, item: _Item) -> None:
        if not item.frame or self.closed or self.closer is not None:
            return
        if self._writes_now():
            self._write_now(item.frame)
            return
        if item.stream is None and self.queued + len(item.frame) > self.limit and self.queued:
            # A control frame cannot be read again from the stores, entries can: drop those
            # first, then, if control frames alone fill the queue, the client is too slow.
            self._overflow()
            if self.queued + len(item.frame) > self.limit:
                self.queue.clear()
                self.queued = 0
                self.hub.close_slow(self, f"{self.limit} bytes of replies left unread")
                return
        self.queue.append(item)
        self._queued(len(item.frame))

    def _queued(self, size: int) -> None:
        """``size`` bytes were queued: count them and wake the sender."""
        self.queued += size
        if self.queued > self.limit // 2:
            self.space.clear()
        self.ready.set()

    def _overflow(self) -> None:
        dropped: dict[Stream, int] = {}
        if all(item.stream is None for item in self.queue):
            return
        kept: deque[_Item] = deque()
        for item in self.queue:
            if item.stream is None:
                kept.append(item)
            else:
                dropped.setdefault(item.stream, item.first)
        self.queue = kept
        self.queued = sum(len(item.frame) for item in kept)
        if self.queued <= self.limit // 2:
            self.space.set()
        log.info("websocket client is slow: %d streams read from the stores", len(dropped))
        for stream, first in dropped.items():
            stream.rolled_back(first)

    def _write_now(self, frame: bytes) -> None:
        """Write a frame while the sender is idle, without waking it. Straight to the transport
        in the event loop's next turn where the server allows it (ws_direct.py). Otherwise
        the server's ``send`` runs to its end at once unless the connection is not writable (the
        client does not read). Waking a sender task per frame was a fifth of a busy fan-out's
        CPU; asyncio's eager tasks (3.12) do the same. A write that has to wait is handed to the
        sender, which finishes it before anything queued after it. ``send`` is a coroutine
        function: Starlette's exception middleware hands every endpoint its own ``async def``
        wrapper of the server's."""
        if self.direct is not None:  # whether the connection allows it is seen when written
            if not self.pending:
                self.hub.due(self)
            self.pending.append(header(len(frame)))
            self.pending.append(frame)
            self.pending_bytes += len(frame)
            if self.pending_bytes >= PENDING_BYTES:  # a long burst: memory stays bounded
                self.write_pending()
            return
        message = {"type": "websocket.send", "text": frame.decode()}
        try:
            coro = cast(Coroutine[Any, Any, None], self.send(message))
            try:
                waiting = coro.send(None)
            except StopIteration:
                return  # written
            self.suspended = (coro, waiting)
            self.writing_since = asyncio.get_running_loop().time()
        except (WebSocketDisconnect, RuntimeError, OSError) as exc:
            self.failed = exc
        self.ready.set()

    def write_pending(self) -> None:
        """Write the frames taken for a direct write. If the connection does not allow it now
        (the client does not read what it is sent, or it is closing), they go first in the queue
        (empty while frames were pending), for the sender to write through ``send``: it waits
        for the client, and the queue's limit and the stall timeout apply."""
        pending, self.pending = self.pending, []
        self.pending_bytes = 0
        if not pending or self.closed:
            return
        assert self.direct is not None
        if self.direct.open():
            self.direct.write(pending)
            return
        frames = pending[1::2]
        self.queue.extendleft(_Item(frame, None, 0, 0) for frame in reversed(frames))
        self._queued(sum(map(len, frames)))

    async def send_loop(self) -> None:
        """Send what is queued. A write in progress is timed by the hub's watchdog, not by a
        timer per frame: on a busy fan-out those timers were a twentieth of the CPU."""
        clock = asyncio.get_running_loop().time
        send = self.send
        try:
            while True:
                self.idle = True
                await self.ready.wait()
                self.idle = False
                if self.failed is not None:
                    raise self.failed
                if self.suspended is not None:
                    await _resume(*self.suspended)
                    self.suspended = None
                while self.queue:
                    item = self.queue.popleft()
                    self.queued -= len(item.frame)
                    if self.queued <= self.limit // 2:
                        self.space.set()
                    self.writing_since = clock()
                    await send({"type": "websocket.send", "text": item.frame.decode()})
                self.writing_since = None
                self.ready.clear()
        except (WebSocketDisconnect, RuntimeError, OSError):
            await self.close(None, "")

    def stalled(self, now: float) -> bool:
        return self.writing_since is not None and now - self.writing_since > self.send_timeout

    async def close_slow(self, why: str) -> None:
        """The client does not keep up (a write waited past LATEST_WS_SEND_TIMEOUT, or its
        replies fill its queue): stop the sender and close with 4008."""
        log.info("websocket client is too slow (%s): closing with %d", why, CLOSE_SLOW)
        if self.sender is not None:
            await stop_tasks([self.sender])
        await self.close(CLOSE_SLOW, "slow consumer: resume with since")

    # --- the client's requests -------------------------------------------------------------

    async def handle(self, text: str) -> None:
        if len(text) > self.settings.ws_max_frame_bytes:
            return self.error(
                "frame_too_large", f"frames are limited to {self.settings.ws_max_frame_bytes} bytes"
            )
        try:
            message = orjson.loads(text)
        except orjson.JSONDecodeError:
            return self.error("not_json", "a frame must be a JSON object")
        if not isinstance(message, dict):
            return self.error("not_object", "a frame must be a JSON object")
        op = message.get("op")
        if op == "ping":
            return self.control({"type": "pong"})
        if op in ("subscribe", "unsubscribe") and "sessions" in message:
            sessions = _ids(message, "sessions")
            if sessions is None:
                return self.error("bad_sessions", '"sessions" must be a non-empty list of ids')
            if op == "subscribe":
                await self.watch(sessions)
            else:
                self.hub.unwatch(self, sessions)
                self.watched.difference_update(sessions)
                for session_id in sessions:
                    self.control({"type": "unsubscribed", "session": session_id})
            if "ids" not in message:
                return None
        if op == "subscribe":
            return await self.subscribe(message)
        if op == "unsubscribe":
            ids = _ids(message)
            if ids is None:
                return self.error("bad_ids", '"ids" must be a non-empty list of variable ids')
            for variable_id in ids:
                stream = self.streams.pop(variable_id, None)
                if stream is not None:
                    await stream.close()
                self.control({"type": "unsubscribed", "id": variable_id})
            return None
        return self.error(
            "unknown_op", f"unknown op {str(op)[:64]!r}: use subscribe, unsubscribe or ping"
        )

    async def watch(self, sessions: list[str]) -> None:
        new = [i for i in sessions if i not in self.watched]
        if len(self.streams) + len(self.watched) + len(new) > self.settings.ws_max_subscriptions:
            return self.error(
                "too_many_subscriptions",
                f"a socket may subscribe to at most {self.settings.ws_max_subscriptions} "
                "variables and sessions",
            )
        if self.hub.sessions is None:
            return self.error("unavailable", "this server keeps no sessions")
        self.watched.update(new)
        for session_id in new:
            self.control({"type": "subscribed", "session": session_id})
        try:
            await self.hub.watch(self, new)
        except TimeoutError:
            self.error("unavailable", "the live feed is reconnecting: the snapshot follows then")
        except (RedisError, StoreUnavailable, OSError) as exc:
            self.error("unavailable", f"cannot read the sessions now: {exc}")
        return None

    async def subscribe(self, message: dict[str, Any]) -> None:
        ids = _ids(message)
        if ids is None:
            return self.error("bad_ids", '"ids" must be a non-empty list of variable ids')
        modes = [
            name for name in ("since", "from", "latest") if message.get(name) not in (None, False)
        ]
        if len(modes) > 1:
            return self.error(
                "bad_request", f"use one of since, from, latest, not {' and '.join(modes)}"
            )
        new = [i for i in ids if i not in self.streams]
        if len(self.streams) + len(self.watched) + len(new) > self.settings.ws_max_subscriptions:
            return self.error(
                "too_many_subscriptions",
                f"a socket may subscribe to at most {self.settings.ws_max_subscriptions} variables",
            )
        since: dict[str, tuple[int, int]] = {}
        from_us = None
        if message.get("since") is not None:
            raw = message["since"]
            if not isinstance(raw, dict):
                return self.error("bad_since", '"since" maps variable ids to [epoch, seq]')
            for variable_id, position in raw.items():
                if (
                    not isinstance(position, list)
                    or len(position) != 2
                    or not all(type(n) is int and n >= 0 for n in position)
                ):
                    return self.error("bad_since", f"since[{variable_id!r}] must be [epoch, seq]")
                since[variable_id] = (position[0], position[1])
        if message.get("from") is not None:
            try:
                from_us = self.hub.parser.time_to_us(message["from"])
            except PacketRejected as exc:
                return self.error("bad_time", str(exc))
        latest = message.get("latest") is True
        for variable_id in ids:
            old = self.streams.pop(variable_id, None)
            if old is not None:
                await old.close()  # subscribing again restarts the stream with the new start
            key = keys.key_for(variable_id)
            stream = Stream(
                self.hub,
                self,
                variable_id,
                key,
                since=since.get(variable_id),
                from_us=from_us,
                latest=latest,
            )
            self.streams[variable_id] = stream
            self.control({"type": "subscribed", "id": variable_id, "key": key})
            stream.start()
        return None

    def error(self, reason: str, message: str) -> None:
        self.control({"type": "error", "reason": reason, "message": message})

    async def close(self, code: int | None, reason: str) -> None:
        if self.closed:
            return
        self.write_pending()  # frames taken before the close frame are sent before it
        self.closed = True
        self.space.set()
        self.hub.unwatch(self, self.watched)
        # every stream is stopped before any is waited for: a close cut short still stops all
        tasks = [task for stream in self.streams.values() if (task := stream.stop())]
        self.streams.clear()
        await stop_tasks(tasks)
        if code is not None and self.ws.application_state != WebSocketState.DISCONNECTED:
            # The close frame waits until the connection is writable: from a client that reads
            # nothing, never. Its connection is dropped after a bound.
            wait = (
                max(SLOW_CLOSE_WAIT, self.send_timeout) if code == CLOSE_SLOW else self.send_timeout
            )
            try:
                async with asyncio.timeout(wait):
                    await self.ws.close(code, reason)
            except TimeoutError:
                log.info("websocket close frame not taken in %ss: dropped", wait)
                abort(self.ws.scope)
            except (RuntimeError, OSError, WebSocketDisconnect):
                pass


async def _resume(coro: Coroutine[Any, Any, None], waiting: Any) -> None:
    """Drive ``coro``, suspended on ``waiting`` (what it yielded: a future, or None for a bare
    yield), to its end, as its task would have."""
    done = False
    try:
        while True:
            try:
                if waiting is None:
                    await asyncio.sleep(0)
                else:
                    # taken, as a task takes what its coroutine yields: awaiting a future that
                    # is still marked blocking would fail
                    waiting._asyncio_future_blocking = False
                    await waiting
            except BaseException as exc:  # a failed future, or our cancellation: thrown in, as
                waiting = coro.throw(exc)  # a task does
                continue
            waiting = coro.send(None)
    except StopIteration:
        done = True
    finally:
        if not done:
            coro.close()


def _ids(message: dict[str, Any], name: str = "ids") -> list[str] | None:
    ids = message.get(name)
    if (
        not isinstance(ids, list)
        or not ids
        or not all(isinstance(i, str) and 0 < len(i) <= MAX_ID_LENGTH for i in ids)
    ):
        return None
    return list(dict.fromkeys(ids))


class WebsocketEndpoint:
    """``GET /ws`` as an ASGI app rather than a Starlette endpoint function, so that the
    socket's sender calls the ``send`` it is given (the server's, behind the exception
    middleware's thin wrapper) instead of ``WebSocket.send``: Starlette's per-message checks and
    wrapping were a tenth of the cost of a frame on a busy fan-out."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await websocket(WebSocket(scope, receive, send), send)


async def websocket(ws: WebSocket, send: Send) -> None:
    hub: Hub = ws.app.state.hub
    cap = hub.settings.ws_max_connections
    if hub.connections >= cap:
        return await _refuse(ws, cap)
    hub.connections += 1
    try:
        await ws.accept()
        await _serve(hub, ws, send)
    finally:
        hub.connections -= 1


async def _refuse(ws: WebSocket, cap: int) -> None:
    """Answer an upgrade past LATEST_WS_MAX_CONNECTIONS with 503 (or, where the server cannot
    answer an upgrade with a response, accept and close with 1013, "try again later")."""
    log.warning("websocket refused: %d connections open (LATEST_WS_MAX_CONNECTIONS)", cap)
    reason = f"this server holds at most {cap} websocket connections; try again later"
    if "websocket.http.response" in ws.scope.get("extensions", {}):
        await ws.send_denial_response(json_error(503, "too_many_connections", reason))
        return
    await ws.accept()
    await ws.close(CLOSE_TRY_AGAIN, reason[:120])


async def _serve(hub: Hub, ws: WebSocket, send: Send) -> None:
    socket = Socket(hub, ws, send)
    hub.sockets.add(socket)
    sender = socket.sender = asyncio.create_task(socket.send_loop(), name="ws-send")
    try:
        while not socket.closed:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                break
            text = message.get("text")
            if text is None:
                data = message.get("bytes") or b""
                text = data.decode(errors="replace")
            await socket.handle(text)
    except WebSocketDisconnect:
        pass
    finally:
        hub.sockets.discard(socket)
        if socket.closer is not None:
            await asyncio.wait([socket.closer])
        await socket.close(None, "")
        await stop_tasks([sender])
