"""Stores chosen by URL scheme; backends are imported lazily from a scheme → "module:Class" map."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from latest_server.errors import ConfigError
from latest_server.settings import Settings
from latest_server.stores.base import LatestStore, ObjectStore

if TYPE_CHECKING:
    from latest_server.redis_client import Scripts
    from latest_server.redis_wire import Client

LATEST_BACKENDS = {
    "redis": "latest_server.stores.latest_redis:RedisLatestStore",
    "rediss": "latest_server.stores.latest_redis:RedisLatestStore",
    "unix": "latest_server.stores.latest_redis:RedisLatestStore",
    # A Redis Cluster: batches grouped by node (stores/latest_cluster.py).
    "redis+cluster": "latest_server.stores.latest_cluster:ClusterLatestStore",
    "rediss+cluster": "latest_server.stores.latest_cluster:ClusterLatestStore",
    # Elasticsearch (ELASTICSEARCH_URL with LATEST_BACKEND=elasticsearch): latest documents in an
    # index, history and feed still in Redis.
    "http": "latest_server.stores.latest_es:ElasticsearchLatestStore",
    "https": "latest_server.stores.latest_es:ElasticsearchLatestStore",
}

# LATEST_BACKEND=redisjson: the Redis store, and the RedisJSON layout of IUDX readers beside it.
REDISJSON_BACKENDS = {
    scheme: "latest_server.stores.latest_redisjson:RedisJsonLatestStore"
    for scheme in ("redis", "rediss", "unix")
}

OBJECT_BACKENDS = {
    "file": "latest_server.stores.objects_file:FileObjectStore",
    "s3": "latest_server.stores.objects_s3:S3ObjectStore",
}


async def open_latest_store(
    url: str, *, redis: Client, settings: Settings, scripts: Scripts | None = None
) -> LatestStore:
    """A LatestStore for ``url``; ``redis`` (connected to REDIS_URL) keeps history and the feed,
    through ``scripts`` (the process' registry; by default the backend loads its own)."""
    table = REDISJSON_BACKENDS if settings.backend == "redisjson" else LATEST_BACKENDS
    backend = backend_class(url, table)
    store: LatestStore = await backend.from_url(
        url, redis=redis, settings=settings, scripts=scripts
    )
    return store


def open_object_store(url: str, settings: Settings | None = None) -> ObjectStore:
    """An ObjectStore for ``s3://bucket/prefix`` or ``file:///path`` (S3 timeouts and tries
    from ``settings``, by default the defaults)."""
    store: ObjectStore = backend_class(url, OBJECT_BACKENDS).from_url(
        url, settings=settings or Settings()
    )
    return store


def backend_class(url: str, table: dict[str, str]) -> Any:
    scheme = urlsplit(url).scheme
    if scheme not in table:
        raise ConfigError(f"No store for URL scheme {scheme!r} (known: {', '.join(sorted(table))})")
    module_name, _, class_name = table[scheme].partition(":")
    return getattr(importlib.import_module(module_name), class_name)
