"""One websocket connection: its queue, bounded in bytes, and the sender that drains it.

Live entries are offered without waiting, and when the queue is full the socket drops every
queued entry, rolls each subscription back to what it had really queued and lets it catch up
from the stores (server memory per slow client stays bounded); a write that stalls past
LATEST_WS_SEND_TIMEOUT closes the socket with 4008. Where the server allows it, a socket writes
its frames straight to the connection, all it got in one turn of the event loop in one write
(direct.py).

Nothing a client sends makes the server hold more for it than its queue's limit: control frames
(pong, error, subscribed, session frames...) count against the same limit as entries. Entries
can be read again from the stores, control frames cannot: a control frame that finds the queue
full first drops the queued entries (their subscriptions catch up, as above), and a client whose
control frames alone fill its queue is closed with 4008, as a stalled one is. Until the close
frame is taken the endpoint still reads (and drops) what the client sends; a socket whose close
frame cannot be written (the client reads nothing) is dropped after SLOW_CLOSE_WAIT, and at
once when the server shuts down.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass
from typing import Any, Protocol, cast

import orjson
from starlette.types import Send
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from latest_server import metrics
from latest_server.settings import Settings
from latest_server.web.ws.direct import DirectWriter, abort, header
from latest_server.web.ws.protocol import CLOSE_SLOW
from latest_server.web.ws.subscription import Subscription
from latest_server.web.ws.tasks import stop_tasks

log = logging.getLogger(__name__)

PENDING_BYTES = 65_536  # frames taken for a direct write are written once they are this large
# A live entry (or a control frame) found the queue full: subscriptions read from the stores.
SLOW_OVERFLOW = metrics.WS_SLOW.labels("overflow")
# Seconds a 4008 close frame waits for a client that stopped reading: one that reads again (after
# a pause, a GC, a debugger) learns why it was closed and resumes with since; one that never does
# is dropped then. Other closes (shutdown) wait LATEST_WS_SEND_TIMEOUT.
SLOW_CLOSE_WAIT = 30.0


class Owner(Protocol):
    """What a socket needs of the hub that holds it."""

    def due(self, socket: Socket) -> None:
        """``socket`` has frames to write directly, in the event loop's next turn."""

    def close_slow(self, socket: Socket, why: str) -> None:
        """Close ``socket`` with 4008 in a task of its own."""

    def unwatch(self, socket: Socket, session_ids: Iterable[str]) -> None:
        """``socket`` no longer watches ``session_ids``."""


@dataclass(slots=True)
class _Item:
    frame: bytes
    subscription: Subscription | None  # None: a control frame, never dropped
    first: int  # the seqs the frame carries: first..last
    last: int


