"""LatestStore on Elasticsearch: latest documents in one index, through the official client.

The reference deployment's layout: document id = ``sha1(variable id)`` (the variable key), the
packet as ``_source``, ``version`` = the packet time (µs) with ``version_type=external``, so
Elasticsearch itself refuses an older packet with a 409, which counts as stale. History and the
live feed stay in Redis (lua/append.lua), written before the index: a batch that fails half-way
is retried whole, and the retry finds its history entries already there.

elasticsearch-py 8.x talks to Elasticsearch 8 and 9 (9 accepts ``compatible-with=8``); it runs
on httpx, which the project already depends on, instead of aiohttp.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from typing import Any

import orjson
from elastic_transport import ConnectionError as TransportConnectionError
from elastic_transport import ConnectionTimeout, HttpxAsyncHttpNode, TransportError
from elasticsearch import ApiError, AsyncElasticsearch, ConflictError, NotFoundError
from elasticsearch.helpers import async_streaming_bulk

from latest_server import keys
from latest_server.errors import StoreUnavailable
from latest_server.packets import Packet, lookup
from latest_server.redis_client import Client, Scripts, load_scripts, redis_bounded
from latest_server.settings import Settings
from latest_server.stores.base import DeleteOutcome, LatestDoc, WriteOutcome

log = logging.getLogger(__name__)

# Stores every packet as it is: no field is indexed, so packets of any shape never clash in a
# mapping (a type clash would be a per-item 400). Latest documents are read by id only.
INDEX_BODY: dict[str, Any] = {
    "settings": {"number_of_shards": 1},
    "mappings": {"dynamic": False},
}
CURRENT_VERSION = re.compile(r"current version \[(\d+)\]")
# Retried by the bulk helper, then the whole batch is (nothing was acknowledged).
RETRY_STATUSES = (429, 502, 503, 504)


def _unavailable(exc: Exception) -> StoreUnavailable:
    return StoreUnavailable(f"Elasticsearch is unavailable: {exc}")


class ElasticsearchLatestStore:
    def __init__(
        self,
        redis: Client,
        scripts: Scripts,
        client: AsyncElasticsearch,
        *,
        index: str = "latest",
        version_type: str = "external",
        id_field: str = "id",
    ) -> None:
        self.redis = redis
        self.scripts = scripts
        self.client = client
        self.index = index
        self.version_type = version_type
        self.id_path = tuple(id_field.split("."))

    @classmethod
    async def from_url(
        cls, url: str, *, redis: Client, settings: Settings, scripts: Scripts | None = None
    ) -> ElasticsearchLatestStore:
        """Connect to ``url`` (``http(s)://user:password@host:9200``) and create the index once."""
        client = AsyncElasticsearch(
            url,
            node_class=HttpxAsyncHttpNode,
            request_timeout=30,
            max_retries=3,
            retry_on_status=RETRY_STATUSES,
        )
        store = cls(
            redis,
            scripts or await load_scripts(redis),
            client,
            index=settings.es_index,
            version_type=settings.version_type,
            id_field=settings.id_field,
        )
        try:
            await store.ensure_index()
        except BaseException:
            await client.close()
            raise
        return store

    async def ensure_index(self) -> None:
        try:
            if not await self.client.indices.exists(index=self.index):
                await self.client.indices.create(index=self.index, **INDEX_BODY)
        except ApiError as exc:
            if exc.meta.status == 400 and "already_exists" in str(exc.message):
                return  # another process created it first
            raise
        except (TransportConnectionError, ConnectionTimeout) as exc:
            raise _unavailable(exc) from exc

    # --- writes -------------------------------------------------------------------------------

    async def write_batch(self, packets: Iterable[Packet]) -> list[WriteOutcome]:
        packets = list(packets)
        if not packets:
            return []
        history = await self._append(packets)
        statuses = await self._index(packets)
        outcomes = []
        for (seq, epoch), status in zip(history, statuses, strict=True):
            outcomes.append(
                WriteOutcome(status in (200, 201), seq, epoch, existed=status == 200, entry=seq)
            )
        return outcomes

    @redis_bounded  # Redis refusing writes for now (out of memory, read-only) is unavailability
    async def _append(self, packets: Sequence[Packet]) -> list[tuple[int, int]]:
        """History entries and feed messages, one pipelined round trip (lua/append.lua)."""
        calls = (
            (
                (keys.history(p.key), keys.history_index(p.key), keys.meta(p.key)),
                (p.ts_us, p.raw, p.digest, keys.feed(p.key), p.variable_id),
            )
            for p in packets
        )
        replies = await self.scripts.pipelined(self.redis, "append", calls)
        return [(int(seq), int(epoch)) for seq, epoch in replies]

    def _action(self, packet: Packet) -> dict[str, Any]:
        version_type = packet.version_type or self.version_type
        action: dict[str, Any] = {
            "_index": self.index,
            "_id": packet.key,
            "_source": orjson.loads(packet.raw),
        }
        if version_type == "create":
            action["_op_type"] = "create"
        else:
            action["version"] = packet.latest_version
            action["version_type"] = version_type
        return action

    async def _index(self, packets: Sequence[Packet]) -> list[int]:
        """The status of each packet's index action, in order: 200/201 applied, 409 stale."""
        statuses: list[int] = []
        try:
            async for ok, item in async_streaming_bulk(
                self.client,
                (self._action(p) for p in packets),
                chunk_size=max(len(packets), 1),
                max_chunk_bytes=100 * 1024 * 1024,
                raise_on_error=False,
                raise_on_exception=True,
                max_retries=3,
                initial_backoff=0.5,
            ):
                result = next(iter(item.values()))
                status = int(result.get("status", 500))
                if status in RETRY_STATUSES or status >= 500:
                    raise StoreUnavailable(f"Elasticsearch refused a write: {result}")
                if not ok and status != 409:
                    # A packet Elasticsearch cannot take (e.g. a negative version: a time before
                    # 1970). It is in history; the latest document is left as it was.
                    log.warning("Elasticsearch rejected a latest document: %s", result)
                statuses.append(status)
        except (TransportConnectionError, ConnectionTimeout) as exc:
            raise _unavailable(exc) from exc
        except ApiError as exc:
            raise _unavailable(exc) from exc
        return statuses

    async def delete(
        self, variable_id: str, key: str, version: int | None, version_type: str
    ) -> DeleteOutcome:
        options: dict[str, Any] = {}
        if version is not None:
            options = {"version": version, "version_type": version_type}
        try:
            reply = await self.client.delete(index=self.index, id=key, **options)
        except NotFoundError as exc:
            body = exc.body if isinstance(exc.body, dict) else {}
            return DeleteOutcome("not_found", int(body.get("_version", 0) or 0), None)
        except ConflictError as exc:
            found = CURRENT_VERSION.search(str(exc))
            current = int(found.group(1)) if found else None
            return DeleteOutcome("conflict", current or 0, current)
        except (TransportConnectionError, ConnectionTimeout, TransportError) as exc:
            raise _unavailable(exc) from exc
        return DeleteOutcome("deleted", int(reply["_version"]), None)

    # --- reads --------------------------------------------------------------------------------

    async def mget(self, variable_ids: Sequence[str]) -> list[LatestDoc | None]:
        found = await self.read_keys([keys.key_for(v) for v in variable_ids])
        return [
            None if doc is None else LatestDoc(v, doc.version, doc.doc, doc.seq)
            for v, doc in zip(variable_ids, found, strict=True)
        ]

    async def read_keys(self, variable_keys: Sequence[str]) -> list[LatestDoc | None]:
        if not variable_keys:
            return []
        try:
            reply = await self.client.mget(index=self.index, ids=list(variable_keys))
        except NotFoundError:  # the index is gone
            return [None] * len(variable_keys)
        except (TransportConnectionError, ConnectionTimeout, TransportError) as exc:
            raise _unavailable(exc) from exc
        docs: list[LatestDoc | None] = []
        for item in reply["docs"]:
            if not item.get("found"):
                docs.append(None)
                continue
            source = item["_source"]
            variable_id = lookup(source, self.id_path)
            docs.append(
                LatestDoc(
                    str(variable_id if variable_id is not None else item["_id"]),
                    int(item["_version"]),
                    orjson.dumps(source),
                    int(item.get("_seq_no", 0)),
                )
            )
        return docs

    async def ping(self) -> bool:
        try:
            return bool(await self.client.ping())
        except (TransportConnectionError, ConnectionTimeout, TransportError):
            return False

    async def close(self) -> None:
        await self.client.close()
