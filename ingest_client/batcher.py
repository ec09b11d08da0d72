"""Rate-limited batching of packets.

Packets are buffered and published by one flusher (a thread, or a task for asyncio) in flushes
that start at least ``min_interval`` seconds after the previous flush ended
(``LATEST_MIN_INTERVAL``, default 1.0). A flush takes everything buffered, encodes it as JSON
arrays of at most ``max_message_bytes`` each (several messages when the batch is large) and
publishes them in order, each confirmed before the next. A fast producer does not leave all the
encoding to the flush: once ``SPILL`` packets are buffered, the ``add`` that finds them encodes
them (while they are still in the CPU's cache, with no thread hand-over), and the flush joins
those pieces into messages of at most ``max_message_bytes``. When messages are published does
not change. A message that fails is retried with backoff for ``retry_for`` seconds; a confirmed
message is never sent again. Messages still unconfirmed after that stay queued for the next
flush, so nothing is dropped; the buffer (packets not yet taken by a flush, encoded early or
not) is bounded (``max_buffer``): ``add`` blocks up to ``block_timeout`` for room, then raises
``BufferFull``. ``close`` flushes what is left (the interval still holds) and raises
``FlushFailed`` if that cannot be published.

Every wait is bounded. ``close`` returns or raises within ``close_timeout`` seconds (default
30), whatever the receiver does: the final flush's retries stop at that deadline, and a publish
still waiting for its confirmation then is given up (the transports bound each call by their
``timeout`` as well). The ``FlushFailed`` it raises lists every packet not confirmed
(``unsent``), so nothing is lost without the caller holding it. A signal that interrupts
``close`` (a second Ctrl+C, SIGTERM) stops the flusher too: ``close`` never outlives it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any

import orjson

from ingest_client.errors import BufferFull, FlushFailed, TransportError
from ingest_client.messages import encode, pack
from ingest_client.options import ProducerOptions
from ingest_client.transports.base import AsyncTransport, Transport

log = logging.getLogger(__name__)

BACKOFF_START = 0.05
BACKOFF_MAX = 2.0
SPILL = 8192  # buffered packets that the next add encodes ahead of the flush (~a message)

# Called with every run of packets taken from the buffer (encoded early or at a flush), in
# order, under the batcher's lock; the session tracks the time range of its samples this way.
Note = Callable[[list[dict[str, Any]]], None]
# Called at each flush, after the last Note of its packets; returns packets to append to it
# (the session's time-range update rides along this way).
Extra = Callable[[], list[dict[str, Any]]]


def _transport_error(failure: Exception) -> TransportError:
    """A transport raises TransportError; anything else is a bug in it, which must not end the
    flusher (and with it every later flush): it counts as a failure not worth retrying now."""
    if isinstance(failure, TransportError):
        return failure
    log.exception("the transport raised %r", failure)
    error = TransportError(f"the transport failed: {failure!r}", transient=False)
    error.__cause__ = failure
    return error


class Buffer:
    """Packets handed over and not yet confirmed, and the rules for sending them."""

    def __init__(
        self, options: ProducerOptions, *, note: Note | None = None, extra: Extra | None = None
    ) -> None:
        self.min_interval = options.resolved_min_interval()
        self.max_buffer = options.max_buffer
        self.max_message_bytes = options.max_message_bytes
        self.block_timeout = options.block_timeout
        self.retry_for = options.retry_for
        self.close_timeout = options.close_timeout
        self.note = note
        self.extra = extra
        # Producers append to ``items`` without a lock or any other check while it is shorter
        # than ``limit``; at ``limit``, ``add`` takes the lock to encode it ahead of the flush
        # and checks the bound. ``limit`` is SPILL, less near the bound, so that appends below
        # it never pass ``max_buffer``.
        self.items: list[dict[str, Any]] = []
        self.spill_at = min(SPILL, self.max_buffer)
        self.limit = self.spill_at
        self.on_limit: Callable[[int], None] | None = None  # told each new limit
        self.encoded: list[bytes] = []  # JSON arrays of packets taken early, not yet flushed
        self.encoded_items = 0  # packets in ``encoded``: they count against ``max_buffer``
        self.taken = 0  # packets ever taken from ``items`` (early or by a flush)
        self.lock = threading.Lock()  # held by whoever takes from ``items``
        self.pending: list[bytes] = []  # encoded, not yet confirmed, in order
        self.last_flush = -math.inf  # monotonic end of the last flush
        self.flushes = 0
        self.messages_sent = 0
        self.error: BaseException | None = None
        self.closing = False
        self.close_deadline = math.inf  # monotonic; set by close()
        # close() gave up on the flusher (its deadline passed, or a signal interrupted it): the
        # flusher publishes nothing more, and closes the transport once its last call returns.
        self.abandoned = False
        self.unencodable: list[dict[str, Any]] = []  # packets set aside by _encode
        self.out_of_time = False  # the final flush stopped at the close deadline

    def added(self) -> int:
        """Packets added so far (flushed or still buffered)."""
        with self.lock:
            return self.taken + len(self.items)

    def add_last(self, item: dict[str, Any]) -> None:
        """Add the session's final document, past the bound: it must go out."""
        self.items.append(item)

    # -- buffering ------------------------------------------------------------------------

    def _cut(self) -> list[dict[str, Any]]:
        """Take everything in ``items`` (with the lock held). The list is never replaced:
        producers append to its end while a taker removes a prefix (each a single atomic
        operation under the GIL), so appending needs no lock."""
        items = self.items
        n = len(items)
        batch = items[:n]
        del items[:n]
        self.taken += n
        if self.note is not None:
            self.note(batch)
        return batch

    def _set_limit(self) -> None:
        """With the lock held, after ``encoded_items`` changed."""
        limit = max(0, min(self.spill_at, self.max_buffer - self.encoded_items))
        if limit != self.limit:
            self.limit = limit
            if self.on_limit is not None:
                self.on_limit(limit)

    def _offer(self, item: dict[str, Any]) -> bool:
        """``add`` at ``limit``: encode what is buffered (while it is still in the CPU's cache),
        then append ``item`` if the bound allows it."""
        with self.lock:
            items = self.items
            if items:
                arrays, count = self._encode(self._cut())
                self.encoded += arrays
                self.encoded_items += count
                self._set_limit()
            if len(items) + self.encoded_items < self.max_buffer:
                items.append(item)
                return True
            return False

    def _encode(self, batch: list[dict[str, Any]]) -> tuple[list[bytes], int]:
        """``encode``, and the number of packets encoded. A packet JSON cannot hold (a value
        of a type orjson does not know, a cycle) is set aside, logged, and reported by
        ``close``: it must neither take the rest of its batch down nor stop the flusher."""
        try:
            return encode(batch, self.max_message_bytes), len(batch)
        except TypeError:  # orjson.JSONEncodeError
            good: list[dict[str, Any]] = []
            for item in batch:
                try:
                    orjson.dumps(item)
                except TypeError as exc:
                    log.error("a packet cannot be encoded as JSON and is not sent: %s", exc)
                    self.unencodable.append(item)
                else:
                    good.append(item)
            return (encode(good, self.max_message_bytes) if good else []), len(good)

    def _buffered(self) -> bool:
        return bool(self.items or self.encoded)

    # -- flushing -------------------------------------------------------------------------

    def _until_next_flush(self) -> float:
        """Seconds before the next flush may start: the interval counts from the end of the
        last one, so the receiver sees flushes at least min_interval apart."""
        return self.last_flush + self.min_interval - time.monotonic()

    def _idle(self) -> bool:
        """Nothing to flush, and not closing: the flusher looks again in a moment."""
        return not (self._buffered() or self.pending or self.closing)

    def _take(self) -> None:
        """Move everything buffered into ``pending``, as messages."""
        with self.lock:
            early, self.encoded, self.encoded_items = self.encoded, [], 0
            self._set_limit()
            batch = self._cut() if self.items else []
            if self.extra is not None:
                batch += self.extra()
        if batch:
            early += self._encode(batch)[0]
        if early:
            self.pending += pack(early, self.max_message_bytes)

    def _stage_first(self, document: dict[str, Any]) -> None:
        """The session document, published (and confirmed) before the flusher starts."""
        self.pending = encode([document], self.max_message_bytes)
        self.flushes += 1

    def _first_failed(self) -> FlushFailed:
        return FlushFailed(
            f"could not publish the session document: {self.error}", unsent=self.unsent()
        )

    # -- publishing -----------------------------------------------------------------------

    def _may_publish(self) -> bool:
        if not self.pending or self.abandoned:
            return False
        if time.monotonic() >= self.close_deadline:
            self.out_of_time = True
            return False
        return True

    def _confirmed(self) -> None:
        """The first pending message was confirmed: it is never sent again."""
        self.pending.pop(0)
        self.messages_sent += 1
        self.error = None

    def _retry(self) -> Retry:
        return Retry(self)

    # -- the end --------------------------------------------------------------------------

    def unsent(self) -> list[dict[str, Any]]:
        """Every packet not confirmed: those JSON cannot encode, then in order the messages
        waiting to be (re)published and what is still buffered."""
        with self.lock:
            arrays = [*self.pending, *self.encoded]
            items = list(self.items)
        decoded = [packet for array in arrays for packet in orjson.loads(array)]
        return [*self.unencodable, *decoded, *items]

    def _left_over(self, gave_up: bool) -> FlushFailed | None:
        """After close: the error to raise if anything was not confirmed, else None."""
        if gave_up or self.pending or self._buffered() or self.unencodable:
            return self._flush_failed(gave_up)
        return None

    def _flush_failed(self, gave_up: bool) -> FlushFailed:
        unsent = self.unsent()
        late = gave_up or self.out_of_time
        why = f"no confirmation within close_timeout={self.close_timeout}s" if late else ""
        bad = f"{len(self.unencodable)} cannot be encoded as JSON" if self.unencodable else ""
        reasons = "; ".join(str(r) for r in (why, bad, self.error) if r) or "not flushed"
        error = FlushFailed(f"{len(unsent)} packet(s) were not published: {reasons}", unsent=unsent)
        error.__cause__ = self.error
        return error

    def _full_error(self) -> BufferFull:
        return BufferFull(
            f"{self.max_buffer} packets buffered for {self.block_timeout}s: "
            f"the transport cannot keep up ({self.error or 'no error yet'})"
        )

    def _interrupted(self) -> None:
        log.error(
            "closing interrupted: %d packet(s) were not published (%s)",
            len(self.unsent()),
            self.error or "not flushed",
        )


