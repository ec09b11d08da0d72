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
import threading
import time
from typing import Any

from ingest_client.buffer import Buffer
from ingest_client.transports.base import AsyncTransport, Transport

log = logging.getLogger(__name__)

POLL = 0.02  # how often an idle flusher looks at the buffer


class Batcher(Buffer[Transport]):
    """The sync batcher: ``add`` from any thread; one flusher thread publishes. Options as
    ``ProducerOptions`` (``options=``, keywords override it)."""

    def _init_flusher(self) -> None:
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
        if self._add_now(item):
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


class AsyncBatcher(Buffer[AsyncTransport]):
    """The asyncio batcher: ``add`` / ``add_nowait`` from the event loop; one flusher task."""

    def _init_flusher(self) -> None:
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
        if not self._add_now(item):
            raise self._full_error()

    async def add(self, item: dict[str, Any]) -> None:
        if self._add_now(item):
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
