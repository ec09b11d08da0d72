"""The completion detector, session events, and the background jobs that run them.

For producers that never close their session, data is declared complete once the session's entry
count stops changing: every open session is polled; the first wait is ``LATEST_COMPLETION_DELAY``,
and each poll that finds the count unchanged shortens the next wait to ``SHRINK`` of the previous
one; ``LATEST_COMPLETION_REPEATS`` unchanged polls in a row make the session ``complete``. With
3 repeats and SHRINK 0.75 the data must have been quiet for at least 2.31 × the delay, so a
producer sending once per 2 × delay is never declared complete.

Each poll is one Lua script (lua/session_poll.lua) that acts only when the session is due by the
Redis clock and moves its due time in the same step: every server process runs the detector, each
step happens once, completion is declared once, and all of the detector's state is in Redis (a
restart goes on where it was). Declaring completion queues the session's end hook, which
``SessionEnds`` runs at least once: here it publishes the event (AMQP exchange
``LATEST_EVENTS_EXCHANGE``, routing key ``session.<state>``, and ``LATEST_COMPLETION_WEBHOOK``),
then calls the injected ``on_end`` hook (the final offload + merge). The Redis channel
``keys.session_events()`` already carried the change, from the script itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any

import aio_pika
import httpx
import orjson
from aio_pika.abc import AbstractExchange, AbstractRobustConnection

from latest_server import keys
from latest_server.errors import StoreUnavailable
from latest_server.redis_client import CONNECTION_LOST
from latest_server.sessions import EndHook, Session, SessionEnds, SessionStore
from latest_server.settings import Settings

log = logging.getLogger(__name__)

SHRINK = 0.75  # the next wait after an unchanged poll, as a fraction of the previous one
WEBHOOK_TIMEOUT = 10.0


class CompletionDetector:
    def __init__(self, store: SessionStore, *, repeats: int = 3, shrink: float = SHRINK) -> None:
        self.store = store
        self.repeats = repeats
        self.shrink = shrink

    async def step(self) -> list[str]:
        """Poll every due open session once; returns the ids declared complete by this call."""
        completed = []
        for session_id in await self.store.due(keys.sessions_active()):
            if await self.store.poll(session_id, repeats=self.repeats, shrink=self.shrink) == 2:
                log.info("session %r: no new data, declared complete", session_id)
                completed.append(session_id)
        return completed


@dataclass(eq=False, kw_only=True)
class EventSink:
    """Publishes "a session ended or completed" events outside: to a topic exchange (routing key
    ``session.<state>``, publisher confirms) and to a webhook (JSON POST). Raises when one could
    not be delivered, so the caller retries."""

    amqp_url: str | None
    exchange_name: str = "latest.events"
    webhook: str | None = None
    declare: bool = True
    connection: AbstractRobustConnection | None = field(default=None, init=False)
    exchange: AbstractExchange | None = field(default=None, init=False)
    http: httpx.AsyncClient | None = field(default=None, init=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> EventSink:
        return cls(
            amqp_url=settings.amqp_url,
            exchange_name=settings.events_exchange,
            webhook=settings.completion_webhook,
            declare=settings.declare,
        )

    async def emit(self, session: Session, variables: list[str]) -> None:
        event = {
            "event": f"session.{session.state}",
            "session": session.to_json(with_variables=False),
            "variables": variables,
        }
        body = orjson.dumps(event)
        if self.amqp_url:
            exchange = await self._exchange()
            await exchange.publish(
                aio_pika.Message(
                    body,
                    content_type="application/json",
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    message_id=f"{session.id}:{session.state}",
                ),
                routing_key=f"session.{session.state}",
            )
        if self.webhook:
            if self.http is None:
                self.http = httpx.AsyncClient(timeout=WEBHOOK_TIMEOUT)
            response = await self.http.post(
                self.webhook, content=body, headers={"content-type": "application/json"}
            )
            response.raise_for_status()

    async def _exchange(self) -> AbstractExchange:
        if self.exchange is None:
            assert self.amqp_url
            self.connection = await aio_pika.connect_robust(self.amqp_url)
            channel = await self.connection.channel(publisher_confirms=True)
            if self.declare:
                self.exchange = await channel.declare_exchange(
                    self.exchange_name, aio_pika.ExchangeType.TOPIC, durable=True
                )
            else:
                self.exchange = await channel.get_exchange(self.exchange_name)
        return self.exchange

    async def close(self) -> None:
        if self.connection is not None:
            await self.connection.close()
        if self.http is not None:
            await self.http.aclose()


def notify_then(store: SessionStore, events: EventSink, on_end: EndHook | None) -> EndHook:
    """The end hook SessionEnds runs: publish the event once per state (a retry after a failed
    ``on_end`` does not publish it again), then call ``on_end``."""

    async def hook(session: Session, variables: list[str]) -> None:
        flag = keys.session(keys.key_for(session.id))
        notified: Any = await store.redis.hget(flag, "notified")
        if notified is None or notified.decode() != session.state:
            await events.emit(session, variables)
            await store.redis.hset(flag, "notified", session.state)
        if on_end is not None:
            await on_end(session, variables)

    return hook


class SessionJobs:
    """The completion detector and the end-hook runner of one server process, as two tasks.

    ``on_end(session, variables)`` is the final offload + merge of a session's variables."""

    def __init__(
        self,
        store: SessionStore,
        settings: Settings,
        on_end: EndHook | None = None,
        *,
        events: EventSink | None = None,
    ) -> None:
        self.store = store
        self.events = events or EventSink.from_settings(settings)
        self.detector = CompletionDetector(store, repeats=settings.completion_repeats)
        self.ends = SessionEnds(store, notify_then(store, self.events, on_end))
        # How often to look for due sessions: often enough for the delay (due times are exact).
        self.tick = min(1.0, settings.completion_delay / 8)
        self.stopping = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self.tasks = [
            asyncio.create_task(self._loop(self.detector.step), name="completion-detector"),
            asyncio.create_task(self._loop(self.ends.step), name="session-ends"),
        ]

    async def _loop(self, step: Any) -> None:
        while not self.stopping.is_set():
            try:
                await step()
            except (StoreUnavailable, *CONNECTION_LOST) as exc:
                log.warning("session jobs: Redis unavailable (%s); retrying", exc)
            except Exception:  # keep the loop alive; the next tick retries
                log.exception("session jobs: unexpected error")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), self.tick)

    async def close(self) -> None:
        self.stopping.set()
        for task in self.tasks:
            await task
        await self.events.close()
