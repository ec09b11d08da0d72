"""Store interfaces only. Backends live in their own modules."""

from __future__ import annotations

import builtins
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from latest_server.packets import Packet


@dataclass(frozen=True, slots=True)
class WriteOutcome:
    applied: bool  # the packet became the latest document of its variable
    seq: int  # its history seq; 0 when it was already in history (a redelivery)
    epoch: int  # the epoch of the variable's seq counter
    # For the Elasticsearch-compatible API: the version before the write (None: none), whether a
    # document was there (a deleted one's tombstone is none), and the seq of the history entry
    # holding the packet (the earlier one for a redelivery; 0 when unknown).
    current: int | None = None
    existed: bool = False
    entry: int = 0


@dataclass(frozen=True, slots=True)
class DeleteOutcome:
    result: str  # "deleted", "not_found" or "conflict"
    version: int  # the tombstone's version (for a conflict: the current version)
    current: int | None  # the version before the delete (None: none)


@dataclass(slots=True)  # not frozen: built on every GET /latest, where a frozen init shows
class LatestDoc:
    variable_id: str
    version: int  # µs since the epoch
    doc: bytes  # JSON
    seq: int = 0  # the history seq of the write that made it the latest (0: unknown)
    # The version as an Elasticsearch request gave it, when not ``version`` (Packet.es_version)
    es_version: int | None = None

    @property
    def shown_version(self) -> int:
        """The version Elasticsearch reads show: the one the document was written with."""
        return self.version if self.es_version is None else self.es_version


class LatestStore(Protocol):
    async def write_batch(self, packets: Iterable[Packet]) -> list[WriteOutcome]:
        """Write every packet (latest CAS, history, feed), in order; raise StoreUnavailable if
        unreachable. ``packets`` may be a generator that builds them while earlier ones are
        written."""
        ...

    # Two reads, for two callers: by id for the REST API's hot path (version and document
    # only), by key for the Elasticsearch-compatible API (also the stored id, the history seq
    # and the version as the request gave it).
    async def mget(self, variable_ids: Sequence[str]) -> list[LatestDoc | None]:
        """The latest documents of ``variable_ids`` (one or many), in one round trip, in the
        order asked."""
        ...

    async def read_keys(self, variable_keys: Sequence[str]) -> list[LatestDoc | None]:
        """Latest documents by variable key (keys.key_for), in one round trip."""
        ...

    async def delete(
        self, variable_id: str, key: str, version: int | None, version_type: str
    ) -> DeleteOutcome:
        """Delete the latest document of ``key``, leaving its version as a tombstone; with a
        ``version``, only if it is newer than the current one (``external``/``external_gte``)."""
        ...

    async def ping(self) -> bool: ...

    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    name: str
    size: int


class ObjectStore(Protocol):
    """Objects by name. Blocking calls: async callers run them with ``asyncio.to_thread``."""

    url: str

    def put(self, name: str, data: bytes) -> bool:
        """Create ``name`` unless it exists. True if written, False if it already existed."""
        ...

    def get(self, name: str) -> bytes:
        """The whole object; raises ObjectMissing."""
        ...

    def get_range(self, name: str, start: int, length: int) -> bytes:
        """``length`` bytes from ``start``; raises ObjectMissing."""
        ...

    def list(self, prefix: str) -> list[ObjectInfo]:
        """Objects whose name starts with ``prefix``, sorted by name."""
        ...

    def list_dirs(self, prefix: str) -> builtins.list[str]:
        """The next path segment under ``prefix`` (like S3's delimiter '/')."""
        ...

    def delete(self, name: str) -> None:
        """Delete; a missing object is not an error."""
        ...

    def open(self, name: str) -> Any:
        """A seekable binary file reading the object (ranged reads); raises ObjectMissing."""
        ...
