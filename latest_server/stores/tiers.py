"""The object tiers of a variable's history, listed as every reader of them needs them.

History lives in four tiers, upstream to downstream: the live stream, job-owned copies (Redis),
transfer objects, merged objects. Two readers walk them: ``history.HistoryStore`` by time (a
``Window``: the REST API's pages and series) and ``ranges.RangeReader`` by seq (a subscriber's
catch-up, ``(a, b]`` of one epoch); each reads Redis its own way (read_hot.lua, read_seq.lua).
Below Redis they share this listing: the transfers first, then the merged objects, because data
only moves downstream and each copy is durable before its upstream copy goes, so an object that a
merge replaces between the two LISTs is found in the second. The objects' names carry their seq
and time ranges (keys.parse_object), which is all a reader needs to choose them.
"""

from __future__ import annotations

from dataclasses import dataclass

from latest_server import keys
from latest_server.stores.base import ObjectStore


@dataclass(frozen=True, slots=True)
class StoredObject:
    """An object of a variable's history, with what its name says of its content."""

    name: str
    kind: str  # "transfer" or "merged"
    first: int  # a transfer's epoch, a merged object's generation
    min_seq: int
    max_seq: int
    min_ts: int
    max_ts: int

    def overlaps_seqs(self, lo: int, hi: int) -> bool:
        """Whether it may hold a seq of ``[lo, hi]``."""
        return lo <= self.max_seq and hi >= self.min_seq


def list_objects(objects: ObjectStore, key: str) -> list[StoredObject]:
    """The transfer objects of variable ``key``, then its merged objects (listed after them)."""
    transfers = objects.list(keys.transfer_prefix(key))
    merged = objects.list(keys.merged_prefix(key))  # listed after the transfers
    return [StoredObject(info.name, *keys.parse_object(info.name)) for info in transfers + merged]
