"""Index names of the Elasticsearch-compatible API: which exist, and the namespace of each.

An index exists once it was created (``PUT /{index}``) or written to (Elasticsearch's automatic
index creation); the main index (LATEST_ES_INDEX) always exists. Reads of any other index answer
``index_not_found_exception``, as Elasticsearch does. The names live in one Redis set, cached per
process (indices are never deleted here, so a cached name stays true). Redis out of reach, or
refusing writes for now (out of memory), is StoreUnavailable (redis_client.redis_bounded).

The main index shares its namespace with ``/ingest`` and ``/latest``; every other index is a
namespace of its own (keys.key_for), so the same id in two indices is two variables.
"""

from __future__ import annotations

from collections.abc import Iterable

from latest_server import keys
from latest_server.redis_client import Client, redis_bounded
from latest_server.web.es.errors import InvalidIndexName

FORBIDDEN = set('\\/*?"<>| ,#:')
MAX_NAME_BYTES = 255


def check_name(index: str) -> None:
    """Elasticsearch's rules for index names (MetadataCreateIndexService)."""
    if not index:
        raise InvalidIndexName(index, "must not be empty")
    if index != index.lower():
        raise InvalidIndexName(index, "must be lowercase")
    bad = sorted(FORBIDDEN & set(index))
    if bad:
        raise InvalidIndexName(index, f"must not contain the following characters {bad}")
    if index[0] in "-_+":
        raise InvalidIndexName(index, "must not start with '_', '-', or '+'")
    if index in (".", ".."):
        raise InvalidIndexName(index, "must not be '.' or '..'")
    if len(index.encode()) > MAX_NAME_BYTES:
        raise InvalidIndexName(index, f"index name is too long, ({len(index.encode())} > 255)")


class Indices:
    def __init__(self, redis: Client, main: str) -> None:
        self.redis = redis
        self.main = main
        self.known = {main}

    def namespace(self, index: str) -> str:
        return "" if index == self.main else index

    @redis_bounded
    async def exists(self, index: str) -> bool:
        if index in self.known:
            return True
        found = bool(await self.redis.sismember(keys.ES_INDICES, index))  # type: ignore[misc]
        if found:
            self.known.add(index)
        return found

    @redis_bounded
    async def ensure(self, indices: Iterable[str]) -> None:
        """Create (register) the indices a write names, once per process."""
        new = set(indices) - self.known
        if not new:
            return
        await self.redis.sadd(keys.ES_INDICES, *sorted(new))  # type: ignore[misc]
        self.known |= new

    @redis_bounded
    async def create(self, index: str) -> bool:
        """True if it was created now, False if it already existed."""
        if index == self.main:
            return False
        added = int(await self.redis.sadd(keys.ES_INDICES, index))  # type: ignore[misc]
        self.known.add(index)
        return added == 1

    @redis_bounded
    async def count(self) -> int:
        return 1 + int(await self.redis.scard(keys.ES_INDICES))  # type: ignore[misc]
