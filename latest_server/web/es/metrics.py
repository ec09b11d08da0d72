"""Metric aggregations of a search, in Elasticsearch's answer shapes: ``min``, ``max``, ``avg``,
``sum``, ``value_count``, ``stats``, ``extended_stats``, ``cardinality``, ``percentiles``.

Each takes the values of one field in a bucket (numbers; a document without a number there has
none). ``cardinality`` and ``percentiles`` are exact here (distinct values; linear interpolation
between the closest ranks), where Elasticsearch estimates them (HyperLogLog++, t-digest): on the
small sets where its estimates are exact, the answers are the same.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from latest_server.web.es.errors import IllegalArgument, ParseError, Unsupported

KINDS = (
    "min",
    "max",
    "avg",
    "sum",
    "value_count",
    "stats",
    "extended_stats",
    "cardinality",
    "percentiles",
)
DEFAULT_PERCENTS: tuple[float, ...] = (1.0, 5.0, 25.0, 50.0, 75.0, 95.0, 99.0)
SINGLE_VALUE = ("min", "max", "avg", "sum", "value_count", "cardinality")
COMMON = {"field", "missing"}
OPTIONS = {
    "percentiles": {"percents", "keyed", "tdigest", "hdr"},
    "extended_stats": {"sigma"},
    "cardinality": {"precision_threshold"},
}


@dataclass(frozen=True, slots=True)
class Metric:
    name: str
    kind: str
    field: str
    percents: tuple[float, ...] = DEFAULT_PERCENTS
    keyed: bool = True
    sigma: float = 2.0


def parse(name: str, kind: str, spec: Any) -> Metric:
    if not isinstance(spec, dict):
        raise ParseError(f"[{kind}] aggregation [{name}] must be an object")
    if "script" in spec:
        raise Unsupported(f"aggs.{name}.{kind}.script", "scripts")
    if "missing" in spec:
        raise Unsupported(f"aggs.{name}.{kind}.missing")
    for key in spec:
        if key not in COMMON | OPTIONS.get(kind, set()) | {"format"}:
            raise ParseError(f"[{kind}] unknown field [{key}]")
    if not isinstance(spec.get("field"), str) or not spec["field"]:
        raise IllegalArgument(
            f"Required one of fields [field, script], but none were specified. "
            f"(aggregation [{name}])"
        )
    percents: tuple[float, ...] = DEFAULT_PERCENTS
    if kind == "percentiles" and "percents" in spec:
        raw = spec["percents"]
        if not isinstance(raw, list) or not raw:
            raise IllegalArgument("[percents] must not be empty")
        try:
            percents = tuple(float(p) for p in raw)  # Grafana sends them as strings
        except (TypeError, ValueError):
            raise ParseError(f"[percents] must be numbers, not {raw}") from None
        if any(not 0 <= p <= 100 for p in percents):
            raise IllegalArgument("percent must be in [0,100]")
    sigma = 2.0
    if kind == "extended_stats" and "sigma" in spec:
        try:
            sigma = float(spec["sigma"])
        except (TypeError, ValueError):
            raise ParseError(f"[sigma] must be a number, not {spec['sigma']}") from None
        if sigma < 0:
            raise IllegalArgument(f"[sigma] must be greater than or equal to 0. Found [{sigma}]")
    keyed = bool(spec.get("keyed", True))
    return Metric(name, kind, spec["field"], percents, keyed, sigma)


def _number(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


def compute(metric: Metric, values: np.ndarray, distinct: int | None = None) -> dict[str, Any]:
    """The answer of ``metric`` over ``values`` (float64, no NaN); ``distinct`` overrides the
    count of distinct values (cardinality of the id)."""
    kind, n = metric.kind, len(values)
    if kind == "value_count":
        return {"value": n}
    if kind == "cardinality":
        return {"value": distinct if distinct is not None else len(np.unique(values))}
    if kind == "sum":
        return {"value": float(values.sum()) if n else 0.0}
    if kind in ("min", "max", "avg"):
        if not n:
            return {"value": None}
        value = values.min() if kind == "min" else values.max() if kind == "max" else values.mean()
        return {"value": float(value)}
    if kind == "percentiles":
        return _percentiles(metric, values)
    stats: dict[str, Any] = {
        "count": n,
        "min": float(values.min()) if n else None,
        "max": float(values.max()) if n else None,
        "avg": float(values.mean()) if n else None,
        "sum": float(values.sum()) if n else 0.0,
    }
    if kind == "stats":
        return stats
    squares = float(np.square(values).sum())
    return stats | extended(n, stats["sum"], squares, metric.sigma)


def extended(n: int, total: float, squares: float, sigma: float) -> dict[str, Any]:
    """extended_stats' spread of ``n`` numbers of sum ``total`` and sum of squares ``squares``."""
    if not n:
        nothing = {
            "upper": None,
            "lower": None,
            "upper_population": None,
            "lower_population": None,
            "upper_sampling": None,
            "lower_sampling": None,
        }
        return {
            "sum_of_squares": None,
            "variance": None,
            "variance_population": None,
            "variance_sampling": None,
            "std_deviation": None,
            "std_deviation_population": None,
            "std_deviation_sampling": None,
            "std_deviation_bounds": nothing,
        }
    mean = total / n
    population = max(squares / n - mean * mean, 0.0)
    sampling = max((squares - n * mean * mean) / (n - 1), 0.0) if n > 1 else math.inf
    deviation, deviation_sampling = math.sqrt(population), math.sqrt(sampling)
    sampling_value = None if math.isinf(sampling) else sampling
    deviation_sampling_value = None if math.isinf(deviation_sampling) else deviation_sampling

    def bound(spread: float | None, sign: int) -> float | None:
        return None if spread is None else mean + sign * sigma * spread

    return {
        "sum_of_squares": squares,
        "variance": population,
        "variance_population": population,
        "variance_sampling": sampling_value,
        "std_deviation": deviation,
        "std_deviation_population": deviation,
        "std_deviation_sampling": deviation_sampling_value,
        "std_deviation_bounds": {
            "upper": bound(deviation, 1),
            "lower": bound(deviation, -1),
            "upper_population": bound(deviation, 1),
            "lower_population": bound(deviation, -1),
            "upper_sampling": bound(deviation_sampling_value, 1),
            "lower_sampling": bound(deviation_sampling_value, -1),
        },
    }


def _percentiles(metric: Metric, values: np.ndarray) -> dict[str, Any]:
    if len(values):
        found = np.percentile(values, metric.percents)
        answers = [_number(float(v)) for v in found]
    else:
        answers = [None] * len(metric.percents)
    if metric.keyed:
        return {"values": {str(p): v for p, v in zip(metric.percents, answers, strict=True)}}
    return {
        "values": [{"key": p, "value": v} for p, v in zip(metric.percents, answers, strict=True)]
    }


def sort_value(metric: Metric, answer: dict[str, Any], path: str) -> float | None:
    """The number a ``terms`` order names: ``<name>`` of a single-value metric, or
    ``<name>.<stat>`` of stats and extended_stats."""
    if path == "value" and metric.kind in SINGLE_VALUE:
        value = answer["value"]
    elif metric.kind in ("stats", "extended_stats") and path in answer:
        value = answer[path]
    else:
        raise Unsupported(f"order by {metric.name}.{path}")
    return None if value is None else float(value)
