"""Merge: compact one variable's history into a single merged object (the next generation).

1. Move what is left in Redis (the live stream and any job copies) to transfer objects.
2. Read the current merged object(s) and every transfer object, remove duplicates (by seq and by
   (ts, sha1(doc))), keep (ts, seq) order, and write ``history/<k>/merged/<generation>-…``.
3. Delete exactly the inputs that went into it. Transfer objects written meanwhile stay for the
   next merge; readers see old and new objects for a moment and remove the duplicates.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from latest_server import keys
from latest_server.errors import LatestError
from latest_server.lock import JobLock
from latest_server.offload import Offloader
from latest_server.stores import segments
from latest_server.stores.base import ObjectInfo

log = logging.getLogger(__name__)


class MergeBusy(LatestError):
    """Another process is merging this variable right now; try again later."""

    reason = "merge_busy"


EVERYTHING = segments.Window(-(2**62), 2**62)


@dataclass
class MergeReport:
    key: str
    entries: int = 0
    inputs: int = 0
    merged: str | None = None
    busy: bool = False  # another process is merging this variable


class Merger:
    def __init__(self, offloader: Offloader, *, lock_ttl: float = 60.0) -> None:
        self.offloader = offloader
        self.redis = offloader.redis
        self.objects = offloader.objects
        self.lock_ttl = lock_ttl

    async def merge_variable(self, variable_id: str) -> MergeReport:
        return await self.merge_key(keys.key_for(variable_id))

    async def merge_key(self, key: str) -> MergeReport:
        report = MergeReport(key)
        lock = JobLock(
            self.redis,
            self.offloader.scripts,
            keys.merge_lock(key),
            keys.merge_fence(key),
            ttl=self.lock_ttl,
        )
        if not await lock.acquire():
            report.busy = True
            return report
        try:
            job = f"m{lock.fence}"
            for other in await self.redis.smembers(keys.jobs(key)):
                await self.offloader.flush(key, _text(other), lock)
            await self.offloader.transfer(key, lock, job)
            lock.check()
            await asyncio.to_thread(self._compact, key, report, lock)
            return report
        finally:
            await lock.release()

    def _compact(self, key: str, report: MergeReport, lock: JobLock) -> None:
        transfers = self.objects.list(keys.transfer_prefix(key))
        merged = self.objects.list(keys.merged_prefix(key))
        inputs: list[ObjectInfo] = [*merged, *transfers]
        if not transfers and len(merged) <= 1:
            report.merged = merged[0].name if merged else None
            return
        tables = []
        for info in inputs:
            with self.objects.open(info.name) as source:
                tables.append(segments.read(source, EVERYTHING))
        table = segments.deduplicate(pa.concat_tables(tables))
        generation = 1 + max((keys.parse_object(i.name)[1] for i in merged), default=0)
        ts = pc.min_max(table.column("ts")).as_py()
        seq = pc.min_max(table.column("seq")).as_py()
        name = keys.merged_object(key, generation, seq["min"], seq["max"], ts["min"], ts["max"])
        data = segments.encode(table, {"key": key, "generation": str(generation)})
        if lock.lost.is_set() or not self.objects.put(name, data):
            # Someone else wrote this generation (we lost the lock): leave every input alone.
            report.busy = True
            return
        for info in inputs:
            self.objects.delete(info.name)
        report.entries = table.num_rows
        report.inputs = len(inputs)
        report.merged = name
        log.info(
            "merged %d objects of %s into %s (%d entries)", len(inputs), key, name, table.num_rows
        )

    async def merge_variables(self, variable_ids: list[str]) -> list[MergeReport]:
        """The final merge of a session's variables; raises MergeBusy (retry later) if another
        process was merging one of them."""
        reports = [await self.merge_variable(v) for v in variable_ids]
        busy = [r.key for r in reports if r.busy]
        if busy:
            raise MergeBusy(f"{len(busy)} variables were being merged elsewhere")
        return reports

    async def all_keys(self) -> list[str]:
        """Every variable with history in Redis or in the object store."""
        found = {
            keys.key_of(name.decode())
            async for name in self.redis.scan_iter(match=keys.META_PATTERN, count=1000)
        }
        found.update(await asyncio.to_thread(self.objects.list_dirs, f"{keys.OBJECT_ROOT}/"))
        return sorted(found)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
