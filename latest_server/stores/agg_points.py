"""Single entries rather than buckets: a variable's last N entries holding a number, and the
value in force at an instant. Both read the hot tier, then objects newest first, only while an
object may still hold one of the entries wanted (its name says its latest time)."""

from __future__ import annotations

import asyncio

import numpy as np
import pyarrow as pa

from latest_server.errors import ObjectMissing, StoreUnavailable
from latest_server.settings import Settings
from latest_server.stores import agg_parts, tiers
from latest_server.stores.agg_parts import Spec, Task
from latest_server.stores.history import ALL, RELIST_ATTEMPTS, HistoryStore
from latest_server.stores.segments import Window


async def last(
    history: HistoryStore,
    objects_url: str,
    settings: Settings,
    key: str,
    fields: tuple[str, ...],
    window: Window,
    n: int,
) -> pa.Table:
    """The last ``n`` entries of ``window`` (by ts, then seq) of variable ``key`` holding a
    number at one of ``fields``: columns ts, seq, v:<field> (NaN: none), in time order."""
    for _attempt in range(RELIST_ATTEMPTS):
        try:
            return await _last(history, objects_url, settings, key, fields, window, n)
        except ObjectMissing:
            continue  # a merge replaced an object: list again
    raise StoreUnavailable(f"history of {key} kept moving during {RELIST_ATTEMPTS} reads")


async def _last(
    history: HistoryStore,
    objects_url: str,
    settings: Settings,
    key: str,
    fields: tuple[str, ...],
    window: Window,
    n: int,
) -> pa.Table:
    spec = Spec(window.lo, window.hi, fields, None)
    hot = await history.read_hot(key, spec.window, ALL)  # upstream first, then a fresh LIST
    rows = await asyncio.to_thread(agg_parts.hot_rows, hot, fields)
    listed = await asyncio.to_thread(tiers.list_objects, history.objects, key)
    chosen = sorted(
        (s for s in listed if spec.window.overlaps(s.min_ts, s.max_ts)),
        key=lambda s: s.max_ts,
        reverse=True,
    )
    tables = [rows]
    for stored in chosen:
        held = numbered(agg_parts.deduplicate(pa.concat_tables(tables)), fields)
        if held.num_rows >= n and stored.max_ts < held.column("ts")[-n].as_py():
            break  # this object and every older one end before the last n
        task = Task(objects_url, settings, (stored.name,), spec, hashes=True)
        tables.append(await asyncio.to_thread(agg_parts.rows_of, task, history.objects))
    table = numbered(agg_parts.deduplicate(pa.concat_tables(tables)), fields)
    return table.slice(max(0, table.num_rows - n)).drop_columns(["hash"])


async def at(
    history: HistoryStore,
    objects_url: str,
    settings: Settings,
    key: str,
    fields: tuple[str, ...],
    moment: int,
) -> dict[str, tuple[int, int, float] | None]:
    """Per field, the (ts, seq, value) in force at ``moment`` (µs): the entry holding a number
    there of greatest ts <= moment, ties by greatest seq; None if there is none."""
    out: dict[str, tuple[int, int, float] | None] = {}
    window = Window(-(2**62), moment + 1)
    for field in fields:
        found = await last(history, objects_url, settings, key, (field,), window, 1)
        if not found.num_rows:
            out[field] = None
            continue
        ts, seq = found.column("ts")[0].as_py(), found.column("seq")[0].as_py()
        out[field] = (int(ts), int(seq), float(found.column(agg_parts.VALUE + field)[0].as_py()))
    return out


def numbered(table: pa.Table, fields: tuple[str, ...]) -> pa.Table:
    """Rows holding a number at one of ``fields`` at least."""
    held = np.zeros(table.num_rows, dtype=bool)
    for f in fields:
        held |= ~np.isnan(table.column(agg_parts.VALUE + f).to_numpy())
    return table if held.all() else table.filter(pa.array(held))
