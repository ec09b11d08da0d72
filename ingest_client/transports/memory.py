"""memory://<name>: messages kept in this process, with their arrival times (for tests)."""

from __future__ import annotations

import threading
import time
from typing import Any
from urllib.parse import urlsplit

from ingest_client.errors import TransportError

_lock = threading.Lock()
# name → [(monotonic arrival time, message)]
MESSAGES: dict[str, list[tuple[float, bytes]]] = {}
# name → number of publish calls still to fail (to exercise retries)
FAILURES: dict[str, int] = {}


def received(name: str) -> list[tuple[float, bytes]]:
    with _lock:
        return list(MESSAGES.get(name, []))


def fail_next(name: str, count: int) -> None:
    with _lock:
        FAILURES[name] = count


class MemoryTransport:
    def __init__(self, url: str, **options: Any) -> None:
        self.name = urlsplit(url).netloc or urlsplit(url).path

    def publish(self, message: bytes) -> None:
        with _lock:
            if FAILURES.get(self.name, 0) > 0:
                FAILURES[self.name] -= 1
                raise TransportError("memory transport: injected failure")
            MESSAGES.setdefault(self.name, []).append((time.monotonic(), message))

    def close(self) -> None:
        pass


class AsyncMemoryTransport:
    def __init__(self, url: str, **options: Any) -> None:
        self.sync = MemoryTransport(url)

    async def publish(self, message: bytes) -> None:
        self.sync.publish(message)

    async def close(self) -> None:
        pass
