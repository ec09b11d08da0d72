"""The transport interface: publish one message (a JSON array of packets) and return only once
the receiver confirmed it; raise ``TransportError`` otherwise. Retrying is the caller's job
(batcher.py), which never sends a confirmed message again."""

from __future__ import annotations

from typing import Protocol


class Transport(Protocol):
    def publish(self, message: bytes) -> None:
        """Publish and wait for the confirmation; raise TransportError on failure."""
        ...

    def close(self) -> None: ...


class AsyncTransport(Protocol):
    async def publish(self, message: bytes) -> None: ...

    async def close(self) -> None: ...


# Options every transport accepts (and may ignore): where AMQP messages go, and a timeout.
DEFAULT_EXCHANGE = "latest"
DEFAULT_ROUTING_KEY = "ingest_client"
DEFAULT_TIMEOUT = 10.0
