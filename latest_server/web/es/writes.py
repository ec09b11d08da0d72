"""Document writes of the Elasticsearch-compatible API: one ``WriteOp`` per index, create,
update or delete, from a single-document route or a ``_bulk`` line; ``Writer.run`` executes a
list of them in order through the one write path (``Ingestor``) and answers one item each;
deletes and updates run one by one through ``updates.Updates``.

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

from collections.abc import Iterator, Sequence
from typing import Any

import orjson

from latest_server import keys
from latest_server.access import ANONYMOUS, Principal
from latest_server.errors import PacketRejected
from latest_server.ingestor import Ingestor, Origins
from latest_server.packets import MAX_ID_LENGTH, Packet, PacketParser, dump
from latest_server.settings import Settings
from latest_server.stores.base import LatestStore, WriteOutcome
from latest_server.web.es import authz
from latest_server.web.es.errors import DocumentParsing, EsError, IllegalArgument, VersionConflict
from latest_server.web.es.indices import Indices, check_name
from latest_server.web.es.ops import SHARDS, ItemResult, WriteOp, auto_id, check_id, failure
from latest_server.web.es.updates import Updates
from latest_server.web.es.versions import VersionScale

WRITES = ("index", "create")  # ops a batch carries; delete and update run one by one
RESOLVED_MAX = 65_536  # ids remembered by Writer._resolve; forgotten all at once past this


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
        self.versions = VersionScale(
            settings.es_version_scale, settings.time_unit, settings.max_future
        )
        self.updates = Updates(self, parser, ingestor, latest, indices, self.versions)

    async def run(
        self, ops: Sequence[WriteOp], principal: Principal = ANONYMOUS
    ) -> list[ItemResult]:
        """Execute ``ops`` in request order: each run of index/create goes to the store as one
        batch (one round trip), its packets built while the store writes the earlier ones; a
        delete or update runs on its own, after the run before it."""
        results: list[ItemResult | None] = [None] * len(ops)
        for op in ops:
            authz.check_op(principal, op)
        names = {op.index for op in ops if op.error is None}
        await self.indices.ensure({name for name in names if self.valid(name)})
        count = len(ops)
        start = 0
        while start < count:
            end = start
            while end < count and (ops[end].op in WRITES or ops[end].error is not None):
                end += 1
            if end > start:
                await self._write_run(ops, start, end, results, principal)
                start = end
                continue
            op = ops[start]
            try:
                self._decode(op)
                if op.op == "delete":
                    results[start] = await self.updates.delete(op)
                else:
                    results[start] = await self.updates.update(op)
            except EsError as exc:
                results[start] = failure(op, exc)
            except PacketRejected as exc:
                results[start] = failure(op, DocumentParsing(exc.message))
            start += 1
        return [result for result in results if result is not None]

    async def _write_run(
        self,
        ops: Sequence[WriteOp],
        start: int,
        end: int,
        results: list[ItemResult | None],
        principal: Principal,
    ) -> None:
        """Index/create ``ops[start:end]`` as one batch; an op that fails before the store gets
        its error item and is left out."""
        # Each packet's position and its item, built while Redis writes the packets before it.
        origins: Origins[tuple[int, dict[str, Any]]] = Origins()
        add = origins.add
        prefixed = principal.prefixes is not None

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
                if prefixed and not principal.covers(packet.variable_id):
                    refused = authz.denied(principal, authz.OP_ACTIONS[op.op], op.index, op.doc_id)
                    results[position] = failure(op, refused or EsError("forbidden"))
                    continue
                yield add((position, self._item(op, packet)), packet)

        batch = await self.ingestor.write_batch(packets())
        for (position, item), packet, outcome in origins.outcomes(batch):
            results[position] = self.written(ops[position], packet, outcome, item)

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
            if exc.code == "future_time":
                raise IllegalArgument(f"[future_time] {exc.message}") from None
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

    def written(
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
