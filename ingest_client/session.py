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
as ``options=``. ``AsyncSession`` is in async_session.py; what the two share is producer.py.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Mapping
from types import FrameType, TracebackType
from typing import Any

from ingest_client.batcher import Batcher
from ingest_client.errors import Terminated
from ingest_client.producer import SESSION_FIELD, Producer, end_state, now, wire_time
from ingest_client.transports import open_transport


class Session(Producer):
    """A producer run (sync). Thread-safe: ``sample`` may be called from any thread."""

    def _connect(self) -> None:
        self._set_open: Callable[[bool], None] = _ignore  # until _bind_sample
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
        id_field, time_field, session_id, clock = self.id_field, self.time_field, self.id, now
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
                time_field: clock() if ts is None else wire_time(ts),
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
            self._add_ending(end_state(exc_type, exc), exc)
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
