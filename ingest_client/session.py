"""Sessions: a producer run as a context manager.

::

    with Session("run-42", url="amqp://guest:guest@localhost/") as session:
        for step in range(1000):
            session.sample("speed", 3.2)

On entry the session document is published (and confirmed) with state ``open``, or ``waiting``
with ``waiting=True`` (then ``start()``, or the first sample, opens it). Samples are buffered and
published in rate-limited batches (batcher.py); each batch also carries a session update with
the time range of the samples sent so far. On exit the last batch carries the session document
with the end state: ``closed`` on a normal exit, ``truncated`` on Ctrl+C (KeyboardInterrupt,
or cancellation under asyncio) or SIGTERM (raised as ``Terminated`` while the session is open),
``failed`` on an exception, which is re-raised. The final flush is always attempted, and its
failure raises ``FlushFailed``.

Leaving the block never hangs: the final flush is given ``close_timeout`` seconds (default 30)
whatever the broker or server does, then ``FlushFailed`` is raised with every packet not
confirmed in its ``unsent`` list. A second Ctrl+C or SIGTERM while the session closes stops
the close at once (the signal's exception propagates, the unsent count is logged), so a
producer can always be stopped.

On the wire a sample is ``{"id": <variable>, "ts": <epoch s>, "value": …, "@session": <id>}``
(plus any extra fields) and a session document is ``{"id": <session id>, "ts": <now>,
"@session": {"state": …, "start": …, "end": …, "info": {…}, "error": …}}``.

Both sessions take the same settings, ``ProducerOptions`` (options.py), as keyword arguments or
as ``options=``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import datetime
from types import FrameType, TracebackType
from typing import Any

from ingest_client.batcher import AsyncBatcher, Batcher
from ingest_client.buffer import Buffer
from ingest_client.errors import Terminated
from ingest_client.options import ProducerOptions
from ingest_client.transports import open_async_transport, open_transport

SESSION_FIELD = "@session"  # the server's reserved field (latest_server.packets.SESSION_FIELD)
URL_VARIABLE = "LATEST_URL"

_now = time.time


def _url(url: str | None) -> str:
    found = url or os.environ.get(URL_VARIABLE)
    if not found:
        raise ValueError(f"give url= or set {URL_VARIABLE} (amqp://…, http://…)")
    return found


def _time(ts: Any) -> Any:
    if ts is None:
        return _now()
    if isinstance(ts, datetime):
        return ts.timestamp()
    return ts


def end_state(exc_type: type[BaseException] | None, exc: BaseException | None) -> str:
    """The state a session ends in, given how its block was left."""
    if exc_type is None:
        return "closed"
    if issubclass(exc_type, (KeyboardInterrupt, Terminated, asyncio.CancelledError)):
        return "truncated"
    if issubclass(exc_type, SystemExit) and isinstance(exc, SystemExit) and not exc.code:
        return "closed"
    return "failed"


class Producer:
    """A session's bookkeeping; the subclasses add the transport, the batcher and the block."""

    _buffer: Buffer  # the session's batcher
    _block = "with"  # what to use the session inside, for the error outside it

    def __init__(self, session_id: str | None, url: str | None, options: ProducerOptions) -> None:
        self.id = session_id or uuid.uuid4().hex
        self.url = _url(url)
        self.options = options
        self.info = dict(options.info) if options.info else None
        self._state = "new"
        self.waiting = options.waiting
        self.id_field = options.id_field
        self.time_field = options.time_field
        self.transport_options = {
            "exchange": options.exchange,
            "routing_key": options.routing_key,
            "timeout": options.timeout,
        }
        self.handle_sigterm = options.handle_sigterm
        self.first_ts: Any = None
        self.last_ts: Any = None  # of the last sample taken since the last flush, if any
        self._others = 0  # packets added that are not samples (send, start, the end document)
        self._others_lock = threading.Lock()

    @property
    def state(self) -> str:
        """new, waiting, open, then closed, truncated or failed."""
        return self._state

    @state.setter
    def state(self, state: str) -> None:
        self._state = state
        self._state_changed(state)

    def _state_changed(self, state: str) -> None:
        """The sessions keep an "open" flag where their ``sample`` reads it cheaply."""

    @property
    def samples(self) -> int:
        """Samples buffered so far."""
        with self._others_lock:
            return self._buffer.added() - self._others

    def _added_other(self) -> None:
        with self._others_lock:
            self._others += 1

    def _may_handle_sigterm(self) -> bool:
        """Only in the main thread, and only if nobody else handles SIGTERM."""
        return (
            self.handle_sigterm
            and threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None)
        )

    def _document(self, **session: Any) -> dict[str, Any]:
        return {self.id_field: self.id, self.time_field: _now(), SESSION_FIELD: session}

    def _opening(self) -> dict[str, Any]:
        state = "waiting" if self.waiting else "open"
        self.state = state
        fields: dict[str, Any] = {"state": state}
        if self.info:
            fields["info"] = self.info
        return self._document(**fields)

    def _ending(self, state: str, exc: BaseException | None) -> dict[str, Any]:
        self.state = state
        fields: dict[str, Any] = {"state": state}
        if state == "failed" and exc is not None:
            fields["error"] = f"{type(exc).__name__}: {exc}"[:4096]
        return self._document(**fields)

    def _note(self, batch: list[dict[str, Any]]) -> None:
        """Packets taken from the buffer (early or by a flush): keep the time range."""
        for packet in reversed(batch):
            if isinstance(packet.get(SESSION_FIELD), str):
                self.last_ts = packet.get(self.time_field)
                break
        else:
            return
        if self.first_ts is None:
            for packet in batch:
                if isinstance(packet.get(SESSION_FIELD), str):
                    self.first_ts = packet.get(self.time_field)
                    break

    def _range_update(self) -> list[dict[str, Any]]:
        """The session update riding along with a flush that carries samples: the time range
        sent so far (a sample's time as given; the server also widens the range from the
        samples themselves)."""
        last, self.last_ts = self.last_ts, None
        if last is None:
            return []
        return [self._document(start=self.first_ts, end=last)]

    def _packet(self, variable: str, value: Any, ts: Any, fields: dict[str, Any]) -> dict[str, Any]:
        packet = {
            self.id_field: variable,
            self.time_field: _now() if ts is None else _time(ts),
            "value": value,
            SESSION_FIELD: self.id,
        }
        if fields:
            packet.update(fields)
        return packet

    def _not_open(self) -> None:
        if self.state == "waiting":
            self.start()
        else:
            raise RuntimeError(
                f"session {self.id!r} is {self.state}: use it inside '{self._block}'"
            )

    def start(self) -> None:
        """Waiting → open (the first sample does it too)."""
        raise NotImplementedError


