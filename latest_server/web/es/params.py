"""Query parameters of the Elasticsearch-compatible API, in Elasticsearch's words: booleans,
``refresh``, longs, and the versioning of a write (``version``, ``version_type``, ``op_type``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import orjson

from latest_server.web.es.errors import IllegalArgument, ValidationFailed

LONG_MAX = 2**63 - 1
VERSION_TYPES = ("internal", "external", "external_gt", "external_gte")
REFRESH_VALUES = ("", "true", "false", "wait_for")


def flag(params: Mapping[str, str], name: str, default: bool = False) -> bool:
    value = params.get(name)
    if value is None:
        return default
    lowered = value.lower()
    if lowered in ("", "true"):
        return True
    if lowered == "false":
        return False
    raise IllegalArgument(f"Failed to parse value [{value}] as only [true] or [false] are allowed.")


def check_refresh(params: Mapping[str, str]) -> bool:
    """Writes are visible at once; ``refresh`` is accepted. True when a refresh was forced."""
    value = params.get("refresh")
    if value is None:
        return False
    if value not in REFRESH_VALUES:
        raise IllegalArgument(f"Unknown value for refresh: [{value}].")
    return value in ("", "true")


class Versioning(NamedTuple):  # one per _bulk line: a tuple builds faster than a dataclass
    """What a write asked for: ``version`` (None: the packet's time) and its type."""

    version: int | None
    version_type: str | None  # "external", "external_gte", "create"; None: the server default


def text(value: Any) -> str:
    """A parameter's value as text for a check or a message: an object or array is named, not
    written out (a JSON body may nest it deeper than ``str`` can recurse)."""
    if isinstance(value, str):
        return value
    if isinstance(value, (dict, list)):
        return "START_OBJECT" if isinstance(value, dict) else "START_ARRAY"
    return orjson.dumps(value).decode() if isinstance(value, bool) else str(value)


def parse_long(value: Any, name: str = "version") -> int:
    number: int | None = None
    if type(value) is int:
        number = value
    elif isinstance(value, str):
        digits = value.strip()
        unsigned = digits[1:] if digits.startswith("-") else digits
        # ASCII digits only: int() also takes other scripts' digits and refuses some that
        # isdigit() calls digits (superscripts), and more than 4 300 of them; a long has 19
        # (64 leave room for leading zeros)
        if unsigned.isascii() and unsigned.isdecimal() and len(unsigned) <= 64:
            number = int(digits)
    if number is None or not -LONG_MAX - 1 <= number <= LONG_MAX:
        raise IllegalArgument(
            f"Failed to parse long parameter [{name}] with value [{text(value)[:64]}]"
        )
    return number


def versioning(version: Any, version_type: Any, op_type: str) -> Versioning:
    """Validate ``version``/``version_type``/``op_type`` as Elasticsearch does (400s with its
    messages). Our deviation, versions past 2**53 refused (not exact in Lua), is the writer's:
    it depends on the version's scale (web/es/versions.py)."""
    kind = "internal" if version_type is None else text(version_type).lower()
    if kind not in VERSION_TYPES:
        raise IllegalArgument(f"No version type match [{text(version_type)[:64]}]")
    number = None if version is None else parse_long(version)
    if op_type == "create":
        if number is not None or kind != "internal":
            raise ValidationFailed(
                "create operations only support internal versioning. use index instead"
            )
        return Versioning(None, "create")
    if kind == "internal":
        if number is not None:
            raise ValidationFailed(
                "internal versioning can not be used for optimistic concurrency control. "
                "Please use `if_seq_no` and `if_primary_term` instead"
            )
        return Versioning(None, None)
    kind = "external" if kind == "external_gt" else kind
    if number is None:
        number = -3  # Elasticsearch's "match any", which external types refuse
    if number < 0:
        raise ValidationFailed(
            f"illegal version value [{number}] for version type [{kind.upper()}]"
        )
    return Versioning(number, kind)  # its scale, and the 2**53 bound, are versions.py's


def refuse_seq_no(params: Mapping[str, Any]) -> None:
    if params.get("if_seq_no") is not None or params.get("if_primary_term") is not None:
        raise IllegalArgument(
            "if_seq_no and if_primary_term are not supported by latest-server: use "
            "version_type=external with the packet time as the version"
        )
