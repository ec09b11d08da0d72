"""History reads by seq across every tier, for subscribers: ``read_range(key, epoch, a, b)``;
reads by time are history.py's (tiers.py says what the two share).

The history of a variable is numbered by a contiguous ``seq`` within an epoch. A subscriber that
has everything up to ``a`` asks for ``(a, b]`` and must get each seq exactly once or be told
precisely which ones are gone. The reader goes upstream first -- the live stream and job-owned
copies in one atomic script, then a fresh LIST of transfer objects, then a fresh LIST of merged
objects -- because data moves only downstream and each downstream copy is durable before its
upstream copy is deleted: a seq that moved during the read is found downstream, or found again
by a re-read. Objects are chosen by the seq range in their names and read by row group
statistics, so a page of a long backlog fetches only the row groups that hold it.

A seq that no tier holds after the re-reads is either a content duplicate a merge removed (it
lies inside a merged object's seq range; its document is in history under an earlier seq) or
truly lost, e.g. Redis restarted without its data; lost ranges are named, never skipped silently.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import pyarrow.compute as pc
import pyarrow.parquet as pq

from latest_server import keys
from latest_server.errors import ObjectMissing
from latest_server.redis_client import Client, Scripts, redis_bounded, send_raw
from latest_server.stores import tiers
from latest_server.stores.base import ObjectStore

REREADS = 4
METADATA_CACHE = 512  # objects never change once written: their footers can be kept


@dataclass(frozen=True, slots=True)
class Position:
    """Where a variable's history stands: its epoch (None: no history in Redis), the last seq
    and the base (the epoch's entries are ``base < seq <= top``)."""

    epoch: int | None
    top: int
    base: int


@dataclass(frozen=True, slots=True)
class Entry:
    seq: int
    ts: int
    doc: bytes


@dataclass(slots=True)
class Range:
    """The entries of ``(a, b]`` in seq order, minus the named ``lost`` ranges (inclusive)."""

    position: Position
    entries: list[Entry] = field(default_factory=list)
    lost: list[tuple[int, int]] = field(default_factory=list)


def _position(epoch: Any, top: Any, base: Any) -> Position:
    return Position(int(epoch) if epoch else None, int(top or 0), int(base or 0))


class RangeReader:
    def __init__(self, redis: Client, scripts: Scripts, objects: ObjectStore) -> None:
        self.redis = redis
        self.scripts = scripts
        self.objects = objects
        self._footers: OrderedDict[str, Any] = OrderedDict()

    @redis_bounded
    async def positions(self, variable_keys: list[str]) -> list[Position]:
        """Every variable's position, in one round trip."""
        commands = [("HMGET", keys.meta(key), "e", "s", "b") for key in variable_keys]
        return [_position(*reply) for reply in await send_raw(self.redis, commands)]

    @redis_bounded
    async def latest(self, key: str) -> tuple[Position, Entry | None]:
        """The position and the latest document (as the history entry that holds it), read
        atomically, so that live entries after the position never repeat the document."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hmget(keys.meta(key), "e", "s", "b")
            pipe.hmget(keys.latest(key), "v", "doc", "s")
            (epoch, top, base), (version, doc, seq) = await pipe.execute()
        entry = Entry(int(seq), int(version), doc) if doc is not None and seq else None
        return _position(epoch, top, base), entry

    @redis_bounded
    async def read_range(self, key: str, epoch: int, a: int, b: int) -> Range:
        """Entries with ``a < seq <= b`` of ``epoch``. If Redis holds another epoch now, the
        returned position says so and no entry is returned: the caller resets."""
        found: dict[int, Entry] = {}
        position = await self._read_hot(key, a, b, found)
        if position.epoch != epoch:
            return Range(position)
        covered: list[tuple[int, int]] = []
        for _attempt in range(REREADS):
            missing = _missing(found, a, b)
            if not missing:
                break
            try:
                covered = await asyncio.to_thread(self._read_cold, key, epoch, missing, found)
            except ObjectMissing:
                continue  # a merge replaced what we listed: list again
            missing = _missing(found, a, b)
            if not missing:
                break
            # What moved between the Redis read and the LIST is in Redis' job copies or in
            # objects the next LIST sees.
            for lo, hi in missing:
                await self._read_hot(key, lo - 1, hi, found)
        lost = [(lo, hi) for span in _missing(found, a, b) for lo, hi in _subtract(span, covered)]
        return Range(position, [found[s] for s in sorted(found)], lost)

    async def _read_hot(self, key: str, a: int, b: int, found: dict[int, Entry]) -> Position:
        epoch, top, base, flat = await self.scripts.call(
            self.redis,
            "read_seq",
            [keys.history(key), keys.jobs(key), keys.meta(key)],
            [a, b, max(b - a, 1)],
        )
        for i in range(0, len(flat), 3):
            seq = int(flat[i])
            if seq not in found:
                found[seq] = Entry(seq, int(flat[i + 1]), flat[i + 2])
        return _position(epoch, top, base)

    def _read_cold(
        self, key: str, epoch: int, missing: list[tuple[int, int]], found: dict[int, Entry]
    ) -> list[tuple[int, int]]:
        """Read the missing spans from objects; returns the seq spans merged objects cover."""
        covered = []
        for stored in tiers.list_objects(self.objects, key):
            if stored.kind == "transfer" and stored.first != epoch:
                continue  # another epoch's seqs are not this one's
            if stored.kind == "merged":
                covered.append((stored.min_seq, stored.max_seq))
            spans = [(lo, hi) for lo, hi in missing if stored.overlaps_seqs(lo, hi)]
            if spans:
                self._read_object(stored.name, spans, found)
        return covered

    def _read_object(
        self, name: str, spans: list[tuple[int, int]], found: dict[int, Entry]
    ) -> None:
        with self.objects.open(name) as source:
            parquet = pq.ParquetFile(source, metadata=self._footers.get(name))
            self._remember(name, parquet.metadata)
            meta = parquet.metadata
            seq_column = meta.schema.to_arrow_schema().get_field_index("seq")
            groups = []
            for index in range(meta.num_row_groups):
                stats = meta.row_group(index).column(seq_column).statistics
                if (
                    stats is None
                    or not stats.has_min_max
                    or any(lo <= stats.max and hi >= stats.min for lo, hi in spans)
                ):
                    groups.append(index)
            if not groups:
                return
            table = parquet.read_row_groups(groups, columns=["ts", "seq", "doc"])
        seq = table.column("seq")
        mask = None
        for lo, hi in spans:
            inside = pc.and_(pc.greater_equal(seq, lo), pc.less_equal(seq, hi))
            mask = inside if mask is None else pc.or_(mask, inside)
        table = table.filter(mask)
        for ts, s, doc in zip(
            table.column("ts").to_pylist(),
            table.column("seq").to_pylist(),
            table.column("doc").to_pylist(),
            strict=True,
        ):
            if s not in found:
                found[s] = Entry(s, ts, doc)

    def _remember(self, name: str, metadata: Any) -> None:
        self._footers[name] = metadata
        self._footers.move_to_end(name)
        while len(self._footers) > METADATA_CACHE:
            self._footers.popitem(last=False)


def _missing(found: dict[int, Entry], a: int, b: int) -> list[tuple[int, int]]:
    """The inclusive spans of ``(a, b]`` with no entry in ``found``."""
    spans = []
    start = None
    for seq in range(a + 1, b + 1):
        if seq in found:
            if start is not None:
                spans.append((start, seq - 1))
                start = None
        elif start is None:
            start = seq
    if start is not None:
        spans.append((start, b))
    return spans


def _subtract(span: tuple[int, int], covered: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The parts of ``span`` outside every covered span."""
    parts = [span]
    for c_lo, c_hi in covered:
        parts = [
            piece
            for lo, hi in parts
            for piece in ((lo, min(hi, c_lo - 1)), (max(lo, c_hi + 1), hi))
            if piece[0] <= piece[1]
        ]
    return parts
