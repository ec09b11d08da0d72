"""Document writes of the Elasticsearch-compatible API: one ``WriteOp`` per index, create,
update or delete, from a single-document route or a ``_bulk`` line; ``Writer.run`` executes a
list of them in order through the one write path (``Ingestor``) and answers one item each.

From an ES document to a ``Packet``:

* variable id: the packet's id field (LATEST_ID_FIELD) when the ES ``_id`` is that id, its
  SHA-1 (the Logstash ``fingerprint`` convention) or absent; otherwise the ``_id`` itself.
  Reads by either form find it (``candidate_keys``). The index is the key's namespace.
* history time: the packet's time field when it has a usable one; else the request's
  ``version`` read as an epoch time (unit by magnitude, like ingest); else the arrival time.
* version: the request's ``version`` when given, on the scale of LATEST_ES_VERSION_SCALE
  (es_versions: epoch times compared in µs, like every other path); else the history time
  (``version_type`` internal = the server's LATEST_VERSION_TYPE over packet times).
"""

from __future__ import annotations

import base64
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from latest_server import keys
from latest_server.errors import PacketRejected
from latest_server.ingestor import Ingestor, Origins
from latest_server.packets import (
    MAX_ID_LENGTH,
    Packet,
    PacketParser,
    dump,
)
from latest_server.settings import Settings
from latest_server.stores.base import LatestDoc, LatestStore, WriteOutcome
from latest_server.web.es.errors import (
    DocumentMissing,
    DocumentParsing,
    EsError,
    IllegalArgument,
    ValidationFailed,
    VersionConflict,
)
from latest_server.web.es.http import MAX_VERSION, Versioning
from latest_server.web.es.indices import Indices, check_name
from latest_server.web.es.versions import VersionScale

SHARDS = {"total": 1, "successful": 1, "failed": 0}
MAX_ES_ID_BYTES = 512
NO_VERSION = Versioning(None, None)  # the packet's time is the version, by the server's rule
WRITES = ("index", "create")  # ops a batch carries; delete and update run one by one
SHA1_HEX = re.compile(r"[0-9a-f]{40}")
RESOLVED_MAX = 65_536  # ids remembered by Writer._resolve; forgotten all at once past this


def auto_id() -> str:
    """20 url-safe base64 characters, like Elasticsearch's generated ids."""
    return base64.urlsafe_b64encode(os.urandom(15)).decode()


def check_id(doc_id: str) -> None:
    if not doc_id:
        raise ValidationFailed("id is missing")
    # Four UTF-8 bytes at most per character: a short id needs no encoding to be checked.
    if len(doc_id) > MAX_ES_ID_BYTES // 4 and len(doc_id.encode()) > MAX_ES_ID_BYTES:
        raise ValidationFailed(
            f"id [{doc_id}] is too long, must be no longer than 512 bytes but was: "
            f"{len(doc_id.encode())}"
        )


def candidate_keys(doc_id: str, namespace: str) -> list[str]:
    """The variable keys an ES ``_id`` may name: the id itself, or the SHA-1 of an id."""
    found = [keys.key_for(doc_id, namespace)]
    if SHA1_HEX.fullmatch(doc_id):
        found.append(keys.namespaced(doc_id, namespace))
    return found


@dataclass(slots=True)
class WriteOp:
    op: str  # "index", "create", "update" or "delete"
    index: str
    doc_id: str | None
    source: Any = None  # the document; for update the request body ({"doc", ...})
    versioning: Versioning = NO_VERSION
    error: EsError | None = None  # found while parsing: answered as this item's error
    line: bytes | None = None  # from _bulk: the source line, decoded into source when run


@dataclass(slots=True)
class ItemResult:
    status: int
    body: dict[str, Any]  # without "status"

    @property
    def failed(self) -> bool:
        return "error" in self.body


def failure(op: WriteOp, error: EsError) -> ItemResult:
    body: dict[str, Any] = {"_index": op.index, "_id": op.doc_id, "error": error.cause()}
    return ItemResult(error.status, body)


