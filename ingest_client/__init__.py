"""ingest_client: publish a producer's samples to latest-server, in sessions, and subscribe to
variables' history and live entries.

It depends on nothing from ``latest_server`` (an import-linter contract checks it)."""

from __future__ import annotations

from ingest_client import errors
from ingest_client.async_session import AsyncSession
from ingest_client.errors import BufferFull, ClientError, FlushFailed, Terminated, TransportError
from ingest_client.handler import IngestHandler
from ingest_client.options import ProducerOptions
from ingest_client.session import Session
from ingest_client.subscribe import Entry, Reset, SubscriptionError, subscribe

__all__ = [
    "AsyncSession",
    "BufferFull",
    "ClientError",
    "Entry",
    "FlushFailed",
    "IngestHandler",
    "ProducerOptions",
    "Reset",
    "Session",
    "SubscriptionError",
    "Terminated",
    "TransportError",
    "errors",
    "subscribe",
]
