"""The batchers' shared state and decisions, without I/O: what is buffered, what is encoded
into messages and not yet confirmed, when a flush or a retry may happen, and what ``close``
reports as unsent. ``Batcher`` (a flusher thread) and ``AsyncBatcher`` (a flusher task) add
only their waiting and publishing (batcher.py).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import orjson

from ingest_client.errors import BufferFull, FlushFailed, TransportError
from ingest_client.messages import encode, pack
from ingest_client.options import ProducerOptions

log = logging.getLogger("ingest_client.batcher")

TransportT = TypeVar("TransportT")

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


class Buffer(Generic[TransportT]):
    """Packets handed over and not yet confirmed, and the rules for sending them, over a
    ``transport`` (sync or asyncio: the batchers say which). Options as ``ProducerOptions``
    (``options=``, keywords override it); ``_init_flusher`` sets up the flusher's own state."""

    def __init__(
        self,
        transport: TransportT,
        options: ProducerOptions | None = None,
        *,
        note: Note | None = None,
        extra: Extra | None = None,
        **overrides: Any,
    ) -> None:
        self.transport = transport
        options = ProducerOptions.of(options, overrides)
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
        self._init_flusher()

    def _init_flusher(self) -> None:
        """The flusher's own state (a thread or a task), set up by each batcher."""

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

    def _add_now(self, item: dict[str, Any]) -> bool:
        """Append ``item`` if there is room without waiting; False: the buffer is full. (The
        sessions' hot paths append below ``limit`` themselves and call ``add`` only at it.)"""
        items = self.items
        if len(items) < self.limit:  # the bound is approximate across producer threads
            items.append(item)
            return True
        return self._offer(item)

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

    def __init__(self, buffer: Buffer[Any]) -> None:
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
