"""A packet's identity: the canonical form of its document, whose SHA-1 with the packet time
names one history entry (write.lua's dedup index, the ``hash`` column of history objects), so
one document re-serialised by a pipeline is one entry. Pure: stdlib and orjson."""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

# orjson writes a float whose value is an integer as "7.0" (below 1e16) or with a positive
# exponent ("1e+16"): a document whose JSON has neither needs no walk through its floats.
FLOAT_ENDS = (b",", b"}", b"]")
# Integral floats in this range are written as integers (orjson writes no integer beyond it;
# larger integers are read as floats on both sides, so they compare as floats).
INT_RANGE = (-(2**63), 2**64)


def canonical(document: Any, raw: bytes) -> bytes:
    """The canonical JSON of ``document``, whose orjson form is ``raw``: keys sorted at every
    level, floats of integral value written as integers. Re-serialisations of one document
    (keys in another order, ``7`` and ``7.0``, ``1E2`` and ``100``, whitespace, escapes) have
    one canonical form, so they are one history entry. Equal as JSON numbers means equal as
    Python compares an int and a float: exactly, so ``2**53 + 1`` and ``2.0**53`` stay apart."""
    if _may_hold_integral_floats(raw):
        document = _integral_floats_as_ints(document)
    return orjson.dumps(document, option=orjson.OPT_SORT_KEYS)


def _may_hold_integral_floats(raw: bytes) -> bool:
    """False only when orjson's ``raw`` has no float of integral value (a string may make it
    say True): two byte searches, where a regular expression took twice as long."""
    if b"e+" in raw:
        return True
    find = raw.find
    at = find(b".0")
    while at >= 0:
        if raw[at + 2 : at + 3] in FLOAT_ENDS:
            return True
        at = find(b".0", at + 2)
    return False


def digest(document: Any, raw: bytes) -> str:
    """sha1 hex of ``canonical``: a history entry's identity with its time (write.lua's index
    members, the ``hash`` column of history objects)."""
    return hashlib.sha1(canonical(document, raw)).hexdigest()


def stored_digest(doc: bytes) -> bytes:
    """The 20-byte ``digest`` of a stored document (orjson's output, as the write path keeps
    it), for the entries that offload and merge handle as bytes. Bytes that are not JSON (the
    write path stores none) are their own identity."""
    try:
        document = orjson.loads(doc)
    except orjson.JSONDecodeError:
        return hashlib.sha1(doc).digest()
    return hashlib.sha1(canonical(document, doc)).digest()


def _integral_floats_as_ints(value: Any) -> Any:
    kind = type(value)
    if kind is float:
        low, high = INT_RANGE
        return int(value) if value.is_integer() and low <= value < high else value
    if kind is dict:
        return {key: _integral_floats_as_ints(item) for key, item in value.items()}
    if kind is list:
        return [_integral_floats_as_ints(item) for item in value]
    return value
