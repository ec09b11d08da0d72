"""The buckets of a ``date_histogram``: fixed intervals (``fixed_interval``, and a legacy
``interval`` that is not a calendar unit), calendar intervals (``calendar_interval``:
minute … year, in the wall time of ``time_zone``), ``offset``, ``extended_bounds``, and the
``format`` of each bucket's ``key_as_string``.

A bucket's ``key`` is the epoch milliseconds of its start. Fixed intervals are counted from the
epoch in the zone's UTC offset at the first bucket (for a zone with daylight saving time a fixed
interval of a day or more keeps that offset across a change, where Elasticsearch re-rounds at
it); calendar buckets follow the zone's wall clock, so a day is 23 or 25 hours long across a
change, as in Elasticsearch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np

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


def parse_zone(text: Any) -> tzinfo:
    if text is None or str(text).upper() in ("UTC", "Z", "GMT"):
        return UTC
    value = str(text)
    found = re.fullmatch(r"([+-])(\d{2}):?(\d{2})", value)
    if found:
        delta = timedelta(hours=int(found.group(2)), minutes=int(found.group(3)))
        return timezone(-delta if found.group(1) == "-" else delta)
    try:
        return ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise IllegalArgument(f"Unknown time-zone ID: {value}") from None


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
        parse_zone(spec.get("time_zone")),
        parse_offset(spec.get("offset")),
        fmt,
        min_doc_count,
        bounds if min_doc_count == 0 else None,
    )


def assign(hist: Histogram, ts_ms: np.ndarray, max_buckets: int) -> tuple[np.ndarray, np.ndarray]:
    """(keys: the start of every bucket from the first to the last, data and extended bounds
    included; the bucket of each row as an index into keys)."""
    ends = [int(ts_ms.min()), int(ts_ms.max())] if len(ts_ms) else []
    if hist.bounds is not None:
        ends += list(hist.bounds)
    if not ends:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    low, high = min(ends), max(ends)
    if hist.fixed_ms is not None:
        size = hist.fixed_ms
        shift = _offset_ms(hist.zone, low) - hist.offset_ms
        first = (low + shift) // size * size - shift
        count = (high - first) // size + 1
        if count > max_buckets:
            raise TooManyBuckets(max_buckets)
        keys = first + size * np.arange(count, dtype=np.int64)
        return keys, (ts_ms - first) // size
    assert hist.calendar is not None
    starts = _calendar_starts(hist, low, high, max_buckets)
    return starts, np.searchsorted(starts, ts_ms, side="right") - 1


def _offset_ms(zone: tzinfo, at_ms: int) -> int:
    offset = (EPOCH + at_ms * ONE_MS).astimezone(zone).utcoffset() or timedelta(0)
    return offset // ONE_MS


def _calendar_starts(hist: Histogram, low: int, high: int, max_buckets: int) -> np.ndarray:
    unit, zone, offset = hist.calendar, hist.zone, hist.offset_ms
    moment = _floor((EPOCH + (low - offset) * ONE_MS).astimezone(zone), str(unit))
    starts = []
    while True:
        start = (moment.astimezone(UTC) - EPOCH) // ONE_MS + offset
        if start > high:
            break
        starts.append(start)
        if len(starts) > max_buckets:
            raise TooManyBuckets(max_buckets)
        moment = _next(moment, str(unit))
    return np.array(starts, np.int64)


def _floor(moment: datetime, unit: str) -> datetime:
    moment = moment.replace(second=0, microsecond=0)
    if unit == "minute":
        return moment
    moment = moment.replace(minute=0)
    if unit == "hour":
        return moment
    moment = _wall(moment.replace(hour=0))
    if unit == "day":
        return moment
    if unit == "week":
        return _wall(moment.replace(tzinfo=None) - timedelta(days=moment.weekday()), moment)
    if unit == "month":
        return _wall(moment.replace(day=1))
    if unit == "quarter":
        return _wall(moment.replace(day=1, month=(moment.month - 1) // 3 * 3 + 1))
    return _wall(moment.replace(day=1, month=1))


def _wall(moment: datetime, like: datetime | None = None) -> datetime:
    """``moment``'s wall time in its (or ``like``'s) zone, its UTC offset worked out again."""
    zone = (like or moment).tzinfo
    return moment.replace(tzinfo=None).replace(tzinfo=zone, fold=0)


def _next(moment: datetime, unit: str) -> datetime:
    if unit in ("minute", "hour"):  # absolute: an hour is an hour, also across a change
        step = timedelta(minutes=1) if unit == "minute" else timedelta(hours=1)
        return (moment.astimezone(UTC) + step).astimezone(moment.tzinfo)
    if unit in ("day", "week"):
        days = 1 if unit == "day" else 7
        return _wall(moment.replace(tzinfo=None) + timedelta(days=days), moment)
    months = {"month": 1, "quarter": 3, "year": 12}[unit]
    index = moment.year * 12 + moment.month - 1 + months
    return _wall(moment.replace(year=index // 12, month=index % 12 + 1))
