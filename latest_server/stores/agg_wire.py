"""The parts of an aggregation as messages, for the query workers (query_worker.py): a task as
JSON data (object names, the row-group slice, the window, fields and buckets; never code), a
partial as numpy arrays in an ``.npz`` read without pickle. Either side refuses what does not
decode (``WireError``); the server then runs the part itself."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import orjson

from latest_server.settings import Settings
from latest_server.stores import buckets
from latest_server.stores.agg_parts import Spec, Task
from latest_server.stores.partials import FieldPartial, Partial

NUMBERS = ("count", "sum", "sumsq", "min", "max", "first", "last")


class WireError(ValueError):
    """A message that is not a part or a partial."""


def encode_task(task: Task) -> bytes:
    """A task without hot entries (those parts stay in the server)."""
    if task.hot is not None:
        raise WireError("a part with hot entries is not sent")
    spec = task.spec
    interval = spec.interval
    return orjson.dumps(
        {
            "objects_url": task.objects_url,
            "names": list(task.names),
            "part": list(task.part),
            "hashes": task.hashes,
            "whole": task.whole,
            "lo": spec.lo,
            "hi": spec.hi,
            "fields": list(spec.fields),
            "interval": None if interval is None else [interval.fixed, interval.calendar],
            "tz": spec.tz,
            "values": spec.values,
        }
    )


def decode_task(body: bytes, settings: Settings) -> Task:
    """The task of a message, checked field by field; the worker's own ``settings``."""
    try:
        data = orjson.loads(body)
        names = tuple(_each(data["names"], str))
        fields = tuple(_each(data["fields"], str))
        k, of = _each(data["part"], int)
        lo, hi = _int(data["lo"]), _int(data["hi"])
        interval = None
        if data["interval"] is not None:
            fixed, calendar = data["interval"]
            if calendar is not None:
                if calendar not in buckets.CALENDAR_UNITS:
                    raise WireError(f"unknown calendar unit {calendar!r}")
                interval = buckets.Interval(calendar=calendar)
            else:
                interval = buckets.Interval(fixed=_int(fixed))
                if interval.fixed is None or interval.fixed <= 0:
                    raise WireError("a fixed interval is positive")
        tz = data["tz"]
        if not isinstance(tz, str):
            raise WireError("tz is text")
        buckets.zone(tz)
        if not names or not 0 <= k < of or lo >= hi:
            raise WireError("no object, a bad slice or an empty window")
        spec = Spec(lo, hi, fields, interval, tz, values=data["values"] is True)
        return Task(
            _str(data["objects_url"]),
            settings,
            names,
            spec,
            (k, of),
            hashes=data["hashes"] is True,
            whole=data["whole"] is True,
        )
    except WireError:
        raise
    except Exception as exc:  # malformed JSON, a missing key, a bad zone
        raise WireError(f"not a part: {exc}") from None


def encode_partial(partial: Partial) -> bytes:
    arrays: dict[str, Any] = {"starts": partial.starts, "docs": partial.docs}
    names = list(partial.fields)
    for i, name in enumerate(names):
        part = partial.fields[name]
        for number in NUMBERS:
            arrays[f"{i}.{number}"] = getattr(part, number)
        if part.values is not None:
            arrays[f"{i}.lengths"] = np.array([len(v) for v in part.values], np.int64)
            arrays[f"{i}.values"] = (
                np.concatenate(part.values) if part.values else np.zeros(0, np.float64)
            )
    arrays["names"] = np.frombuffer(orjson.dumps(names), np.uint8)
    out = io.BytesIO()
    np.savez(out, **arrays)
    return out.getvalue()


def decode_partial(body: bytes, fields: tuple[str, ...]) -> Partial:
    """The partial of a reply, which must hold ``fields`` and consistent shapes."""
    try:
        with np.load(io.BytesIO(body), allow_pickle=False) as found:
            names = orjson.loads(found["names"].tobytes())
            if names != list(fields):
                raise WireError("the partial holds other fields")
            starts = found["starts"].astype(np.int64, copy=False)
            n = len(starts)
            out = Partial(starts, found["docs"].astype(np.int64, copy=False))
            for i, name in enumerate(names):
                numbers = [found[f"{i}.{number}"] for number in NUMBERS]
                values = None
                if f"{i}.lengths" in found:
                    lengths = found[f"{i}.lengths"]
                    cuts: Any = np.cumsum(lengths)[:-1] if len(lengths) else []
                    values = list(np.split(found[f"{i}.values"], cuts)) if n else []
                    if len(values) != n:
                        raise WireError("values of another number of buckets")
                count, total, squares, least, most, first, last = numbers
                out.fields[name] = FieldPartial(
                    count, total, squares, least, most, first, last, values
                )
                if any(len(a) != n for a in numbers) or numbers[5].shape[1:] != (3,):
                    raise WireError("arrays of another number of buckets")
            if len(out.docs) != n:
                raise WireError("docs of another number of buckets")
            return out
    except WireError:
        raise
    except Exception as exc:  # not an npz, a missing array, an object array
        raise WireError(f"not a partial: {exc}") from None


def _each(items: Any, kind: type) -> list[Any]:
    if not isinstance(items, list) or not all(
        isinstance(i, kind) and not isinstance(i, bool) for i in items
    ):
        raise WireError(f"a list of {kind.__name__} expected")
    return items


def _int(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise WireError("an integer expected")
    return value


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise WireError("text expected")
    return value
