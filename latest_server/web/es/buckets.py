"""The ``date_histogram`` of a search: its options read (``fixed_interval``,
``calendar_interval``, a legacy ``interval`` of either, ``time_zone``, ``offset``,
``min_doc_count``, ``extended_bounds``, ``format``) and each bucket's ``key_as_string``. The
buckets themselves are the aggregation engine's (stores/buckets.py): fixed and calendar
intervals rounded in the zone's local time, a day 23 or 25 hours long across a DST change, as
in Elasticsearch. A bucket's ``key`` is the epoch milliseconds of its start.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

import numpy as np

from latest_server.errors import BadRequest
from latest_server.stores import buckets as engine_buckets
from latest_server.web.es.errors import IllegalArgument, ParseError, TooManyBuckets, Unsupported

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ONE_MS = timedelta(milliseconds=1)
FIXED_UNITS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
CALENDAR = {
    "minute": "minute",
    "1m": "minute",
    "hour": "hour",
    "1h": "hour",
    "day": "day",
    "1d": "day",
    "week": "week",
    "1w": "week",
    "month": "month",
    "1M": "month",
    "quarter": "quarter",
    "1q": "quarter",
    "year": "year",
    "1y": "year",
}
ISO_FORMATS = ("strict_date_optional_time", "date_optional_time", "date_time", "strict_date_time")


@dataclass(frozen=True, slots=True)
class Histogram:
    """How entries are bucketed: one of ``fixed_ms`` and ``calendar``."""

    fixed_ms: int | None
    calendar: str | None
    zone_name: str  # as the request gave it (the engine's tz)
    zone: tzinfo
    offset_ms: int
    fmt: str | None
    min_doc_count: int
    bounds: tuple[int, int] | None  # extended_bounds, epoch ms

    def label(self, key_ms: int) -> str:
        """``key_as_string``."""
        if self.fmt == "epoch_millis":
            return str(key_ms)
        if self.fmt == "epoch_second":
            return str(key_ms // 1000)
        moment = (EPOCH + key_ms * ONE_MS).astimezone(self.zone)
        text = moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}"
        offset = moment.utcoffset() or timedelta(0)
        if not offset:
            return text + "Z"
        sign = "-" if offset < timedelta(0) else "+"
        minutes = abs(int(offset.total_seconds())) // 60
        return f"{text}{sign}{minutes // 60:02d}:{minutes % 60:02d}"


def parse_fixed(text: Any, where: str) -> int:
    found = re.fullmatch(r"(\d+)(ms|s|m|h|d)", str(text).strip())
    if found is None or int(found.group(1)) == 0:
        raise IllegalArgument(
            f"failed to parse setting [{where}] with value [{text}] as a time value"
        )
    return int(found.group(1)) * FIXED_UNITS[found.group(2)]


def parse_offset(text: Any) -> int:
    if text is None:
        return 0
    value = str(text).strip()
    sign = -1 if value.startswith("-") else 1
    return sign * parse_fixed(value.lstrip("+-"), "date_histogram.offset")


def parse_zone(text: Any) -> tuple[str, tzinfo]:
    name = "UTC" if text is None else str(text)
    try:
        return name, engine_buckets.zone(name)
    except BadRequest:
        raise IllegalArgument(f"Unknown time-zone ID: {name}") from None


def parse(spec: dict[str, Any], bounds: tuple[int, int] | None) -> Histogram:
    kinds = [k for k in ("fixed_interval", "calendar_interval", "interval") if k in spec]
    if len(kinds) != 1:
        raise IllegalArgument(
            "date_histogram needs exactly one of [fixed_interval], "
            "[calendar_interval] or [interval]"
        )
    kind = kinds[0]
    value = spec[kind]
    fixed: int | None = None
    calendar: str | None = None
    if kind == "calendar_interval":
        if str(value) not in CALENDAR:
            raise IllegalArgument(
                f"The supplied interval [{value}] could not be parsed as a calendar interval."
            )
        calendar = CALENDAR[str(value)]
    elif kind == "interval" and str(value) in CALENDAR:
        calendar = CALENDAR[str(value)]
    else:
        fixed = parse_fixed(value, f"date_histogram.{kind}")
    fmt = spec.get("format")
    if fmt is not None and fmt not in ("epoch_millis", "epoch_second", *ISO_FORMATS):
        raise Unsupported(
            f"date_histogram.format: {fmt}",
            "formats are epoch_millis, epoch_second and strict_date_optional_time",
        )
    min_doc_count = spec.get("min_doc_count", 0)
    if isinstance(min_doc_count, str) and min_doc_count.isdigit():
        min_doc_count = int(min_doc_count)
    if not isinstance(min_doc_count, int) or min_doc_count < 0:
        raise ParseError(f"[min_doc_count] must be a non-negative integer, not [{min_doc_count}]")
    return Histogram(
        fixed,
        calendar,
        *parse_zone(spec.get("time_zone")),
        parse_offset(spec.get("offset")),
        fmt,
        min_doc_count,
        bounds if min_doc_count == 0 else None,
    )


def interval(hist: Histogram) -> engine_buckets.Interval:
    """The engine's interval of a histogram."""
    if hist.fixed_ms is not None:
        return engine_buckets.Interval(fixed=hist.fixed_ms * 1000)
    return engine_buckets.Interval(calendar=hist.calendar)


def assign(hist: Histogram, ts_us: np.ndarray, max_buckets: int) -> tuple[np.ndarray, np.ndarray]:
    """(keys: the start, epoch ms, of every bucket from the first to the last, data and extended
    bounds included; the bucket of each row as an index into keys)."""
    shift = hist.offset_ms * 1000
    ends = [int(ts_us.min()), int(ts_us.max())] if len(ts_us) else []
    if hist.bounds is not None:
        ends += [hist.bounds[0] * 1000, hist.bounds[1] * 1000]
    if not ends:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    step = interval(hist)
    try:
        starts = engine_buckets.bucket_range(min(ends) - shift, max(ends) - shift, step, hist.zone)
    except BadRequest:
        raise TooManyBuckets(max_buckets) from None
    if len(starts) > max_buckets:
        raise TooManyBuckets(max_buckets)
    own = engine_buckets.bucket_starts(ts_us - shift, step, hist.zone)
    keys: np.ndarray = (starts + shift) // 1000
    return keys, np.searchsorted(starts, own)
