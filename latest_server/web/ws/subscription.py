"""One variable on one websocket: history from the stores, then live, with no gap and no
duplicate (the algorithm of docs/streaming.md).

State: ``epoch`` E, ``seq`` S (everything at or below S has been queued for the socket, in seq
order) and a mode:

- ``catchup``: read ``(S, S + page]`` from the stores (upstream first, seq-contiguous) and queue
  it as backlog pages, waiting for the socket to drain between pages; no live buffering. Ends
  when S is close to the variable's top.
- ``switching``: the feed is subscribed and confirmed; live entries are buffered (bounded) while
  the stores are read up to the top and past the highest buffered seq; then, without yielding to
  the event loop, the buffer's entries above S are queued if they continue S exactly, and the
  mode becomes ``live``. Otherwise read again. (That decision is ``splice``, in splice.py.)
- ``live``: a feed entry is queued iff its seq is S + 1; at or below S it is an overlap and
  dropped; above S + 1 means pub/sub lost something, and the subscription switches again (refilling
  the hole from the stores). Another epoch means Redis lost its data: ``reset``.

A socket that cannot take more (its queue is full) rolls every subscription back to what it had
really queued and puts it in ``catchup``: the stores are that client's buffer.

A subscription knows its socket only as an ``Outbox`` (what it queues frames on) and gets the
live feed, the range reader, the frame cache and the catch-up cap it uses as arguments.

Closing is final: ``closed`` is set once and never cleared, whatever mode the task was in when
it was cancelled (waiting for a variable to exist, catching up, waiting out a store outage), and
the task's feed subscription ends with the task (``stop_tasks`` has why a cancellation alone is
not enough).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any, Literal, Protocol

import orjson
from redis.exceptions import RedisError

from latest_server.errors import StoreUnavailable
from latest_server.feed import LiveFeed
from latest_server.stores.ranges import Position, Range, RangeReader
from latest_server.web.ws.protocol import FrameCache, entry
from latest_server.web.ws.splice import Buffered, diverged, read_to, splice
from latest_server.web.ws.tasks import stop_tasks

log = logging.getLogger(__name__)

Mode = Literal["catchup", "switching", "live", "closed"]
PAGE = 2048  # entries per store read while catching up
SWITCH_AT = 512  # entries behind the top below which catching up ends and switching begins
BUFFER_LIMIT = 20_000  # live entries buffered while switching; past it, catch up again
CHUNK_BYTES = 65_536  # about this much per backlog frame (a burst, as RTA sends)
RETRY_MIN, RETRY_MAX = 0.1, 5.0  # seconds between reads while a store is unavailable
CHECKED = 256  # last entries sent whose seq and ts are checked against the stores on confirmed


class Outbox(Protocol):
    """What a subscription needs of its socket: somewhere to queue its frames."""

    def control(self, message: dict[str, Any]) -> None:
        """Queue a protocol frame (live, reset, error...): always taken."""

    def offer(self, frame: bytes, subscription: Subscription, last: int) -> bool:
        """Queue entries ending at seq ``last`` without waiting; False if the queue was full
        (the subscription has been rolled back to catch up)."""

    async def put(self, frame: bytes, subscription: Subscription, last: int) -> bool:
        """Queue a backlog page once there is room; False if rolled back meanwhile."""


class Subscription:
    """One variable on one socket, from its start (``since``, ``from``, ``latest`` or the
    beginning) to live."""

    def __init__(
        self,
        outbox: Outbox,
        variable_id: str,
        key: str,
        *,
        feed: LiveFeed,
        ranges: RangeReader,
        frames: FrameCache,
        catchups: asyncio.Semaphore,
        since: tuple[int, int] | None = None,
        from_us: int | None = None,
        latest: bool = False,
    ) -> None:
        self.outbox = outbox
        self.feed = feed
        self.ranges = ranges
        self.frames = frames
        self.catchups = catchups  # the process's cap on concurrent catch-up reads
        self.id = variable_id
        self.key = key
        self.from_us = from_us
        self.latest = latest
        self.epoch: int | None = since[0] if since else None
        self.seq: int | None = since[1] if since else None  # None: the epoch's beginning
        self.mode: Mode = "catchup"
        self.buffer: list[Buffered] | None = None
        self.wake = asyncio.Event()
        self.probe_top = 0  # the top seen by the previous tail probe
        self.sent: deque[tuple[int, int]] = deque(maxlen=CHECKED)  # (seq, ts) of the last sent
        self.check = False  # the feed resubscribed: are the entries sent still those stored?
        self.task: asyncio.Task[None] | None = None
        self.closed = False  # final: no mode change brings the subscription back

    def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name=f"ws-stream-{self.key[:8]}")

    def stop(self) -> asyncio.Task[None] | None:
        """Close the subscription at once and cancel its task; returns the task, for ``stop_tasks``
        to wait for (a socket stops all its subscriptions first, then waits for all at once)."""
        self.closed = True
        self.mode = "closed"
        self.wake.set()
        self.feed.unsubscribe(self.key, self)
        if self.task is not None:
            self.task.cancel()
        return self.task

    async def close(self) -> None:
        task = self.stop()
        if task is not None:
            await stop_tasks([task])

    # --- the subscription's task -------------------------------------------------------------

    async def _run(self) -> None:
        delay = RETRY_MIN
        try:
            if self.latest:
                await self._start_latest()
            while not self.closed:
                try:
                    if self.mode == "live":
                        await self.wake.wait()
                        self.wake.clear()
                        continue
                    if self.mode == "catchup":
                        await self._catch_up()
                    if self.mode in ("catchup", "switching"):
                        await self._switch()
                    delay = RETRY_MIN
                except (RedisError, StoreUnavailable, OSError) as exc:
                    # Redis or the object store is away (a restart, a failover): the position
                    # is kept, so read again from it once they are back.
                    log.warning("subscription of %s waits for the stores: %s", self.id, exc)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, RETRY_MAX)
                    self._read_again()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug: tell the client, which may resume with since
            log.exception("subscription of %s failed", self.id)
            self.outbox.control(
                {"type": "error", "id": self.id, "reason": "unavailable", "message": str(exc)}
            )
            self.closed = True
            self.mode = "closed"
        finally:
            # A feed subscription made after this one was closed (its task went on past a lost
            # cancellation) must not outlive it.
            self.feed.unsubscribe(self.key, self)

    async def _start_latest(self) -> None:
        position, found = await self.ranges.latest(self.key)
        self.epoch = position.epoch
        self.seq = position.top
        if found is not None and position.epoch is not None:
            self.outbox.control(
                {"type": "backlog", "id": self.id, "entries": [entry(position.epoch, found)]}
            )
        # nothing between the latest document and the top is wanted: go straight to live
        self.mode = "switching"

    def _adopt(self, position: Position) -> bool:
        """Line up with the variable's current epoch; False if it has none (no history in
        Redis yet: wait for the first live entry)."""
        if position.epoch is None:
            return False
        if self.epoch is None:
            self.epoch = position.epoch
            self.seq = position.base if self.seq is None else self.seq
        elif position.epoch != self.epoch:
            # Another epoch: Redis lost its counters. Seqs of the old epoch mean nothing now.
            self.outbox.control(
                {"type": "reset", "id": self.id, "epoch": position.epoch, "lost": None}
            )
            self.epoch = position.epoch
            self.seq = position.base
            self.sent.clear()
        elif self.seq is not None and self.seq > position.top:
            # History went back: a failover promoted a replica that lacked the last entries
            # sent (replication is asynchronous); the next entries take their seqs again.
            self._went_back(position.top + 1)
        if self.seq is None or self.seq < position.base:
            self.seq = position.base
        return True

    async def _catch_up(self) -> None:
        log.debug("%s catches up from %s:%s", self.id, self.epoch, self.seq)
        while self.mode == "catchup":
            (position,) = await self.ranges.positions([self.key])
            if not self._adopt(position):
                return
            assert self.epoch is not None and self.seq is not None
            if position.top - self.seq <= SWITCH_AT:
                return
            high = min(self.seq + PAGE, position.top)
            # Only the store read takes a catch-up slot: waiting for a slow socket must not
            # hold one.
            async with self.catchups:
                found = await self.ranges.read_range(self.key, self.epoch, self.seq, high)
            if found.position.epoch != self.epoch or self.mode != "catchup":
                continue
            for frame, last in self._pages(found, high):
                if not await self.outbox.put(frame, self, last):
                    break  # the socket overflowed and rolled us back: read again
                self.seq = last

    async def _switch(self) -> None:
        log.debug("%s switches to live from %s:%s", self.id, self.epoch, self.seq)
        if self.buffer is None:
            self.buffer = []
        self.mode = "switching"
        await self.feed.subscribe(self.key, self)
        while self.mode == "switching" and not self.closed:
            (position,) = await self.ranges.positions([self.key])
            if not self._adopt(position):
                self._go_live()  # nothing stored yet: the first entry will start the epoch
                return
            assert self.epoch is not None and self.seq is not None
            if self.check and self.sent:
                self.check = False
                low = min(self.sent[0][0] - 1, self.seq)
                stored = await self.ranges.read_range(self.key, self.epoch, low, self.seq)
                first = diverged(self.sent, self.seq, stored.entries)
                if stored.position.epoch == self.epoch and first is not None:
                    self._went_back(first)
            high = read_to(position.top, self.epoch, self.buffer or [])
            if high - self.seq > BUFFER_LIMIT:
                self.mode = "catchup"  # too far behind to switch in one read
                self.buffer = None
                return
            found = await self.ranges.read_range(self.key, self.epoch, self.seq, high)
            if self.mode != "switching":
                return  # overflowed while reading: catch up instead
            if found.position.epoch != self.epoch:
                continue
            # From here to _go_live nothing yields to the event loop: no live entry can slip
            # in between the stored entries and the buffered ones.
            for frame, last in self._pages(found, high):
                if not self.outbox.offer(frame, self, last):
                    return  # the socket overflowed: we are in catchup now
                self.seq = last
            self.seq = max(self.seq, high)
            spliced = splice(self.epoch, self.seq, self.buffer or [])
            if spliced is None:
                continue  # another epoch, or a hole: read the position again
            for epoch, seq, ts, doc in spliced:
                if not self._send_live(epoch, seq, ts, doc):
                    return
            self._go_live()
            return

    def _went_back(self, first: int) -> None:
        """History from ``first`` on is not what was sent: a reset names it; what follows is new."""
        assert self.seq is not None
        lost = [first, self.seq]
        self.seq = first - 1
        while self.sent and self.sent[-1][0] >= first:
            self.sent.pop()
        self.outbox.control(
            {"type": "reset", "id": self.id, "epoch": self.epoch, "lost": lost, "seq": self.seq}
        )

    def _read_again(self) -> None:
        if not self.closed:
            self.buffer = None
            self.mode = "catchup"

    def _go_live(self) -> None:
        if self.closed:
            return
        log.debug("%s is live at %s:%s", self.id, self.epoch, self.seq)
        self.buffer = None
        self.mode = "live"
        self.outbox.control({"type": "live", "id": self.id, "epoch": self.epoch, "seq": self.seq})

    def _pages(self, found: Range, high: int) -> list[tuple[bytes, int]]:
        """Backlog frames of about CHUNK_BYTES, each with the seq it ends at; a lost range is
        announced by a reset frame in its place."""
        assert self.epoch is not None
        pages: list[tuple[bytes, int]] = []
        chunk: list[dict[str, Any]] = []
        size = 0
        last = self.seq or 0
        lost = iter(sorted(found.lost))
        gap = next(lost, None)

        def flush(end: int) -> None:
            nonlocal chunk, size
            if chunk:
                frame = {"type": "backlog", "id": self.id, "entries": chunk}
                pages.append((orjson.dumps(frame), end))
            chunk, size = [], 0

        for stored in found.entries:
            while gap is not None and gap[0] < stored.seq:
                flush(gap[0] - 1)
                pages.append((self._lost_frame(gap), gap[1]))
                gap = next(lost, None)
            last = stored.seq
            self.sent.append((stored.seq, stored.ts))
            if self.from_us is not None and stored.ts < self.from_us:
                continue  # before the asked time: skipped, but it counts for contiguity
            chunk.append(entry(self.epoch, stored))
            size += len(stored.doc) + 64
            if size >= CHUNK_BYTES:
                flush(last)
        flush(last)
        while gap is not None:
            pages.append((self._lost_frame(gap), gap[1]))
            gap = next(lost, None)
        if not pages or pages[-1][1] < high:
            pages.append((b"", high))  # nothing to send, but the position moves to high
        return pages

    def _lost_frame(self, gap: tuple[int, int]) -> bytes:
        log.warning("history of %s lost seqs %s..%s of epoch %s", self.id, *gap, self.epoch)
        return orjson.dumps(
            {"type": "reset", "id": self.id, "epoch": self.epoch, "lost": list(gap)}
        )

    # --- feed callbacks (synchronous, on the feed's task) ----------------------------------

    def entry(self, epoch: int, seq: int, ts: int, doc: bytes) -> None:
        mode = self.mode
        if mode == "live":
            if epoch != self.epoch or self.seq is None:
                self._fall_back("catchup")
            elif seq == self.seq + 1:
                self._send_live(epoch, seq, ts, doc)
            elif seq > self.seq + 1:
                self.buffer = [(epoch, seq, ts, doc)]
                self._fall_back("switching")  # a hole: refill it from the stores
        elif mode == "switching" and self.buffer is not None:
            if len(self.buffer) < BUFFER_LIMIT:
                self.buffer.append((epoch, seq, ts, doc))
            else:
                self.buffer = None
                self.mode = "catchup"

    def confirmed(self) -> None:
        """The feed (re)subscribed: what was published meanwhile is in the stores (and what was
        sent may not be, after a failover: checked when switching)."""
        if self.mode == "live":
            self.check = True
            self.buffer = []
            self._fall_back("switching")

    def probe(self, position: Position) -> None:
        """The periodic tail check: behind a top seen one probe ago means a lost message."""
        if self.mode != "live":
            return
        if position.epoch is not None and position.epoch != self.epoch:
            self._fall_back("catchup")
        elif self.seq is not None and self.seq < min(self.probe_top, position.top):
            self.buffer = []
            self._fall_back("switching")
        self.probe_top = position.top

    def rolled_back(self, seq: int) -> None:
        """The socket dropped queued entries from ``seq`` on: send them again from the stores."""
        if self.closed:
            return
        if self.seq is None or seq - 1 < self.seq:
            self.seq = seq - 1
        self.buffer = None
        self._fall_back("catchup")

    def _send_live(self, epoch: int, seq: int, ts: int, doc: bytes) -> bool:
        if self.from_us is not None and ts < self.from_us:
            self.seq = seq
            return True
        if not self.outbox.offer(self.frames.entry(self.id, epoch, seq, ts, doc), self, seq):
            return False
        self.seq = seq
        self.sent.append((seq, ts))
        return True

    def _fall_back(self, mode: Mode) -> None:
        if self.closed:
            return
        self.mode = mode
        self.wake.set()