class Session(Producer):
    """A producer run (sync). Thread-safe: ``sample`` may be called from any thread."""

    def __init__(
        self,
        session_id: str | None = None,
        *,
        url: str | None = None,
        options: ProducerOptions | None = None,
        **overrides: Any,
    ) -> None:
        self._set_open: Callable[[bool], None] = _ignore  # until _bind_sample
        super().__init__(session_id, url, ProducerOptions.of(options, overrides))
        self.transport = open_transport(self.url, **self.transport_options)
        self.batcher = self._buffer = Batcher(
            self.transport, self.options, note=self._note, extra=self._range_update
        )
        self._previous_sigterm: Any = None
        self._add = self.batcher.add
        # The hot path as a closure over locals: no attribute look-up per sample (a method with
        # the same body costs ~0.3 µs more per sample).
        self.sample = self._bind_sample()  # type: ignore[method-assign]

    def _state_changed(self, state: str) -> None:
        self._set_open(state == "open")

    def _bind_sample(self) -> Callable[..., None]:
        id_field, time_field, session_id, now = self.id_field, self.time_field, self.id, _now
        batcher = self.batcher
        items, limit, add = batcher.items, batcher.limit, batcher.add
        append = items.append  # the list is never replaced (see Buffer._cut)
        is_open = self.state == "open"

        def set_open(value: bool) -> None:
            nonlocal is_open
            is_open = value

        def set_limit(value: int) -> None:
            nonlocal limit
            limit = value

        def sample(variable: str, value: Any, ts: Any = None, **fields: Any) -> None:
            if not is_open:
                self._not_open()
            packet = {
                id_field: variable,
                time_field: now() if ts is None else _time(ts),
                "value": value,
                SESSION_FIELD: session_id,
            }
            if fields:
                packet.update(fields)
            # Counted by the batcher (Session.samples), not here. At the limit, add encodes the
            # buffer ahead of the flush, or blocks while it is full.
            if len(items) < limit:
                append(packet)
            else:
                add(packet)

        self._set_open = set_open
        batcher.on_limit = set_limit
        sample.__doc__ = Session.sample.__doc__
        return sample

    def __enter__(self) -> Session:
        self.batcher.open(self._opening())
        if self._may_handle_sigterm():
            self._previous_sigterm = signal.signal(signal.SIGTERM, _raise_terminated)
        return self

    def start(self) -> None:
        """Waiting → open (the first sample does it too)."""
        if self.state == "waiting":
            self.state = "open"
            self._add(self._document(state="open"))
            self._added_other()

    def sample(self, variable: str, value: Any, ts: Any = None, **fields: Any) -> None:
        """Buffer one sample of ``variable``; ``ts`` defaults to now (epoch seconds, a datetime,
        or anything the server parses). Blocks while the buffer is full, then raises BufferFull."""
        # Replaced per instance by the closure _bind_sample makes (the same steps).
        if self.state != "open":
            self._not_open()
        self._add(self._packet(variable, value, ts, fields))

    def sample_nowait(self, variable: str, value: Any, ts: Any = None, **fields: Any) -> None:
        """Like ``sample`` but raises BufferFull at once when the buffer is full."""
        if self.state != "open":
            self._not_open()
        self._add(self._packet(variable, value, ts, fields), False)

    def send(self, packet: Mapping[str, Any]) -> None:
        """Buffer a packet as it is (it must have the server's id and time fields)."""
        if self.state != "open":
            self._not_open()
        self._add({**packet, SESSION_FIELD: self.id})
        self._added_other()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            state = end_state(exc_type, exc)
            self.batcher.add_last(self._ending(state, exc))
            self._added_other()
            # Bounded by close_timeout; a SIGTERM or Ctrl+C arriving meanwhile ends it at once
            # (the handler above is still installed for that).
            self.batcher.close()
        finally:
            self.batcher.release()
            if self._previous_sigterm is not None:
                signal.signal(signal.SIGTERM, self._previous_sigterm)
                self._previous_sigterm = None


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated(f"signal {signum}")