class Retry:
    """The retries of one publishing run: exponential backoff, for ``retry_for`` seconds from
    its start and never past the close deadline; a failure that is not transient stops it."""

    def __init__(self, buffer: Buffer) -> None:
        self.buffer = buffer
        self.started = time.monotonic()
        self.backoff = BACKOFF_START

    def pause(self, failure: Exception) -> float:
        """After ``failure``: seconds to wait before publishing again, 0 to stop for now (what
        is pending waits for the next flush, or close reports it)."""
        buffer = self.buffer
        exc = _transport_error(failure)
        buffer.error = exc
        deadline = min(self.started + buffer.retry_for, buffer.close_deadline)
        left = deadline - time.monotonic()
        if not exc.transient or left <= 0:
            buffer.out_of_time = left <= 0 and deadline == buffer.close_deadline
            log.error("publishing failed, %d message(s) kept: %s", len(buffer.pending), exc)
            return 0.0
        pause = min(self.backoff, left)
        log.warning("publishing failed (%s); retrying in %.2fs", exc, self.backoff)
        self.backoff = min(self.backoff * 2, BACKOFF_MAX)
        return pause


POLL = 0.02  # how often an idle flusher looks at the buffer


class Batcher(Buffer):
    """The sync batcher: ``add`` from any thread; one flusher thread publishes. Options as
    ``ProducerOptions`` (``options=``, keywords override it)."""

    def __init__(
        self,
        transport: Transport,
        options: ProducerOptions | None = None,
        *,
        note: Note | None = None,
        extra: Extra | None = None,
        **overrides: Any,
    ) -> None:
        super().__init__(ProducerOptions.of(options, overrides), note=note, extra=extra)
        self.transport = transport
        self.wake = threading.Event()  # set by close() only
        # Producers blocked on a full buffer sleep until the flusher has taken it (no polling:
        # each wake-up costs the producer and the flusher CPU).
        self.taken_cond = threading.Condition()
        self.takes = 0
        self.thread = threading.Thread(target=self._run, name="ingest-client-flusher", daemon=True)
        self.end_lock = threading.Lock()  # orders the flusher's end against close() giving up
        self.ended = False

    def open(self, document: dict[str, Any]) -> None:
        """Publish ``document`` (the session's first) and start the flusher; if it is not
        confirmed, close the transport and raise FlushFailed."""
        self._stage_first(document)
        self._publish_pending()
        self.last_flush = time.monotonic()
        if self.pending:
            self.transport.close()
            raise self._first_failed()
        self.start()

    def start(self) -> None:
        self.thread.start()

    def add(self, item: dict[str, Any], block: bool = True) -> None:
        items = self.items
        if len(items) < self.limit:  # the bound is approximate across producer threads
            items.append(item)
            return
        if self._offer(item):
            return
        if not block:
            raise self._full_error()
        deadline = time.monotonic() + self.block_timeout
        cond = self.taken_cond
        while True:
            with cond:
                takes = self.takes
            if self._offer(item):
                return
            left = deadline - time.monotonic()
            if left <= 0:
                raise self._full_error()
            with cond:
                if self.takes == takes:
                    cond.wait(left)

    def _run(self) -> None:
        try:
            self._flush_until_closed()
        finally:
            with self.end_lock:
                self.ended = True
                owner = self.abandoned  # close() did not wait for us: the transport is ours
            if owner:
                self._close_transport()

    def _flush_until_closed(self) -> None:
        # Producers do not signal: the flusher looks at the buffer once the interval is over,
        # then every POLL until something is there (a wake-up costs nothing on the hot path).
        while not self.abandoned:
            wait = self._until_next_flush()
            if wait > 0:
                time.sleep(wait)
            while self._idle():
                self.wake.wait(POLL)
            self.wake.clear()
            closing = self.closing
            self._take()
            with self.taken_cond:
                self.takes += 1
                self.taken_cond.notify_all()
            if self.pending:
                self.flushes += 1
                self._publish_pending()
                self.last_flush = time.monotonic()
                # still pending: retried at the next interval (or, closing, close() raises)
            if closing:
                return

    def _publish_pending(self) -> None:
        retry = self._retry()
        while self._may_publish():
            try:
                self.transport.publish(self.pending[0])
            except Exception as failure:
                pause = retry.pause(failure)
                if not pause:
                    return
                time.sleep(pause)
                continue
            with self.end_lock:  # close() lists what is unsent under this lock
                if self.abandoned:
                    return  # counted as unsent by close(): leave it there
                self._confirmed()

    def close(self, timeout: float | None = None) -> None:
        """Flush everything (respecting the interval) and stop, within ``timeout`` seconds
        (``close_timeout`` by default); raise FlushFailed, listing the packets not confirmed,
        if data is left unpublished."""
        timeout = self.close_timeout if timeout is None else timeout
        self.close_deadline = time.monotonic() + timeout
        self.closing = True
        self.wake.set()
        try:
            if self.thread.is_alive():
                self.thread.join(timeout)
        except BaseException:  # a second Ctrl+C or SIGTERM: stop now
            self._give_up()
            self._interrupted()
            raise
        failed = self._left_over(self._give_up())
        if failed is not None:
            raise failed

    def _give_up(self) -> bool:
        """After waiting for the flusher: True if it still runs (it is told to stop)."""
        with self.end_lock:
            if self.thread.is_alive() and not self.ended:
                self.abandoned = True
        return self.abandoned

    def release(self) -> None:
        """Close the transport, unless the flusher is still in a call on it (it then closes
        the transport itself when the call returns: a transport is used by one thread)."""
        if not self.abandoned:
            self._close_transport()

    def _close_transport(self) -> None:
        try:
            self.transport.close()
        except Exception as exc:  # closing what failed; the publish error is what matters
            log.warning("closing the transport failed: %s", exc)


