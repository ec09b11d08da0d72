"""``filter_path`` on response bodies (web/es/filtering.py): Logstash's value on ``_bulk``
answers, ``*``/``?`` globs, ``**``, lists, and a filter used again with other keys."""

from __future__ import annotations

from typing import Any

import pytest

from latest_server.web.es.errors import IllegalArgument
from latest_server.web.es.filtering import MAX_MOVES, SourceFilter, compile_filter, filter_path

LOGSTASH = ["errors", "items.*.error", "items.*.status"]


def bulk_answer() -> dict[str, Any]:
    def item(op: str, status: int, error: dict[str, Any] | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "_index": "latest",
            "_id": "a",
            "_version": 3,
            "result": "created",
            "_shards": {"total": 1, "successful": 1, "failed": 0},
            "status": status,
        }
        if error is not None:
            body["error"] = error
        return {op: body}

    conflict = {"type": "version_conflict_engine_exception", "reason": "current version [9]"}
    return {
        "took": 2,
        "errors": True,
        "items": [item("index", 201), item("create", 409, conflict), item("delete", 404)],
    }


def test_logstash_filter_keeps_errors_and_statuses_only() -> None:
    answer = bulk_answer()
    conflict = answer["items"][1]["create"]["error"]
    for _ in range(2):  # the second time through what the first one worked out
        assert filter_path(answer, LOGSTASH) == {
            "errors": True,
            "items": [
                {"index": {"status": 201}},
                {"create": {"error": conflict, "status": 409}},
                {"delete": {"status": 404}},
            ],
        }


def test_globs_double_stars_and_misses() -> None:
    answer = bulk_answer()
    assert filter_path(answer, ["took"]) == {"took": 2}
    assert filter_path(answer, ["nothing.here"]) == {}
    assert filter_path(answer, ["items.index"]) == {
        "items": [{"index": answer["items"][0]["index"]}]
    }
    assert filter_path(answer, ["items.*l*.result"]) == {
        "items": [{"delete": {"result": "created"}}]
    }
    assert filter_path(answer, ["it?ms.index._shards.t*"]) == {
        "items": [{"index": {"_shards": {"total": 1}}}]
    }
    assert filter_path(answer, ["**.failed", " took "]) == {
        "took": 2,
        "items": [{op: {"_shards": {"failed": 0}}} for op in ("index", "create", "delete")],
    }
    assert filter_path(answer, ["items.**.reason"]) == {
        "items": [{"create": {"error": {"reason": "current version [9]"}}}]
    }


def test_a_filter_meets_more_keys_than_it_remembers() -> None:
    wide = {f"k{i}": {"v": i, "w": -i} for i in range(MAX_MOVES + 100)}
    expected = {f"k{i}": {"v": i} for i in range(MAX_MOVES + 100)}
    assert filter_path(wide, ["*.v"]) == expected
    assert filter_path(wide, ["*.v"]) == expected


def test_double_stars_match_one_level_or_more_as_elasticsearch() -> None:
    """Elasticsearch's FilterPath: ``**`` consumes at least one key, a trailing ``**`` keeps
    every child, ``\\.`` is a dot inside a key."""
    doc = {"a": 1, "b": {"a": 2, "c": {"a": 3}}, "x.y": 4, "x": {"y": 5}}
    assert filter_path(doc, ["**.a"]) == {"b": {"a": 2, "c": {"a": 3}}}
    assert filter_path(doc, ["**.**.a"]) == {"b": {"c": {"a": 3}}}
    assert filter_path(doc, ["b.**"]) == {"b": doc["b"]}
    assert filter_path(doc, ["x\\.y"]) == {"x.y": 4}
    assert filter_path(doc, ["x.y"]) == {"x": {"y": 5}}
    assert filter_path(doc, ["b", "b.c"]) == {"b": doc["b"]}  # a shorter pattern keeps all


def nested(depth: int) -> dict[str, Any]:
    doc: dict[str, Any] = {"leaf": 1}
    for level in range(depth):
        doc = {f"k{level}": doc, "n": level, "list": [{"m": level}, [level]]}
    return doc


def test_many_double_stars_stay_linear() -> None:
    """``**.**.(40 times).zz`` on a 20-level document took exponential time and memory: now the
    positions below any key are a set, never more than the patterns' segments."""
    value = ".".join(["**"] * 40 + ["zz"])
    doc = nested(20)
    assert filter_path(doc, value) == {}
    compiled = compile_filter(value)
    assert compiled.levels  # the walk went through remembered levels ...
    assert all(len(level.states) <= 41 for level in compiled.levels.values())  # ... each small
    hit = nested(20)
    hit["k19"]["k18"]["zz"] = "found"
    assert filter_path(hit, ".".join(["**"] * 2 + ["zz"])) == {"k19": {"k18": {"zz": "found"}}}


def test_a_filter_path_past_the_bound_is_refused() -> None:
    with pytest.raises(IllegalArgument, match="filter_path has 101 segments"):
        filter_path({}, [".".join(["a"] * 50), ".".join(["b"] * 51)])
    assert filter_path({"a": 1}, ",".join(["a"] * 200)) == {"a": 1}  # repeats count once


def test_source_filters_match_every_pattern_at_once() -> None:
    doc = {"a": {"b": 1, "c": 2, "e": {"f": 3}}, "d": 4, "g": [1], "h.i": 5}
    assert SourceFilter(True, ("a.*", "d"), ("a.c",)).apply(doc) == {
        "a": {"b": 1, "e": {"f": 3}},
        "d": 4,
    }
    assert SourceFilter(True, ("*.f", "h?i"), ()).apply(doc) == {"a": {"e": {"f": 3}}, "h.i": 5}
    assert SourceFilter(True, (), ("a", "[dg]")).apply(doc) == {"h.i": 5}
    patterns = (*(f"p{n}*" for n in range(100)), "a.e.*")
    assert SourceFilter(True, patterns, ()).apply(doc) == {"a": {"e": {"f": 3}}}
