"""``filter_path`` on response bodies (es_http.filter_path): Logstash's value on ``_bulk``
answers, ``*``/``?`` globs, ``**``, lists, and a filter used again with other keys."""

from __future__ import annotations

from typing import Any

from latest_server.web.es_http import MAX_MOVES, filter_path

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