class AsyncBatcher(Buffer):
    """The asyncio batcher: ``add`` / ``add_nowait`` from the event loop; one flusher task."""

    def __init__(
        self,
        transport: AsyncTransport,
        options: ProducerOptions | None = None,
        *,
        note: Note | None = None,
        extra: Extra | None = None,
        **overrides: Any,
    ) -> None:
        super().__init__(ProducerOptions.of(options, overrides), note=note, extra=extra)
        self.transport = transport
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def open(self, document: dict[str, Any]) -> None:
        """Publish ``document`` (the session's first) and start the flusher; if it is not
        confirmed, close the transport and raise FlushFailed."""
        self._stage_first(document)
        await self._publish_pending()
        self.last_flush = time.monotonic()
        if self.pending:
            await self.transport.close()
            raise self._first_failed()
        self.start()

    def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name="ingest-client-flusher")

    def add_nowait(self, item: dict[str, Any]) -> None:
        items = self.items
        if len(items) < self.limit:
            items.append(item)
        elif not self._offer(item):
            raise self._full_error()

    async def add(self, item: dict[str, Any]) -> None:
        items = self.items
        if len(items) < self.limit:
            items.append(item)
            return
        if self._offer(item):
            return
        deadline = time.monotonic() + self.block_timeout
        while True:
            await asyncio.sleep(0.005)
            if self._offer(item):
                return
            if time.monotonic() > deadline:
                raise self._full_error()

    async def _run(self) -> None:
        while True:
            wait = self._until_next_flush()
            if wait > 0:
                await asyncio.sleep(wait)
            while self._idle():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), POLL)
            self.wake.clear()
            closing = self.closing
            self._take()
            if self.pending:
                self.flushes += 1
                await self._publish_pending()
                self.last_flush = time.monotonic()
                # still pending: retried at the next interval (or, closing, close() raises)
            if closing:
                return

    async def _publish_pending(self) -> None:
        retry = self._retry()
        while self._may_publish():
            try:
                await self.transport.publish(self.pending[0])
            except Exception as failure:
                pause = retry.pause(failure)
                if not pause:
                    return
                await asyncio.sleep(pause)
                continue
            self._confirmed()

    async def close(self) -> None:
        """Flush everything and stop within ``close_timeout`` seconds; raise FlushFailed,
        listing the packets not confirmed, if data is left unpublished. A cancellation while
        waiting (a second Ctrl+C, SIGTERM) cancels the flusher too."""
        timeout = self.close_timeout
        self.close_deadline = time.monotonic() + timeout
        self.closing = True
        self.wake.set()
        task, gave_up = self.task, False
        if task is not None and not task.done():
            try:
                # Shielded: the flusher is stopped here, on purpose, not by wait_for.
                await asyncio.wait_for(asyncio.shield(task), timeout)
            except TimeoutError:
                gave_up = True
                self.abandoned = True
                task.cancel()  # it cannot run before unsent() below: nothing is popped under it
            except BaseException:
                self.abandoned = True
                task.cancel()
                self._interrupted()
                raise
        failed = self._left_over(gave_up)
        if failed is not None:
            raise failed
