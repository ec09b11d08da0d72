"""What ``Session`` and ``AsyncSession`` share, without I/O: a run's identity and state, the
packets and session documents it publishes, the time range sent so far, and the end state
given how its block was left. session.py describes the behaviour."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
import uuid
from datetime import datetime
from typing import Any

from ingest_client.buffer import Buffer
from ingest_client.errors import Terminated
from ingest_client.options import ProducerOptions

SESSION_FIELD = "@session"  # the server's reserved field (latest_server.packets.SESSION_FIELD)
URL_VARIABLE = "LATEST_URL"

now = time.time  # the clock of every packet and document


def _url(url: str | None) -> str:
    found = url or os.environ.get(URL_VARIABLE)
    if not found:
        raise ValueError(f"give url= or set {URL_VARIABLE} (amqp://…, http://…)")
    return found


def wire_time(ts: Any) -> Any:
    """A sample's time as sent: now, a datetime as epoch seconds, anything else as given."""
    if ts is None:
        return now()
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

    _buffer: Buffer[Any]  # the session's batcher
    _block = "with"  # what to use the session inside, for the error outside it

    def __init__(
        self,
        session_id: str | None = None,
        *,
        url: str | None = None,
        options: ProducerOptions | None = None,
        **overrides: Any,
    ) -> None:
        options = ProducerOptions.of(options, overrides)
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
        self._connect()

    def _connect(self) -> None:
        """Open the transport and the batcher: each session its own kind (sync or asyncio)."""

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

    def _add_ending(self, state: str, exc: BaseException | None) -> None:
        """Buffer the session's final document (past the bound: it must go out)."""
        self._buffer.add_last(self._ending(state, exc))
        self._added_other()

    def _may_handle_sigterm(self) -> bool:
        """Only in the main thread, and only if nobody else handles SIGTERM."""
        return (
            self.handle_sigterm
            and threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None)
        )

    def _document(self, **session: Any) -> dict[str, Any]:
        return {self.id_field: self.id, self.time_field: now(), SESSION_FIELD: session}

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
            self.time_field: now() if ts is None else wire_time(ts),
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
