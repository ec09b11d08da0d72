"""``AsyncSession``: the asyncio twin of ``Session`` (session.py describes both)."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Mapping
from types import TracebackType
from typing import Any

from ingest_client.batcher import AsyncBatcher
from ingest_client.errors import Terminated
from ingest_client.producer import SESSION_FIELD, Producer, end_state, now, wire_time
from ingest_client.transports import open_async_transport


class AsyncSession(Producer):
    """A producer run (asyncio). ``await session.sample(...)``."""

    _block = "async with"

    def _connect(self) -> None:
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
        # Producer._packet's steps inline, as in Session's closure: the hot path makes no call.
        packet = {
            self.id_field: variable,
            self.time_field: now() if ts is None else wire_time(ts),
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
            self._add_ending("truncated" if self.terminated else end_state(exc_type, exc), exc)
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
