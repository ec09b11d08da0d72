"""Transports chosen by URL scheme, imported lazily: amqp(s):// (RabbitMQ with publisher
confirms: pika for the sync client, aio-pika for the async one), http(s):// (POST /ingest) and
memory:// (in-process, for tests)."""

from __future__ import annotations

import importlib
from typing import Any
from urllib.parse import urlsplit

from ingest_client.transports.base import AsyncTransport, Transport

SYNC = {
    "amqp": "ingest_client.transports.amqp:AmqpTransport",
    "amqps": "ingest_client.transports.amqp:AmqpTransport",
    "http": "ingest_client.transports.http:HttpTransport",
    "https": "ingest_client.transports.http:HttpTransport",
    "memory": "ingest_client.transports.memory:MemoryTransport",
}
ASYNC = {
    "amqp": "ingest_client.transports.amqp:AsyncAmqpTransport",
    "amqps": "ingest_client.transports.amqp:AsyncAmqpTransport",
    "http": "ingest_client.transports.http:AsyncHttpTransport",
    "https": "ingest_client.transports.http:AsyncHttpTransport",
    "memory": "ingest_client.transports.memory:AsyncMemoryTransport",
}


def _class(url: str, table: dict[str, str]) -> Any:
    scheme = urlsplit(url).scheme
    if scheme not in table:
        raise ValueError(f"no transport for URL scheme {scheme!r} (known: {', '.join(table)})")
    module_name, _, class_name = table[scheme].partition(":")
    return getattr(importlib.import_module(module_name), class_name)


def open_transport(url: str, **options: Any) -> Transport:
    transport: Transport = _class(url, SYNC)(url, **options)
    return transport


def open_async_transport(url: str, **options: Any) -> AsyncTransport:
    transport: AsyncTransport = _class(url, ASYNC)(url, **options)
    return transport


__all__ = ["AsyncTransport", "Transport", "open_async_transport", "open_transport"]
