"""The aggregation DSL of a search → buckets and metrics over its rows (web/es/rows.py), in
Elasticsearch's response shapes. The subset is what Grafana's data source builds for metric
queries and its log volume: ``date_histogram`` on the time field (web/es/buckets.py), ``terms``
on the id field, and the metrics of web/es/metrics.py, nested in any order. Any other
aggregation, and any option that would change the answer and is not implemented, is a 400
naming it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from latest_server.web.es import buckets, metrics
from latest_server.web.es.errors import ParseError, TooManyBuckets, Unsupported
from latest_server.web.es.query import Fields, to_ms
from latest_server.web.es.rows import Rows

BUCKETING = ("date_histogram", "terms")
TERMS_OPTIONS = {
    "field",
    "size",
    "order",
    "min_doc_count",
    "shard_size",
    "show_term_doc_count_error",
    "shard_min_doc_count",
    "execution_hint",
    "collect_mode",
}
HISTOGRAM_OPTIONS = {
    "field",
    "fixed_interval",
    "calendar_interval",
    "interval",
    "min_doc_count",
    "extended_bounds",
    "time_zone",
    "format",
    "offset",
    "keyed",
    "order",
}


@dataclass(frozen=True, slots=True)
class Terms:
    size: int
    order: tuple[tuple[str, bool], ...]  # (key, ascending): _key, _count, <metric>[.<stat>]
    min_doc_count: int


@dataclass(slots=True)
class Node:
    name: str
    kind: str  # date_histogram, terms, or a metric kind
    histogram: buckets.Histogram | None = None
    terms: Terms | None = None
    metric: metrics.Metric | None = None
    children: list[Node] = field(default_factory=list)


def parse(spec: Any, fields: Fields, where: str = "aggs") -> list[Node]:
    if spec is None:
        return []
    if not isinstance(spec, dict):
        raise ParseError(f"[{where}] must be an object")
    nodes = []
    for name, body in spec.items():
        if not isinstance(body, dict):
            raise ParseError(f"Expected [START_OBJECT] under [{name}]")
        sub = body.get("aggs", body.get("aggregations"))
        kinds = [k for k in body if k not in ("aggs", "aggregations", "meta")]
        if len(kinds) != 1:
            raise ParseError(f"Expected exactly one aggregation type in [{where}.{name}]")
        kind = kinds[0]
        node = _node(name, kind, body[kind], fields, f"{where}.{name}")
        node.children = parse(sub, fields, f"{where}.{name}.aggs")
        if node.metric is not None and node.children:
            raise ParseError(f"Aggregator [{name}] of type [{kind}] cannot accept sub-aggregations")
        nodes.append(node)
    return nodes


def _node(name: str, kind: str, spec: Any, fields: Fields, where: str) -> Node:
    if kind in metrics.KINDS:
        metric = metrics.parse(name, kind, spec)
        if fields.is_id(metric.field) and kind not in ("value_count", "cardinality"):
            raise Unsupported(f"{where}.{kind} on {metric.field}", "the id is not a number")
        return Node(name, kind, metric=metric)
    if not isinstance(spec, dict):
        raise ParseError(f"[{kind}] aggregation [{name}] must be an object")
    if kind == "date_histogram":
        for key in spec:
            if key not in HISTOGRAM_OPTIONS:
                raise Unsupported(f"{where}.date_histogram.{key}")
        if not fields.is_time(str(spec.get("field"))):
            raise Unsupported(
                f"{where}.date_histogram.field: {spec.get('field')}",
                "a date_histogram is on the time field",
            )
        if spec.get("keyed"):
            raise Unsupported(f"{where}.date_histogram.keyed")
        if spec.get("order") not in (None, {"_key": "asc"}, [{"_key": "asc"}]):
            raise Unsupported(f"{where}.date_histogram.order", "buckets are in time order")
        return Node(name, kind, histogram=buckets.parse(spec, _bounds(spec)))
    if kind == "terms":
        for key in spec:
            if key not in TERMS_OPTIONS:
                raise Unsupported(f"{where}.terms.{key}")
        if not fields.is_id(str(spec.get("field"))):
            raise Unsupported(
                f"{where}.terms.field: {spec.get('field')}",
                "a terms aggregation is on the id field",
            )
        return Node(name, kind, terms=_terms(spec))
    raise Unsupported(
        f"{where}.{kind}", "aggregations are date_histogram, terms and " + ", ".join(metrics.KINDS)
    )


def _bounds(spec: dict[str, Any]) -> tuple[int, int] | None:
    bounds = spec.get("extended_bounds")
    if bounds is None:
        return None
    if not isinstance(bounds, dict) or not {"min", "max"} >= set(bounds) or not bounds:
        raise ParseError("[extended_bounds] takes [min] and [max]")
    fmt = spec.get("format") or "epoch_millis"
    low = to_ms(bounds["min"], fmt, None, "extended_bounds.min") if "min" in bounds else None
    high = to_ms(bounds["max"], fmt, None, "extended_bounds.max") if "max" in bounds else None
    if low is not None and high is not None and low > high:
        raise ParseError(
            f"[extended_bounds.min][{low}] cannot be greater than [extended_bounds.max][{high}]"
        )
    low = high if low is None else low
    high = low if high is None else high
    assert low is not None and high is not None
    return low, high


def _int(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ParseError(f"[{name}] must be an integer of at least {minimum}, not [{value}]")
    return value


def _terms(spec: dict[str, Any]) -> Terms:
    size = _int(spec.get("size", 10), "size", 1)
    min_doc_count = _int(spec.get("min_doc_count", 1), "min_doc_count", 0)
    raw = spec.get("order", [{"_count": "desc"}])
    order = []
    for item in raw if isinstance(raw, list) else [raw]:
        if not isinstance(item, dict):
            raise ParseError("[order] must be an object or an array of objects")
        for key, direction in item.items():
            if direction not in ("asc", "desc"):
                raise ParseError(f"Unknown terms order direction [{direction}]")
            order.append(("_key" if key == "_term" else str(key), direction == "asc"))
    if not any(key == "_key" for key, _ in order):
        order.append(("_key", True))  # Elasticsearch's tie-break
    return Terms(size, tuple(order), min_doc_count)


@dataclass
class Run:
    rows: Rows
    fields: Fields
    max_buckets: int
    made: int = 0

    def count(self, n: int) -> None:
        self.made += n
        if self.made > self.max_buckets:
            raise TooManyBuckets(self.max_buckets)


def evaluate(nodes: list[Node], run: Run, rows: np.ndarray) -> dict[str, Any]:
    """The answer of each of ``nodes`` over the rows numbered ``rows``."""
    return {node.name: _answer(node, run, rows) for node in nodes}


def _answer(node: Node, run: Run, rows: np.ndarray) -> dict[str, Any]:
    if node.metric is not None:
        return _metric(node.metric, run, rows)
    if node.histogram is not None:
        return _histogram(node, node.histogram, run, rows)
    assert node.terms is not None
    return _split(node, node.terms, run, rows)


def _metric(metric: metrics.Metric, run: Run, rows: np.ndarray) -> dict[str, Any]:
    data = run.rows
    if run.fields.is_id(metric.field):
        variables = len(np.unique(data.var[rows])) if len(rows) else 0
        return metrics.compute(metric, np.empty(len(rows)), distinct=variables)
    if run.fields.is_time(metric.field):
        return metrics.compute(metric, data.ts_ms[rows].astype(np.float64))
    values = data.numbers(metric.field)[rows]
    numbers = values[~np.isnan(values)]
    if metric.kind in ("value_count", "cardinality") and len(numbers) < len(rows):
        leaves = [v for v in data.leaves(metric.field, rows) if v is not None]
        if metric.kind == "value_count":
            return {"value": sum(len(v) if isinstance(v, list) else 1 for v in leaves)}
        distinct = {orjson.dumps(v, option=orjson.OPT_SORT_KEYS) for v in leaves}
        return {"value": len(distinct)}
    return metrics.compute(metric, numbers)


def _groups(labels: np.ndarray, count: int) -> list[np.ndarray]:
    """For each label 0..count-1, the positions holding it (in order)."""
    order = np.argsort(labels, kind="stable")
    sizes = np.bincount(labels, minlength=count)
    return np.split(order, np.cumsum(sizes)[:-1])


def _histogram(node: Node, hist: buckets.Histogram, run: Run, rows: np.ndarray) -> dict[str, Any]:
    keys, labels = buckets.assign(hist, run.rows.ts[rows], run.max_buckets)
    out = []
    for key, positions in zip(keys.tolist(), _groups(labels, len(keys)), strict=True):
        if len(positions) < hist.min_doc_count:
            continue
        run.count(1)
        inside = rows[positions]
        bucket = {"key_as_string": hist.label(key), "key": key, "doc_count": len(inside)}
        out.append(bucket | evaluate(node.children, run, inside))
    return {"buckets": out}


def _split(node: Node, terms: Terms, run: Run, rows: np.ndarray) -> dict[str, Any]:
    data = run.rows
    groups = _groups(data.var[rows], len(data.variables))
    found = []
    for number, positions in enumerate(groups):
        if len(positions) < terms.min_doc_count:
            continue
        inside = rows[positions]
        answers = evaluate(node.children, run, inside)
        found.append((data.variables[number].id, len(inside), answers))
    answer = split_answer(terms, found, node.children)
    run.count(len(answer["buckets"]))
    return answer


def split_answer(
    terms: Terms, found: list[tuple[str, int, dict[str, Any]]], children: list[Node]
) -> dict[str, Any]:
    """A ``terms`` answer from (id, doc_count, sub-answers) of each variable: ordered, cut to
    ``size``, the rest counted in ``sum_other_doc_count``."""
    named = {c.name: c.metric for c in children if c.metric is not None}
    for key, ascending in reversed(terms.order):  # stable sorts, the last key first
        found.sort(key=lambda f: _order_key(f, key, named), reverse=not ascending)
    kept, rest = found[: terms.size], found[terms.size :]
    return {
        "doc_count_error_upper_bound": 0,
        "sum_other_doc_count": sum(count for _, count, _ in rest),
        "buckets": [{"key": k, "doc_count": count} | answers for k, count, answers in kept],
    }


def _order_key(found: tuple[str, int, dict[str, Any]], key: str, named: dict[str, Any]) -> Any:
    variable, count, answers = found
    if key == "_key":
        return variable
    if key == "_count":
        return count
    name, _, path = key.partition(".")
    metric = named.get(name)
    if metric is None:
        raise Unsupported(f"terms.order: {key}", "order by _key, _count or a metric of the bucket")
    value = metrics.sort_value(metric, answers[name], path or "value")
    return (value is not None, value or 0.0)
