"""A search request body (``_search``, one body of ``_msearch``) → a ``Search``: the plan
(web/es/query.py), the aggregations (web/es/aggs.py), and how hits are paged, sorted and shown.
Keys outside the subset are a 400 naming them; ``search_after`` pages on from a hit's ``sort``
values (the time, and ``_doc``: ``<ts µs>:<seq>:<id>``, the order of hits); ``highlight`` is
taken and answers no highlights (no query here matches text)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from latest_server.web.es import aggs
from latest_server.web.es.errors import IllegalArgument, ParseError, Unsupported
from latest_server.web.es.filtering import SourceFilter, source_filter
from latest_server.web.es.query import Fields, Plan, plan
from latest_server.web.es.rows import After

MAX_WINDOW = 10_000  # Elasticsearch's index.max_result_window
TAKEN = {
    "query",
    "aggs",
    "aggregations",
    "size",
    "from",
    "sort",
    "_source",
    "docvalue_fields",
    "fields",
    "script_fields",
    "highlight",
    "track_total_hits",
    "timeout",
    "version",
    "seq_no_primary_term",
    "explain",
    "profile",
    "track_scores",
    "stored_fields",
    "search_after",
}
OFF_ONLY = ("version", "seq_no_primary_term", "explain", "profile")


@dataclass(frozen=True, slots=True)
class Wanted:
    """A field asked for in ``fields`` or ``docvalue_fields``, with its date format."""

    name: str
    fmt: str | None


@dataclass(slots=True)
class Search:
    plan: Plan
    aggs: list[aggs.Node]
    size: int
    offset: int
    sorted: bool  # a sort was asked (hits carry ``sort`` values, ``_score`` null)
    desc: bool
    sort_keys: tuple[str, ...]  # "time" or "_doc", in the order asked
    source: SourceFilter
    wanted: tuple[Wanted, ...]
    total_as_int: bool
    after: After | None = None  # search_after
    track_total: int | None = 10_000  # hits counted exactly up to this (track_total_hits)
    raw: bool = True  # sources may be answered as their bytes (no filter_path looks inside)

    @property
    def needs_all(self) -> bool:
        """Whether every entry of the window is read (aggregations, or an exact total)."""
        return bool(self.aggs) or self.size == 0


def _int(value: Any, name: str) -> int:
    if isinstance(value, str) and value.lstrip("-").isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ParseError(f"[{name}] must be an integer, not [{value}]")
    if value < 0:
        raise IllegalArgument(f"[{name}] parameter cannot be negative, found [{value}]")
    return value


def parse(body: Any, params: Mapping[str, str], fields: Fields) -> Search:
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise ParseError("a search body must be a JSON object")
    for key in body:
        if key not in TAKEN:
            raise Unsupported(key, "a search takes " + ", ".join(sorted(TAKEN)))
    for key in OFF_ONLY:
        if body.get(key) not in (None, False):
            raise Unsupported(f"{key}: true")
    if body.get("stored_fields") not in (None, "_none_", ["_none_"]):
        raise Unsupported("stored_fields", "documents are answered from _source")
    if body.get("script_fields"):
        raise Unsupported("script_fields", "scripts")
    size = _int(params.get("size", body.get("size", 10)), "size")
    offset = _int(params.get("from", body.get("from", 0)), "from")
    if size + offset > MAX_WINDOW:
        raise IllegalArgument(
            f"Result window is too large, from + size must be less than or equal to: "
            f"[{MAX_WINDOW}] but was [{size + offset}]."
        )
    keys, desc = _sort(body.get("sort"), fields)
    after = _after(body.get("search_after"), keys, offset)
    spec = body.get("aggs", body.get("aggregations"))
    return Search(
        plan=plan(body.get("query"), fields),
        aggs=aggs.parse(spec, fields),
        size=size,
        offset=offset,
        sorted=bool(keys),
        desc=desc,
        sort_keys=keys,
        source=source_filter(params, body.get("_source")),
        wanted=_wanted(body.get("docvalue_fields")) + _wanted(body.get("fields")),
        total_as_int=params.get("rest_total_hits_as_int") in ("true", ""),
        after=after,
        track_total=_track(params.get("track_total_hits", body.get("track_total_hits", True))),
    )


def _after(values: Any, keys: tuple[str, ...], offset: int) -> After | None:
    """``search_after``: the ``sort`` values of the last hit of the page before."""
    if values is None:
        return None
    if not keys or keys[0] != "time":
        raise Unsupported("search_after", "it follows a sort on the time field")
    if not isinstance(values, list) or len(values) != len(keys):
        raise IllegalArgument(
            f"search_after has {len(values) if isinstance(values, list) else 0} "
            f"value(s) but sort has {len(keys)}."
        )
    if offset:
        raise IllegalArgument("`from` parameter must be set to 0 when `search_after` is used.")
    found = After(_int(values[0], "search_after") * 1000)
    if "_doc" in keys:
        mark = values[keys.index("_doc")]
        parts = mark.split(":", 2) if isinstance(mark, str) else []
        if len(parts) != 3 or not parts[0].isdigit() or not parts[1].isdigit():
            raise ParseError(f"search_after: [{mark}] is not a _doc sort value of a hit here")
        found = After(int(parts[0]), int(parts[1]), parts[2])
    return found


def _track(value: Any) -> int | None:
    """``track_total_hits``: true (up to 10 000, Elasticsearch's default), false, or a bound."""
    if value in (True, "true", ""):
        return 10_000
    if value in (False, "false"):
        return None
    if value == -1 or value == "-1":  # Elasticsearch's "every hit", as true in 7.x+
        return 2**62
    return _int(value, "track_total_hits")


def _sort(spec: Any, fields: Fields) -> tuple[tuple[str, ...], bool]:
    """The sort keys (``time``, ``_doc``) and the direction of the time (the first key's)."""
    if spec is None:
        return (), False
    items: list[tuple[str, Any]] = []
    for item in spec if isinstance(spec, list) else [spec]:
        if isinstance(item, str):
            items.append((item, None))
        elif isinstance(item, dict):
            items.extend(item.items())
        else:
            raise ParseError(f"malformed sort [{item}]")
    keys: list[str] = []
    directions: list[bool] = []
    for name, how in items:
        if isinstance(how, dict):
            for option in how:
                if option not in ("order", "unmapped_type", "format", "numeric_type"):
                    raise Unsupported(f"sort.{name}.{option}")
            how = how.get("order")
        if how not in (None, "asc", "desc"):
            raise ParseError(f"malformed sort order [{how}] of [{name}]")
        if name == "_score":
            continue  # every hit scores the same
        if fields.is_time(name):
            keys.append("time")
        elif name == "_doc":
            keys.append("_doc")
        else:
            raise Unsupported(f"sort.{name}", "hits sort on the time field and _doc")
        # a field sorts ascending by default, _score descending (Elasticsearch's defaults)
        directions.append(how == "desc")
    if len(set(directions)) > 1:
        raise Unsupported("sort in mixed directions")
    return tuple(keys), bool(directions and directions[0])


def _wanted(spec: Any) -> tuple[Wanted, ...]:
    if spec is None:
        return ()
    if not isinstance(spec, list):
        raise ParseError("[docvalue_fields] and [fields] must be arrays")
    found = []
    for item in spec:
        if isinstance(item, str):
            found.append(Wanted(item, None))
        elif isinstance(item, dict) and isinstance(item.get("field"), str):
            found.append(Wanted(item["field"], item.get("format")))
        else:
            raise ParseError(f"malformed field [{item}]")
        if "*" in found[-1].name:
            raise Unsupported(f"fields: {found[-1].name}", "fields are named, not patterns")
    return tuple(found)