class Writer:
    def __init__(
        self,
        settings: Settings,
        parser: PacketParser,
        ingestor: Ingestor,
        latest: LatestStore,
        indices: Indices,
    ) -> None:
        self.parser = parser
        self.ingestor = ingestor
        self.latest = latest
        self.indices = indices
        self.max_packet_bytes = settings.max_packet_bytes
        self.valid_names: set[str] = set()  # index names that passed check_name
        # (index, _id or None, id field) → (_id, variable id, key): see _resolve
        self.resolved: dict[tuple[str, str | None, str | None], tuple[str, str, str]] = {}
        self.default_gte = settings.version_type == "external_gte"
        self.versions = VersionScale(settings.es_version_scale, settings.time_unit)

    async def run(self, ops: Sequence[WriteOp]) -> list[ItemResult]:
        """Execute ``ops`` in request order: each run of index/create goes to the store as one
        batch (one round trip), its packets built while the store writes the earlier ones; a
        delete or update runs on its own, after the run before it."""
        results: list[ItemResult | None] = [None] * len(ops)
        names = {op.index for op in ops if op.error is None}
        await self.indices.ensure({name for name in names if self.valid(name)})
        count = len(ops)
        start = 0
        while start < count:
            end = start
            while end < count and (ops[end].op in WRITES or ops[end].error is not None):
                end += 1
            if end > start:
                await self._write_run(ops, start, end, results)
                start = end
                continue
            op = ops[start]
            try:
                self._decode(op)
                if op.op == "delete":
                    results[start] = await self._delete(op)
                else:
                    results[start] = await self._update(op)
            except EsError as exc:
                results[start] = failure(op, exc)
            except PacketRejected as exc:
                results[start] = failure(op, DocumentParsing(exc.message))
            start += 1
        return [result for result in results if result is not None]

    async def _write_run(
        self, ops: Sequence[WriteOp], start: int, end: int, results: list[ItemResult | None]
    ) -> None:
        """Index/create ``ops[start:end]`` as one batch; an op that fails before the store gets
        its error item and is left out."""
        # Each packet's position and its item, built while Redis writes the packets before it.
        origins: Origins[tuple[int, dict[str, Any]]] = Origins()
        add = origins.add

        def packets() -> Iterator[Packet]:
            for position in range(start, end):
                op = ops[position]
                if op.error is not None:
                    results[position] = failure(op, op.error)
                    continue
                try:
                    self._decode(op)
                    packet = self.packet(op, op.source)
                except EsError as exc:
                    results[position] = failure(op, exc)
                    continue
                except PacketRejected as exc:
                    results[position] = failure(op, DocumentParsing(exc.message))
                    continue
                yield add((position, self._item(op, packet)), packet)

        batch = await self.ingestor.write_batch(packets())
        for (position, item), packet, outcome in origins.outcomes(batch):
            results[position] = self._written(ops[position], packet, outcome, item)

    @staticmethod
    def _decode(op: WriteOp) -> None:
        """The source of a ``_bulk`` op, decoded when the op runs rather than while the request
        is parsed: a bad one fails its item only, and decoding overlaps earlier writes."""
        if op.line is not None:
            line, op.line = op.line, None
            try:
                op.source = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise DocumentParsing(f"[1:1] failed to parse: {exc}") from None

    def valid(self, index: str) -> bool:
        if index in self.valid_names:
            return True
        try:
            check_name(index)
        except EsError:
            return False
        self.valid_names.add(index)
        return True

    # --- index and create ---------------------------------------------------------------------

    def packet(self, op: WriteOp, source: Any) -> Packet:
        if not isinstance(source, dict):
            kind = "null" if source is None else type(source).__name__
            raise DocumentParsing(
                f"[1:1] failed to parse: the document must be a JSON object, not {kind}"
            )
        raw = dump(source)  # too_deep past packets.MAX_DEPTH: a failed item, not a 500
        parser = self.parser
        text = parser.id_text(source)
        found = self.resolved.get((op.index, op.doc_id, text))
        if found is None:
            found = self._resolve(op.index, op.doc_id, text)
        op.doc_id, variable_id, key = found
        sent, version_type = op.versioning
        try:
            return parser.versioned(
                source, raw, variable_id, key, sent, version_type, self.versions.compared
            )
        except PacketRejected as exc:
            if exc.code != "too_large":
                raise
            raise IllegalArgument(
                f"document is {len(raw)} bytes, the limit is {self.max_packet_bytes} "
                "(LATEST_MAX_PACKET_BYTES)"
            ) from None

    def _resolve(self, index: str, doc_id: str | None, text: str | None) -> tuple[str, str, str]:
        """The ES ``_id``, variable id and key of a document of ``index`` with ``_id`` ``doc_id``
        (None: none given) whose id field reads ``text``. Remembered unless the id is generated:
        a variable's documents all resolve the same way."""
        if index not in self.valid_names:
            check_name(index)
        given = doc_id
        variable_id = doc_id
        if (
            text is not None
            and 0 < len(text) <= MAX_ID_LENGTH
            and (doc_id is None or doc_id == text or doc_id == keys.digest(text))
        ):
            variable_id = text
        generated = variable_id is None
        if doc_id is None:
            doc_id = variable_id = variable_id or auto_id()
        assert variable_id is not None
        check_id(doc_id)
        found = doc_id, variable_id, keys.key_for(variable_id, self.indices.namespace(index))
        if not generated and (text is None or len(text) <= MAX_ID_LENGTH):  # bounded keys
            if len(self.resolved) >= RESOLVED_MAX:
                self.resolved.clear()
            self.resolved[index, given, text] = found
        return found

    @staticmethod
    def _item(op: WriteOp, packet: Packet) -> dict[str, Any]:
        """The item of a write that is applied, but for its result and _seq_no."""
        return {
            "_index": op.index,
            "_id": op.doc_id,
            "_version": packet.latest_version if packet.es_version is None else packet.es_version,
            "result": "created",
            "_shards": SHARDS,
            "_seq_no": 0,
            "_primary_term": 1,
        }

    def _written(
        self, op: WriteOp, packet: Packet, outcome: WriteOutcome, item: dict[str, Any] | None = None
    ) -> ItemResult:
        assert op.doc_id is not None
        if not outcome.applied:
            version = packet.latest_version
            current = outcome.current if outcome.current is not None else version
            gte = packet.version_type == "external_gte" or (
                packet.version_type is None and self.default_gte
            )
            sent = op.versioning.version
            if sent is not None:  # both in the scale the client sent
                version, current = sent, self.versions.shown(current, sent, gte)
            if packet.version_type == "create":
                detail = f"document already exists (current version [{current}])"
            elif gte:
                detail = f"current version [{current}] is higher than the one provided [{version}]"
            else:
                detail = (
                    f"current version [{current}] is higher or equal to the one provided "
                    f"[{version}]"
                )
            return failure(op, VersionConflict(op.index, op.doc_id, detail))
        if item is None:
            item = self._item(op, packet)
        item["_seq_no"] = outcome.entry
        if outcome.existed:
            item["result"] = "updated"
            return ItemResult(200, item)
        return ItemResult(201, item)

    # --- delete and update --------------------------------------------------------------------

    async def find(self, index: str, doc_id: str) -> tuple[str, LatestDoc | None]:
        """The key an ``_id`` names in ``index`` and its latest document (None: none)."""
        candidates = candidate_keys(doc_id, self.indices.namespace(index))
        found = await self.latest.read_keys(candidates)
        for key, doc in zip(candidates, found, strict=True):
            if doc is not None:
                return key, doc
        return candidates[0], None

    async def _delete(self, op: WriteOp) -> ItemResult:
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

    async def _update(self, op: WriteOp) -> ItemResult:
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
        packet = self.packet(write, new)
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
                version=min(current.version + 1, MAX_VERSION),
                version_type="external_gte",
            )
        batch = await self.ingestor.write_batch([packet])
        result = self._written(write, packet, batch.outcomes[0])
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