class Socket:
    """One accepted websocket: its subscriptions, its queue and the sender that drains it."""

    def __init__(self, owner: Owner, settings: Settings, ws: WebSocket, send: Send) -> None:
        self.owner = owner
        self.ws = ws
        self.send = send  # the server's, for frames: accept and close go through ``ws``
        self.settings = settings
        self.subscriptions: dict[str, Subscription] = {}
        self.watched: set[str] = set()  # session ids
        self.session_events: dict[str, int] = {}  # session id → frames queued
        self.queue: deque[_Item] = deque()
        self.queued = 0  # bytes
        self.most = 0  # the most bytes ever queued: what the limit bounds
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
        self.tally = metrics.tally_of(ws.scope)  # bytes written around ASGI count here

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

    def offer(self, frame: bytes, subscription: Subscription, last: int) -> bool:
        """Queue entries of ``subscription`` ending at seq ``last`` unless the queue is full; a full
        queue makes every subscription with queued entries (and this one) catch up from the stores.
        When the sender is idle the queue is empty: the frame is written at once (or with the
        other frames of this event-loop turn, ``_write_now``), without the queue item
        ``_append`` would build and drop (about a tenth of the interpreter's work on our side of
        a live frame)."""
        if self._writes_now():
            if frame:  # an empty frame only moves the subscription's position
                self._write_now(frame)
            return True
        first = (subscription.seq or 0) + 1
        if self.queued + len(frame) > self.limit and self.queued:
            self._overflow()
            subscription.rolled_back(first)
            SLOW_OVERFLOW.inc()
            return False
        self._append(_Item(frame, subscription, first, last))
        return True

    async def put(self, frame: bytes, subscription: Subscription, last: int) -> bool:
        """Queue a backlog page once the queue has room; False if the subscription was rolled back
        meanwhile (the page no longer follows what is queued)."""
        expected = subscription.seq
        while not self.space.is_set() and not self.closed:
            await self.space.wait()
        if self.closed or subscription.seq != expected or subscription.mode != "catchup":
            return False
        self._append(_Item(frame, subscription, (expected or 0) + 1, last))
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
        if item.subscription is None and self.queued + len(item.frame) > self.limit and self.queued:
            # A control frame cannot be read again from the stores, entries can: drop those
            # first, then, if control frames alone fill the queue, the client is too slow.
            if self._overflow():
                SLOW_OVERFLOW.inc()
            if self.queued + len(item.frame) > self.limit:
                self.queue.clear()
                self.queued = 0
                self.owner.close_slow(self, f"{self.limit} bytes of replies left unread")
                return
        self.queue.append(item)
        self._queued(len(item.frame))

    def _queued(self, size: int) -> None:
        """``size`` bytes were queued: count them and wake the sender."""
        self.queued += size
        if self.queued > self.most:
            self.most = self.queued
        if self.queued > self.limit // 2:
            self.space.clear()
        self.ready.set()

    def _overflow(self) -> int:
        """Drop the queued entries, rolling their subscriptions back; how many were."""
        dropped: dict[Subscription, int] = {}
        if all(item.subscription is None for item in self.queue):
            return 0
        kept: deque[_Item] = deque()
        for item in self.queue:
            if item.subscription is None:
                kept.append(item)
            else:
                dropped.setdefault(item.subscription, item.first)
        self.queue = kept
        self.queued = sum(len(item.frame) for item in kept)
        if self.queued <= self.limit // 2:
            self.space.set()
        log.info("websocket client is slow: %d streams read from the stores", len(dropped))
        for subscription, first in dropped.items():
            subscription.rolled_back(first)
        return len(dropped)

    def _write_now(self, frame: bytes) -> None:
        """Write a frame while the sender is idle, without waking it. Straight to the transport
        in the event loop's next turn where the server allows it (direct.py). Otherwise
        the server's ``send`` runs to its end at once unless the connection is not writable (the
        client does not read). Waking a sender task per frame was a fifth of a busy fan-out's
        CPU; asyncio's eager tasks (3.12) do the same. A write that has to wait is handed to the
        sender, which finishes it before anything queued after it. ``send`` is a coroutine
        function: Starlette's exception middleware hands every endpoint its own ``async def``
        wrapper of the server's."""
        if self.direct is not None:  # whether the connection allows it is seen when written
            if not self.pending:
                self.owner.due(self)
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
                metrics.WS_FRAMES.inc()
                return  # written
            metrics.WS_FRAMES.inc()  # the sender finishes it before anything else
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
        size, self.pending_bytes = self.pending_bytes, 0
        if not pending or self.closed:
            return
        assert self.direct is not None
        if self.direct.open():
            self.direct.write(pending)
            metrics.WS_FRAMES.inc(len(pending) >> 1)  # a header and a payload per frame
            self.tally.bytes_out += size
            return
        frames = pending[1::2]
        self.queue.extendleft(_Item(frame, None, 0, 0) for frame in reversed(frames))
        self._queued(sum(map(len, frames)))

    async def send_loop(self) -> None:
        """Send what is queued. A write in progress is timed by the hub's watchdog, not by a
        timer per frame: on a busy fan-out those timers were a twentieth of the CPU."""
        clock = asyncio.get_running_loop().time
        send = self.send
        frames = metrics.WS_FRAMES
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
                    frames.inc()
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
        metrics.WS_SLOW.labels("closed").inc()
        if self.sender is not None:
            await stop_tasks([self.sender])
        await self.close(CLOSE_SLOW, "slow consumer: resume with since")

    def error(self, reason: str, message: str) -> None:
        self.control({"type": "error", "reason": reason, "message": message})

    async def close(self, code: int | None, reason: str) -> None:
        if self.closed:
            return
        self.write_pending()  # frames taken before the close frame are sent before it
        self.closed = True
        self.space.set()
        self.owner.unwatch(self, self.watched)
        # every subscription is stopped before any is waited for: a close cut short still stops all
        tasks = [
            task for subscription in self.subscriptions.values() if (task := subscription.stop())
        ]
        self.subscriptions.clear()
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
