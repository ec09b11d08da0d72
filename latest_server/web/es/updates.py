"""Deletes and updates of the Elasticsearch-compatible API, each run on its own: a delete
leaves a tombstone version; an update reads the current document, merges the partial one
into it and writes the result like an index (through the writer, ``Indexing``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from latest_server.ingestor import Ingestor
from latest_server.packets import Packet, PacketParser
from latest_server.stores.base import LatestDoc, LatestStore, WriteOutcome
from latest_server.times import MAX_US
from latest_server.web.es.errors import (
    DocumentMissing,
    IllegalArgument,
    ValidationFailed,
    VersionConflict,
)
from latest_server.web.es.indices import Indices, check_name
from latest_server.web.es.ops import SHARDS, ItemResult, WriteOp, candidate_keys, check_id, failure
from latest_server.web.es.params import Versioning
from latest_server.web.es.versions import VersionScale


class Indexing(Protocol):
    """What an update needs of the writer: a document made a packet as an index makes it, and
    the item of its write."""

    def packet(self, op: WriteOp, source: Any) -> Packet: ...

    def written(self, op: WriteOp, packet: Packet, outcome: WriteOutcome) -> ItemResult: ...


@dataclass(eq=False)
class Updates:
    indexing: Indexing
    parser: PacketParser
    ingestor: Ingestor
    latest: LatestStore
    indices: Indices
    versions: VersionScale

    async def find(self, index: str, doc_id: str) -> tuple[str, LatestDoc | None]:
        """The key an ``_id`` names in ``index`` and its latest document (None: none)."""
        candidates = candidate_keys(doc_id, self.indices.namespace(index))
        found = await self.latest.read_keys(candidates)
        for key, doc in zip(candidates, found, strict=True):
            if doc is not None:
                return key, doc
        return candidates[0], None

    async def delete(self, op: WriteOp) -> ItemResult:
        assert op.doc_id is not None
        check_name(op.index)
        check_id(op.doc_id)
        sent, version_type = op.versioning
        kind = version_type or "external"
        version = sent if sent is None else self.versions.compared(sent)
        key, _ = await self.find(op.index, op.doc_id)
        outcome = await self.ingestor.delete(op.doc_id, key, version, kind)
        if outcome.result == "conflict":
            current = outcome.current if outcome.current is not None else outcome.version
            if sent is not None:  # a versioned delete: the current version in its scale
                current = self.versions.shown(current, sent, kind == "external_gte")
            detail = (
                f"current version [{current}] is higher than the one provided [{sent}]"
                if kind == "external_gte"
                else f"current version [{current}] is higher or equal to the one provided [{sent}]"
            )
            return failure(op, VersionConflict(op.index, op.doc_id, detail))
        body = {
            "_index": op.index,
            "_id": op.doc_id,
            "_version": outcome.version if sent is None else sent,
            "result": outcome.result,
            "_shards": SHARDS,
            "_seq_no": 0,
            "_primary_term": 1,
        }
        return ItemResult(200 if outcome.result == "deleted" else 404, body)

    async def update(self, op: WriteOp) -> ItemResult:
        """``{"doc": {...}}`` merged into the current document (or ``upsert`` /
        ``doc_as_upsert`` when there is none), written like an index with a version no older
        than the current one. Read then write: not atomic against a concurrent writer of the
        same id, which then wins or makes this a 409."""
        assert op.doc_id is not None
        check_name(op.index)
        body = op.source
        if not isinstance(body, dict) or not isinstance(body.get("doc", {}), dict):
            raise ValidationFailed("script or doc is missing")
        if "script" in body:
            raise IllegalArgument("update scripts are not supported by latest-server")
        if "doc" not in body and "upsert" not in body:
            raise ValidationFailed("script or doc is missing")
        if op.versioning.version is not None or op.versioning.version_type not in (None,):
            raise ValidationFailed(
                "can't provide version in update request, use version_type=internal instead"
            )
        if not await self.indices.exists(op.index):
            raise DocumentMissing(op.index, op.doc_id)
        _, current = await self.find(op.index, op.doc_id)
        if current is None:
            if body.get("doc_as_upsert") and "doc" in body:
                new = body["doc"]
            elif "upsert" in body:
                new = body["upsert"]
            else:
                raise DocumentMissing(op.index, op.doc_id)
        else:
            old = orjson.loads(current.doc)
            new = _merge(old, body.get("doc", {}))
            if new == old:
                return ItemResult(
                    200,
                    {
                        "_index": op.index,
                        "_id": op.doc_id,
                        "_version": current.shown_version,
                        "result": "noop",
                        "_shards": {"total": 0, "successful": 0, "failed": 0},
                        "_seq_no": current.seq,
                        "_primary_term": 1,
                    },
                )
        write = WriteOp("index", op.index, op.doc_id, new, Versioning(None, "external_gte"))
        packet = self.indexing.packet(write, new)
        if current is not None and (
            self.parser.document_time(new) is None or packet.latest_version < current.version
        ):
            # Without a time of its own (or with an older one) the update takes the next
            # version, as an Elasticsearch update does; at 2**53, the largest version kept
            # exactly, it keeps that one (external_gte: an equal version wins).
            packet = Packet(
                packet.variable_id,
                packet.key,
                packet.ts_us,
                packet.raw,
                packet.digest,
                version=min(current.version + 1, MAX_US),
                version_type="external_gte",
            )
        batch = await self.ingestor.write_batch([packet], edge="es")
        result = self.indexing.written(write, packet, batch.outcomes[0])
        if result.status == 201 and current is None:
            return result
        if not result.failed:
            result.body["result"] = "updated" if current is not None else "created"
        return result


def _merge(old: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """Elasticsearch's partial-document merge: objects merge recursively, the rest replaces."""
    merged = dict(old)
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged
