"""History entries as the HTTP API shows them (``json`` pages and ``ndjson`` lines)."""

from __future__ import annotations

from typing import Any

import orjson
import pyarrow as pa


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
