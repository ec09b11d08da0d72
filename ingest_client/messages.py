"""Messages: packets encoded as JSON arrays of at most ``max_message_bytes`` each."""

from __future__ import annotations

import math
from typing import Any

import orjson

PROBE = 64  # packets encoded to estimate the size of a batch


def encode(items: list[dict[str, Any]], limit: int) -> list[bytes]:
    """JSON arrays of ``items``, in order, each at most ``limit`` bytes (one item larger than
    that goes alone: the server will say what it thinks of it)."""
    if len(items) > PROBE:
        # Estimate the size from a prefix, so a large batch is not encoded twice.
        estimate = len(orjson.dumps(items[:PROBE])) * len(items) / PROBE
        if estimate > limit * 1.2:
            size = max(1, math.floor(len(items) * limit * 0.8 / estimate))
            return _chunks(items, size, limit)
    blob = orjson.dumps(items)
    if len(blob) <= limit or len(items) == 1:
        return [blob]
    parts = math.ceil(len(blob) / (limit * 0.9))
    return _chunks(items, max(1, math.ceil(len(items) / parts)), limit)


def _chunks(items: list[dict[str, Any]], size: int, limit: int) -> list[bytes]:
    messages: list[bytes] = []
    for start in range(0, len(items), size):
        messages += encode(items[start : start + size], limit)
    return messages


def pack(arrays: list[bytes], limit: int) -> list[bytes]:
    """Non-empty JSON arrays merged, in order, into as few arrays of at most ``limit`` bytes as
    a greedy pass gives (an array already over the limit stays alone)."""
    messages: list[bytes] = []
    run: list[bytes] = []
    size = 0
    for array in arrays:
        if run and size + len(array) - 1 > limit:  # joined: one comma for two brackets
            messages.append(_join(run))
            run = []
        size = size + len(array) - 1 if run else len(array)
        run.append(array)
    if run:
        messages.append(_join(run))
    return messages


def _join(arrays: list[bytes]) -> bytes:
    if len(arrays) == 1:
        return arrays[0]
    # One copy: the first keeps its "[", the last its "]", commas go between the bodies.
    last = len(arrays) - 1
    return b",".join(
        memoryview(a)[(0 if i == 0 else 1) : (None if i == last else -1)]
        for i, a in enumerate(arrays)
    )
