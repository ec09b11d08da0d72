"""Aggregations the aggregation engine answers (stores/aggregate.py: every tier, parts in
parallel, a result cache), in the shapes Grafana's metric queries take:

- a ``date_histogram`` of numeric metrics, or of none (Grafana's Count, a log volume: the
  entries' counts, read without their documents), one series over every variable searched;
- a ``terms`` on the id of such a ``date_histogram``, or of numeric metrics or none (one
  bucket per variable);
- a numeric metric alone (one bucket over the window).

Numeric metrics are ``min``, ``max``, ``avg``, ``sum``, ``stats``, ``extended_stats`` and
``percentiles`` of a document leaf. Other shapes (``value_count`` and ``cardinality``, which
count strings too; an ``offset``; nesting beyond these) are worked out from the rows by
web/es/aggs.py, with the engine's buckets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from latest_server.errors import BadRequest
from latest_server.stores.aggregate import AggQuery, Aggregator
from latest_server.web.es import buckets, metrics
from latest_server.web.es.aggs import Node, Terms, split_answer
from latest_server.web.es.errors import TooManyBuckets
from latest_server.web.es.query import Fields, Plan
from latest_server.web.es.rows import Variable

KINDS = {
    "min": "min",
    "max": "max",
    "avg": "avg",
    "sum": "sum",
    "stats": "extended_stats",
    "extended_stats": "extended_stats",
    "percentiles": "percentiles",
}


@dataclass(frozen=True, slots=True)
class Shape:
    node: Node
    terms: Terms | None
    histogram: buckets.Histogram | None
    metrics: tuple[metrics.Metric, ...]
    children: list[Node]  # the terms' children (for its order by a metric)


def _numeric(nodes: list[Node], fields: Fields) -> tuple[metrics.Metric, ...] | None:
    found = []
    for node in nodes:
        metric = node.metric
        if metric is None or metric.kind not in KINDS:
            return None
        if fields.is_id(metric.field) or fields.is_time(metric.field):
            return None
        found.append(metric)
    return tuple(found)


def shape_of(node: Node, fields: Fields) -> Shape | None:
    """How the engine answers ``node`` (a top-level aggregation), or None."""
    if node.metric is not None:
        alone = _numeric([node], fields)
        return None if not alone else Shape(node, None, None, alone, [])
    if node.histogram is not None:
        inner = _numeric(node.children, fields)
        if inner is None or node.histogram.offset_ms:
            return None
        return Shape(node, None, node.histogram, inner, [])
    assert node.terms is not None
    children = node.children
    if len(children) == 1 and children[0].histogram is not None:
        histogram = children[0].histogram
        inner = _numeric(children[0].children, fields)
        if inner is None or histogram.offset_ms:
            return None
        return Shape(node, node.terms, histogram, inner, children)
    inner = _numeric(children, fields)
    return None if inner is None else Shape(node, node.terms, None, inner, children)


async def answer(
    engine: Aggregator, shape: Shape, chosen: list[Variable], plan: Plan, max_buckets: int
) -> tuple[dict[str, Any], int]:
    """The aggregation's answer, and the entries of the window (an exact ``hits.total``)."""
    hist = shape.histogram
    wanted = shape.metrics
    percents = sorted({p for m in wanted if m.kind == "percentiles" for p in m.percents})
    query = AggQuery(
        keys=tuple(v.key for v in chosen),
        fields=tuple(sorted({m.field for m in wanted})),
        aggs=tuple(sorted({KINDS[m.kind] for m in wanted})) or ("count",),
        lo=plan.lo,
        hi=plan.hi,
        interval=None if hist is None else buckets.interval(hist),
        tz="UTC" if hist is None else hist.zone_name,
        per_variable=shape.terms is not None,
        percents=tuple(percents) or metrics.DEFAULT_PERCENTS,
        min_doc_count=0 if hist is None else hist.min_doc_count,
        bounds=None if hist is None or hist.bounds is None else _us(hist.bounds),
    )
    try:
        result = await engine.aggregate(query)
    except BadRequest as exc:
        if exc.reason == "too_many_buckets":
            raise TooManyBuckets(max_buckets) from None
        raise
    made = sum(len(series.buckets) for series in result.series)
    if made > max_buckets:
        raise TooManyBuckets(max_buckets)
    per_series = []
    for series in result.series:
        if hist is None:
            values = series.buckets[0].values if series.buckets else None
            docs = series.buckets[0].docs if series.buckets else 0
            per_series.append((docs, _metrics(wanted, values)))
            continue
        out = []
        for bucket in series.buckets:
            key = bucket.start // 1000
            entry = {"key_as_string": hist.label(key), "key": key, "doc_count": bucket.docs}
            out.append(entry | _metrics(wanted, bucket.values))
        per_series.append((sum(b.docs for b in series.buckets), {"buckets": out}))
    if shape.terms is None:
        return per_series[0][1], result.entries
    found = []
    for variable, (docs, inner) in zip(chosen, per_series, strict=True):
        if docs < shape.terms.min_doc_count:
            continue
        answers = inner if hist is None else {shape.children[0].name: inner}
        found.append((variable.id, docs, answers))
    return split_answer(shape.terms, found, shape.children), result.entries


def _us(bounds: tuple[int, int]) -> tuple[int, int]:
    return bounds[0] * 1000, bounds[1] * 1000


def _metrics(
    wanted: tuple[metrics.Metric, ...], values: dict[str, dict[str, Any]] | None
) -> dict[str, Any]:
    return {m.name: _metric(m, None if values is None else values.get(m.field)) for m in wanted}


def _metric(metric: metrics.Metric, found: dict[str, Any] | None) -> dict[str, Any]:
    if found is None:  # no bucket at all: the answer over no values
        return metrics.compute(metric, np.empty(0))
    kind = metric.kind
    if kind in ("min", "max", "avg", "sum"):
        return {"value": found[kind]}
    if kind == "percentiles":
        table = found["percentiles"]
        pairs = [(p, table[str(float(p))]) for p in metric.percents]
        if metric.keyed:
            return {"values": {str(p): v for p, v in pairs}}
        return {"values": [{"key": p, "value": v} for p, v in pairs]}
    spread = found["extended_stats"]
    n, total = int(spread["count"]), float(spread["sum"])
    stats = {"count": n, "min": spread["min"], "max": spread["max"], "avg": spread["avg"]}
    stats["sum"] = total
    if kind == "stats":
        return stats
    squares = float(spread["sum_of_squares"] or 0.0)
    return stats | metrics.extended(n, total, squares, metric.sigma)


async def count(engine: Aggregator, chosen: list[Variable], plan: Plan) -> int:
    """The entries of the window (``hits.total``), counted without reading a document."""
    query = AggQuery(tuple(v.key for v in chosen), (), ("count",), plan.lo, plan.hi)
    return (await engine.aggregate(query)).entries
