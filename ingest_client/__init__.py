"""ingest_client: publish a producer's samples to latest-server, in sessions.

It depends on nothing from ``latest_server`` (an import-linter contract checks it)."""

from __future__ import annotations

from ingest_client import errors
from ingest_client.errors import BufferFull, ClientError, FlushFailed, Terminated, TransportError
from ingest_client.handler import IngestHandler
from ingest_client.session import AsyncSession, Session

__all__ = [
    "AsyncSession",
    "BufferFull",
    "ClientError",
    "FlushFailed",
    "IngestHandler",
    "Session",
    "Terminated",
    "TransportError",
    "errors",
]