def _ignore(value: bool) -> None:
    pass


class AsyncSession(Producer):
    """A producer run (asyncio). ``await session.sample(...)``."""

    _block = "async with"

    def __init__(
        self,
        session_id: str | None = None,
        *,
        url: str | None = None,
        options: ProducerOptions | None = None,
        **overrides: Any,
    ) -> None:
        super().__init__(session_id, url, ProducerOptions.of(options, overrides))
        self.transport = open_async_transport(self.url, **self.transport_options)
        self.batcher = self._buffer = AsyncBatcher(
            self.transport, self.options, note=self._note, extra=self._range_update
        )
        self.terminated = False
        self._items = self.batcher.items  # never replaced (see Buffer._cut)
        self._limit = self.batcher.limit
        self.batcher.on_limit = self._set_limit
        self._open = self.state == "open"
        self._task: asyncio.Task[Any] | None = None
        self._sigterm_installed = False

    async def __aenter__(self) -> AsyncSession:
        await self.batcher.open(self._opening())
        self._task = asyncio.current_task()
        if self._may_handle_sigterm():
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, self._terminate)
            self._sigterm_installed = True
        return self

    def _terminate(self) -> None:
        self.terminated = True
        if self._task is not None:
            self._task.cancel()

    def _state_changed(self, state: str) -> None:
        self._open = state == "open"

    def _set_limit(self, limit: int) -> None:
        self._limit = limit

    def start(self) -> None:
        if self.state == "waiting":
            self.state = "open"
            self.batcher.add_nowait(self._document(state="open"))
            self._added_other()

    async def sample(self, variable: str, value: Any, ts: Any = None, **fields: Any) -> None:
        """Buffer one sample; waits while the buffer is full, then raises BufferFull."""
        if not self._open:
            self._not_open()
        packet = {
            self.id_field: variable,
            self.time_field: _now() if ts is None else _time(ts),
            "value": value,
            SESSION_FIELD: self.id,
        }
        if fields:
            packet.update(fields)
        items = self._items
        if len(items) < self._limit:
            items.append(packet)
        else:
            await self.batcher.add(packet)

    def sample_nowait(self, variable: str, value: Any, ts: Any = None, **fields: Any) -> None:
        if self.state != "open":
            self._not_open()
        self.batcher.add_nowait(self._packet(variable, value, ts, fields))

    async def send(self, packet: Mapping[str, Any]) -> None:
        if self.state != "open":
            self._not_open()
        await self.batcher.add({**packet, SESSION_FIELD: self.id})
        self._added_other()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            state = "truncated" if self.terminated else end_state(exc_type, exc)
            self.batcher.add_last(self._ending(state, exc))
            self._added_other()
            # Bounded by close_timeout; a cancellation meanwhile (a second Ctrl+C, a SIGTERM)
            # ends it at once.
            await self.batcher.close()
        except asyncio.CancelledError:
            if not self.terminated:
                raise
            self._uncancel()
            raise Terminated("SIGTERM while closing") from None
        finally:
            await self.transport.close()
            if self._sigterm_installed:
                asyncio.get_running_loop().remove_signal_handler(signal.SIGTERM)
                self._sigterm_installed = False
        if self.terminated:
            self._uncancel()
            raise Terminated("SIGTERM")

    def _uncancel(self) -> None:
        """Withdraw the cancellations our SIGTERM handler requested (it raises Terminated)."""
        if self._task is not None:
            while self._task.cancelling():
                self._task.uncancel()
