"""The vocabulary of Elasticsearch document writes: a ``WriteOp`` per index, create, update or
delete (from a single-document route or a ``_bulk`` line), the ``ItemResult`` answered for it,
and the rules of an ES ``_id``. Shared by the writer (writes.py), updates and deletes
(updates.py) and the routes that make operations (bulk.py, docs.py)."""

from __future__ import annotations

import base64
import os
import re
from dataclasses import dataclass
from typing import Any

from latest_server import keys
from latest_server.web.es.errors import EsError, ValidationFailed
from latest_server.web.es.params import Versioning

SHARDS = {"total": 1, "successful": 1, "failed": 0}
MAX_ES_ID_BYTES = 512
NO_VERSION = Versioning(None, None)  # the packet's time is the version, by the server's rule
SHA1_HEX = re.compile(r"[0-9a-f]{40}")


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
