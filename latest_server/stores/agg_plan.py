"""The plan of an aggregation: which tasks read which objects, and where the hot entries go.

A duplicate (the same entry in two tiers, or a packet redelivered after its first copy left
Redis) always has the same ts. So the objects of a variable are grouped where their time
ranges overlap (a ``Cluster``), and each cluster is de-duplicated alone: a cluster of one object
(sorted, without duplicates of its own) is split by row groups into tasks that need no
de-duplication; a cluster of several objects is one task. Hot entries inside a cluster's span
join it (the cluster becomes one de-duplicating task); the rest are aggregated alone.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from latest_server.settings import Settings
from latest_server.stores import tiers
from latest_server.stores.agg_parts import Spec, Task
from latest_server.stores.segments import ROW_GROUP_ROWS, Window

WHOLE_BYTES = 1024 * 1024  # objects this small are read whole (see agg_parts.HOLE_BYTES)
ROWS_PER_TASK = 8 * ROW_GROUP_ROWS  # a task's share of an object
MAX_TASKS_PER_OBJECT = 64


@dataclass
class Cluster:
    key: str  # the variable
    names: tuple[str, ...]
    lo: int  # the span of its objects' times, inclusive
    hi: int
    rows: int  # estimated rows of the window
    tasks: list[Task] = field(default_factory=list)


def clusters_of(
    key: str,
    chosen: list[tiers.StoredObject],
    spec: Spec,
    objects_url: str,
    settings: Settings,
    sizes: Mapping[str, int] | None = None,
) -> list[Cluster]:
    """The clusters of a variable's objects that overlap the window, with their tasks (as if
    no hot entry fell in their span: see with_hot). Objects of ``sizes`` up to WHOLE_BYTES are
    read whole, in one request instead of a footer's and the columns'."""
    sizes = sizes or {}
    out = []
    for group in _overlapping(chosen):
        names = tuple(s.name for s in group)
        whole = all(sizes.get(name, WHOLE_BYTES + 1) <= WHOLE_BYTES for name in names)
        estimate = sum(_estimate(s, spec.window) for s in group)
        cluster = Cluster(
            key, names, min(s.min_ts for s in group), max(s.max_ts for s in group), estimate
        )
        if len(group) == 1:
            count = max(1, min(MAX_TASKS_PER_OBJECT, math.ceil(estimate / ROWS_PER_TASK)))
            cluster.tasks = [
                Task(objects_url, settings, names, spec, (k, count), whole=whole)
                for k in range(count)
            ]
        else:
            cluster.tasks = [Task(objects_url, settings, names, spec, whole=whole)]
        out.append(cluster)
    return out


def with_hot(
    clusters: list[Cluster], hot: pa.Table, spec: Spec
) -> tuple[list[tuple[Cluster, Task]], pa.Table]:
    """The clusters that some of ``hot`` (entries: ts, seq, hash, doc) falls in, each with the
    one task that replaces its tasks (its objects and those entries, de-duplicated together),
    and the hot entries outside every cluster."""
    ts = hot.column("ts").to_numpy()
    taken = np.zeros(len(ts), dtype=bool)
    redone = []
    for cluster in clusters:
        inside = (ts >= cluster.lo) & (ts <= cluster.hi)
        if not inside.any():
            continue
        taken |= inside
        first = cluster.tasks[0]
        task = Task(
            first.objects_url,
            first.settings,
            cluster.names,
            spec,
            hot=hot.filter(inside),
            whole=first.whole,
        )
        redone.append((cluster, task))
    rest = hot.filter(pa.array(~taken)) if taken.any() else hot
    return redone, rest


def _overlapping(chosen: list[tiers.StoredObject]) -> list[list[tiers.StoredObject]]:
    out: list[list[tiers.StoredObject]] = []
    end = None
    for stored in sorted(chosen, key=lambda s: s.min_ts):
        if end is not None and stored.min_ts <= end:
            out[-1].append(stored)
            end = max(end, stored.max_ts)
        else:
            out.append([stored])
            end = stored.max_ts
    return out


def _estimate(stored: tiers.StoredObject, window: Window) -> int:
    """Rows of the window in an object, from its name: its seqs, by the share of its time."""
    rows = stored.max_seq - stored.min_seq + 1
    span = stored.max_ts - stored.min_ts + 1
    inside = min(stored.max_ts + 1, window.hi) - max(stored.min_ts, window.lo)
    return max(1, rows * max(inside, 1) // span)
