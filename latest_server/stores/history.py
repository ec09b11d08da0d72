"""History reads across every tier, upstream first.

Data only moves downstream -- live stream → job-owned copy → transfer object → merged object --
and each downstream copy is durable before its upstream copy is deleted. So a reader that reads
upstream first (Redis, atomically for the live stream and its job copies; then a fresh LIST of
transfer objects; then a fresh LIST of merged objects) can see an entry twice, never zero times.
Duplicates are removed by seq and by (ts, sha1(doc)); a listed object that has vanished (a merge
deleted it) means "list again".
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from dataclasses import dataclass
from typing import Any

import orjson
import pyarrow as pa
from redis.asyncio import Redis

from latest_server import keys
from latest_server.errors import BadRequest, ObjectMissing, StoreUnavailable
from latest_server.redis_client import Scripts
from latest_server.stores import segments
from latest_server.stores.base import ObjectStore
from latest_server.stores.segments import Window

ALL = 2**31 - 1
RELIST_ATTEMPTS = 8


@dataclass(frozen=True, slots=True)
class Page:
    entries: pa.Table  # columns ts, seq, hash, doc; ordered by (ts, seq) in the asked direction
    next: tuple[int, int] | None  # resume after this (ts, seq), or None at the end


def encode_cursor(position: tuple[int, int]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(list(position))).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, int]:
    try:
        ts, seq = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        return int(ts), int(seq)
    except (ValueError, TypeError, binascii.Error, orjson.JSONDecodeError):
        raise BadRequest(f"invalid cursor {cursor!r}") from None


class HistoryStore:
    def __init__(self, redis: Redis, scripts: Scripts, objects: ObjectStore) -> None:
        self.redis = redis
        self.scripts = scripts
        self.objects = objects

    async def exists(self, key: str) -> bool:
        if await self.redis.exists(keys.meta(key), keys.history(key)):
            return True
        found = await asyncio.to_thread(self.objects.list, keys.history_prefix(key))
        return bool(found)

    async def read(self, key: str, window: Window, limit: int | None = None) -> Page:
        """Entries of ``window``; with ``limit``, the first ``limit`` of them and a cursor."""
        per_source = ALL if limit is None else limit + 1
        hot = await self.read_hot(key, window, per_source)
        for _attempt in range(RELIST_ATTEMPTS):
            try:
                cold = await asyncio.to_thread(self._read_cold, key, window, limit and per_source)
                break
            except ObjectMissing:
                continue  # a merge replaced what we listed: list again
        else:
            raise StoreUnavailable(f"history of {key} kept moving during {RELIST_ATTEMPTS} reads")
        table = segments.deduplicate(pa.concat_tables([hot, *cold]))
        if window.desc:
            table = segments.sort(table, desc=True)
        if limit is None or table.num_rows <= limit:
            more = limit is not None and any(t.num_rows >= per_source for t in [hot, *cold])
            last = _position(table, table.num_rows - 1) if more and table.num_rows else None
            return Page(table, last)
        page = table.slice(0, limit)
        return Page(page, _position(page, limit - 1))

    async def read_hot(self, key: str, window: Window, limit: int) -> pa.Table:
        """Live stream plus job-owned copies, in one atomic script."""
        after_ts, after_seq = ("", 0) if window.after is None else window.after
        flat = await self.scripts.call(
            self.redis,
            "read_hot",
            [keys.history(key), keys.history_index(key), keys.jobs(key)],
            [window.lo, window.hi, after_ts, after_seq, limit, 1 if window.desc else 0],
        )
        if not flat:
            return segments.empty()
        return segments.from_columns(
            [int(v) for v in flat[1::4]],
            flat[0::4],
            [bytes.fromhex(h.decode()) for h in flat[3::4]],
            flat[2::4],
        )

    def _read_cold(self, key: str, window: Window, limit: int | None) -> list[pa.Table]:
        tables = []
        transfers = self.objects.list(keys.transfer_prefix(key))
        merged = self.objects.list(keys.merged_prefix(key))  # listed after the transfers
        for info in [*transfers, *merged]:
            _kind, _first, _min_seq, _max_seq, min_ts, max_ts = keys.parse_object(info.name)
            if not window.overlaps(min_ts, max_ts):
                continue
            with self.objects.open(info.name) as source:
                tables.append(segments.read(source, window, limit))
        return tables


def _position(table: pa.Table, row: int) -> tuple[int, int]:
    return int(table.column("ts")[row].as_py()), int(table.column("seq")[row].as_py())


def entries_as_dicts(table: pa.Table) -> list[dict[str, Any]]:
    """JSON-ready entries; documents are embedded without being parsed again."""
    return [
        {"ts": ts, "seq": seq, "doc": orjson.Fragment(doc)}
        for ts, seq, doc in zip(
            table.column("ts").to_pylist(),
            table.column("seq").to_pylist(),
            table.column("doc").to_pylist(),
            strict=True,
        )
    ]
