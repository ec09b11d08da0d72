"""The example Grafana dashboard (docs/grafana/) asks only for metrics the server defines, with
labels they have, through the Prometheus data source variable."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import orjson
from prometheus_client import REGISTRY
from prometheus_client.metrics import MetricWrapperBase

from latest_server import metrics

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = orjson.loads((ROOT / "docs" / "grafana" / "latest-server-dashboard.json").read_bytes())
SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}


def defined() -> dict[str, tuple[str, ...]]:
    """Every series name the server can expose, with the labels of its metric."""
    labels = {
        m._name: tuple(m._labelnames)
        for m in vars(metrics).values()
        if isinstance(m, MetricWrapperBase)
    }
    names: dict[str, tuple[str, ...]] = {}
    for family in REGISTRY.collect():
        if family.name in labels:
            for suffix in SUFFIXES[family.type]:
                extra = ("le",) if suffix == "_bucket" else ()
                names[family.name + suffix] = labels[family.name] + extra
    return names


def targets() -> list[tuple[dict[str, Any], dict[str, Any]]]:
    return [(p, t) for p in DASHBOARD["panels"] if p["type"] != "row" for t in p["targets"]]


def test_every_metric_the_dashboard_uses_exists() -> None:
    known = defined()
    used = set()
    for _panel, target in targets():
        expr = target["expr"]
        names = set(re.findall(r"\blatest_[a-z0-9_]+", expr))
        assert names, expr
        for name in names:
            assert name in known, f"{name} is not a metric of the server ({expr})"
            for label in re.findall(r"(\w+)\s*(?:=|!=|=~|!~)\s*\"", expr):
                assert label in known[name], f"{name} has no label {label}"
        grouped = {g.strip() for by in re.findall(r"by \(([^)]*)\)", expr) for g in by.split(",")}
        assert grouped <= {label for name in names for label in known[name]}, expr
        used |= names
    # Each metric family of the server is on the dashboard.
    families = {re.sub(r"_(total|bucket|sum|count)$", "", name) for name in used}
    assert families == {m._name for m in vars(metrics).values() if isinstance(m, MetricWrapperBase)}


def test_panels_read_the_data_source_variable() -> None:
    (variable,) = DASHBOARD["templating"]["list"]
    assert variable["type"] == "datasource" and variable["query"] == "prometheus"
    for panel, target in targets():
        for holder in (panel, target):
            assert holder["datasource"]["uid"] == "${" + variable["name"] + "}"
