"""Helpers of the session tests: a recording end hook, an events listener, a full server thread."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections.abc import Callable
from typing import Any

import orjson
import uvicorn
from redis.asyncio import Redis

from latest_server import keys
from latest_server.consumer import Consumer
from latest_server.resources import Resources
from latest_server.sessions import Session
from latest_server.settings import Settings
from latest_server.web.app import create_app
from tests.conftest import free_port


class RecordingHook:
    """A real end hook that records its calls (thread-safe: servers run in other threads)."""

    def __init__(self, fail_first: int = 0, error: Exception | None = None) -> None:
        self.calls: list[tuple[Session, list[str]]] = []
        self.failures_left = fail_first
        self.error = error or RuntimeError("the merge failed (on purpose)")
        self.lock = threading.Lock()

    async def __call__(self, session: Session, variables: list[str]) -> None:
        with self.lock:
            if self.failures_left > 0:
                self.failures_left -= 1
                raise self.error
            self.calls.append((session, variables))

    def states(self, session_id: str) -> list[str]:
        with self.lock:
            return [s.state for s, _ in self.calls if s.id == session_id]


class EventListener:
    """Subscribes to the session events channel and keeps every message."""

    def __init__(self, redis: Redis) -> None:
        self.pubsub = redis.pubsub()
        self.events: list[dict[str, Any]] = []
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> EventListener:
        await self.pubsub.subscribe(keys.session_events())
        self.task = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        async for message in self.pubsub.listen():
            if message["type"] == "message":
                self.events.append(orjson.loads(message["data"]))

    async def __aexit__(self, *exc: object) -> None:
        assert self.task is not None
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        await self.pubsub.aclose()  # type: ignore[no-untyped-call]

    def of(self, session_id: str, event: str | None = None) -> list[dict[str, Any]]:
        return [
            e
            for e in self.events
            if e["id"] == session_id and (event is None or e["event"] == event)
        ]


class FullServer:
    """A whole server process in a thread: Resources (with the given end hook), the HTTP app on
    uvicorn and, with AMQP_URL, the consumer, all on one event loop of its own."""

    def __init__(self, settings: Settings, on_end: Callable[..., Any] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.settings = dataclasses.replace(settings, port=self.port)
        self.on_end = on_end
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.stop_event: asyncio.Event | None = None
        self.error: BaseException | None = None
        self.resources: Resources | None = None
        self.thread = threading.Thread(target=self._thread, daemon=True)

    def _thread(self) -> None:
        try:
            self.loop.run_until_complete(self._main())
        except BaseException as exc:
            self.error = exc
            self.ready.set()
        finally:
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()

    async def _main(self) -> None:
        self.stop_event = asyncio.Event()
        resources = await Resources.open(self.settings, on_end=self.on_end)
        self.resources = resources
        consumer = None
        tasks = []
        try:
            if self.settings.amqp_url:
                consumer = Consumer(self.settings, resources.ingestor)
                await consumer.start()
                tasks.append(asyncio.create_task(consumer.run()))
            config = uvicorn.Config(
                create_app(self.settings, resources=resources),
                host="127.0.0.1",
                port=self.port,
                log_level="warning",
                lifespan="on",
            )
            server = uvicorn.Server(config)
            tasks.append(asyncio.create_task(server.serve()))
            while not server.started:  # noqa: ASYNC110 -- uvicorn offers no event for it
                await asyncio.sleep(0.01)
            self.ready.set()
            await self.stop_event.wait()
            server.should_exit = True
            if consumer is not None:
                await consumer.stop()
            await asyncio.gather(*tasks)
        finally:
            if consumer is not None:
                await consumer.close()
            await resources.close()

    def __enter__(self) -> FullServer:
        self.thread.start()
        if not self.ready.wait(20) or self.error is not None:
            raise RuntimeError(f"the server did not start: {self.error!r}")
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.stop_event is not None
        self.loop.call_soon_threadsafe(self.stop_event.set)
        self.thread.join(20)
        deadline = time.monotonic() + 5
        while self.thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
