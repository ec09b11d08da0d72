"""The RedisJSON latest layout of IUDX readers (``LATEST_BACKEND=redisjson``): where a resource's
latest packet goes beside the latest hash, as the IUDX latest-ingestion pipeline kept it. An IUDX
resource id is ``<domain>/<sha>/<rs>/<group>/<item>``; its first four segments name its resource
group, and one RedisJSON key per group holds a member per resource."""

from __future__ import annotations

import re
from dataclasses import dataclass

from latest_server import setting_values as parse
from latest_server.setting_values import setting


def one_group_pattern(value: str) -> str | None:
    """A regular expression with exactly one capturing group (the group id), or unset."""
    if not value:
        return None
    try:
        compiled = re.compile(value)
    except re.error as exc:
        raise ValueError(f"not a regular expression: {exc}") from None
    if compiled.groups != 1:
        raise ValueError(f"needs exactly one capturing group (the group id), has {compiled.groups}")
    return value


def optional_path(value: str) -> str | None:
    return value or None


@dataclass(frozen=True)
class IudxSettings:
    iudx_prefix: str = setting(
        "LATEST_IUDX_PREFIX",
        "iudx:",
        parse.text,
        "With LATEST_BACKEND=redisjson: the prefix of each resource group's RedisJSON key "
        "(<prefix><group id>).",
    )
    iudx_group_segments: int = setting(
        "LATEST_IUDX_GROUP_SEGMENTS",
        4,
        parse.positive_int,
        "With LATEST_BACKEND=redisjson: a resource's group id is the first this many "
        "/-separated segments of its id (IUDX: <domain>/<sha>/<rs>/<group>/<item> → 4); an id "
        "with fewer segments is a group of its own.",
    )
    iudx_group_pattern: str | None = setting(
        "LATEST_IUDX_GROUP_PATTERN",
        None,
        one_group_pattern,
        "With LATEST_BACKEND=redisjson: a regular expression whose one capturing group is the "
        "group id (searched in the resource id; no match: the id is a group of its own). Set, "
        "it is used instead of LATEST_IUDX_GROUP_SEGMENTS.",
    )
    iudx_unique_attribute: str | None = setting(
        "LATEST_IUDX_UNIQUE_ATTRIBUTE",
        None,
        optional_path,
        "With LATEST_BACKEND=redisjson: dotted path of the packet attribute whose value names "
        "its member (_<sha1 of the value>) instead of the resource id (_<sha1 of the id>); a "
        "packet without it falls back to the id. Unset: the id.",
    )
