"""Time buckets of an aggregation: intervals, time zones, and the vectorised assignment of
entry times (µs since the epoch, UTC) to the start of their bucket.

Fixed intervals (``500ms``, ``30s``, ``1m``, ``5m``, ``1h``, ``1d``: Elasticsearch's
``fixed_interval``) are a number of µs; calendar intervals (``minute``, ``hour``, ``day``,
``week``, ``month``, ``quarter``, ``year``, or ``1m`` … ``1M``, ``1q``, ``1y``: its
``calendar_interval``) follow the wall clock of a time zone. Both are rounded in the zone's local
time (a ``1d`` bucket in Europe/Paris starts at Paris midnight), and a bucket's key is the UTC
instant its local start names: on a DST change day the day bucket is 23 or 25 hours long, and
the repeated hour of an autumn night is two hour buckets, as in Elasticsearch.

The zone's offsets come from zoneinfo, sampled once a day and bisected to the second where they
change, per year (cached); each entry then finds its offset with one ``searchsorted``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np

from latest_server.errors import BadRequest

US = 1_000_000
FIXED_UNITS = {"ms": 1_000, "s": US, "m": 60 * US, "h": 3_600 * US, "d": 86_400 * US}
CALENDAR_UNITS = ("minute", "hour", "day", "week", "month", "quarter", "year")
CALENDAR_SHORT = {
    "1m": "minute",
    "1h": "hour",
    "1d": "day",
    "1w": "week",
    "1M": "month",
    "1q": "quarter",
    "1y": "year",
}
MAX_BUCKETS = 100_000  # buckets one answer may hold (Elasticsearch's search.max_buckets: 65 536)
DAY = 86_400 * US
_FIXED = re.compile(r"^([1-9][0-9]{0,11})(ms|s|m|h|d)$")
_OFFSET = re.compile(r"^([+-])([0-9]{2}):?([0-9]{2})$")


@dataclass(frozen=True, slots=True)
class Interval:
    """A bucket width: ``fixed`` µs, or a ``calendar`` unit (one of CALENDAR_UNITS)."""

    fixed: int | None = None
    calendar: str | None = None

    def __str__(self) -> str:
        return self.calendar or f"{self.fixed}us"


def parse_interval(text: str, kind: str | None = None) -> Interval:
    """``kind`` "fixed" or "calendar" reads Elasticsearch's ``fixed_interval`` or
    ``calendar_interval``; None (the history API) reads both: unit names and ``1w``, ``1M``,
    ``1q``, ``1y`` are calendar, ``<n>ms|s|m|h|d`` fixed. BadRequest (``bad_interval``) else."""
    if kind != "fixed":
        unit = text if text in CALENDAR_UNITS else CALENDAR_SHORT.get(text)
        if unit is not None and (kind == "calendar" or text not in ("1m", "1h", "1d")):
            return Interval(calendar=unit)
        if kind == "calendar":
            raise BadRequest(
                f"calendar interval {text!r} is not one of {', '.join(CALENDAR_UNITS)} "
                f"(or {', '.join(CALENDAR_SHORT)})",
                reason="bad_interval",
            )
    found = _FIXED.match(text)
    if found is None:
        raise BadRequest(
            f"interval {text!r} is neither a fixed interval (<n>ms, <n>s, <n>m, <n>h, <n>d) nor a "
            f"calendar one ({', '.join(CALENDAR_UNITS)}, 1w, 1M, 1q, 1y)",
            reason="bad_interval",
        )
    return Interval(fixed=int(found.group(1)) * FIXED_UNITS[found.group(2)])


@lru_cache(maxsize=256)
def zone(name: str) -> tzinfo:
    """An IANA zone (``Europe/Paris``), ``UTC``/``Z``, or a fixed offset ``±HH:MM``."""
    if name in ("UTC", "Z", "utc", "Etc/UTC", "+00:00", "-00:00"):
        return UTC
    found = _OFFSET.match(name)
    if found:
        sign, hours, minutes = found.groups()
        delta = timedelta(hours=int(hours), minutes=int(minutes))
        if delta >= timedelta(hours=24):
            raise BadRequest(f"time zone offset {name!r} is out of range", reason="bad_time_zone")
        return timezone(-delta if sign == "-" else delta)
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a path-like or NUL name
        raise BadRequest(
            f"unknown time zone {name!r} (an IANA name such as Europe/Paris, or ±HH:MM)",
            reason="bad_time_zone",
        ) from None


def _offset_s(tz: tzinfo, second: int) -> int:
    moment = datetime.fromtimestamp(second, tz)
    offset = moment.utcoffset()
    return int(offset.total_seconds()) if offset is not None else 0


@lru_cache(maxsize=4096)
def _year_changes(tz: tzinfo, year: int) -> tuple[tuple[int, int], ...]:
    """(UTC second, offset after it) of each change of ``tz``'s offset in ``year``."""
    start = int(datetime(year, 1, 1, tzinfo=UTC).timestamp())
    end = int(datetime(year + 1, 1, 1, tzinfo=UTC).timestamp())
    changes = []
    before = _offset_s(tz, start)
    for day in range(start, end, 86_400):
        after = _offset_s(tz, min(day + 86_400, end))
        if after != before:
            lo, hi = day, min(day + 86_400, end)  # offset(lo) == before, offset(hi) == after
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if _offset_s(tz, mid) == before:
                    lo = mid
                else:
                    hi = mid
            changes.append((hi, after))
            before = after
    return tuple(changes)


class Offsets:
    """The UTC offset (µs) of ``tz`` at any instant between ``lo`` and ``hi`` (µs)."""

    def __init__(self, tz: tzinfo, lo: int, hi: int) -> None:
        first = max(1, _year(lo) - 1)
        last = min(9998, _year(hi) + 1)
        self.base = _offset_s(tz, int(datetime(first, 1, 1, tzinfo=UTC).timestamp())) * US
        points: list[int] = []
        values: list[int] = []
        for year in range(first, last + 1):
            for second, offset in _year_changes(tz, year):
                points.append(second * US)
                values.append(offset * US)
        self.points = np.array(points, np.int64)
        self.values = np.array([self.base, *values], np.int64)
        self.fixed = len(points) == 0

    def at(self, ts: Any) -> Any:
        if self.fixed:
            return np.full(np.shape(ts), self.base, np.int64)
        return self.values[np.searchsorted(self.points, ts, side="right")]


def _year(us: int) -> int:
    return int(np.datetime64(int(us), "us").astype("datetime64[Y]").astype(np.int64)) + 1970


def bucket_starts(ts: Any, interval: Interval, tz: tzinfo) -> Any:
    """The start (UTC µs) of the bucket of each time of ``ts`` (an int64 array)."""
    ts = np.asarray(ts, np.int64)
    if not len(ts):
        return ts.copy()
    if tz is UTC or isinstance(tz, timezone):
        shift = _offset_s(tz, 0) * US
        return _floor_local(ts + shift, interval) - shift
    offsets = Offsets(tz, int(ts.min()), int(ts.max()))
    own = offsets.at(ts)
    local = _floor_local(ts + own, interval)
    # The local start read with the entry's own offset, unless the offset changed between the
    # bucket's start and the entry (a day bucket over a DST change): then with the start's.
    same = local - own
    theirs = offsets.at(same)
    return np.where(theirs == own, same, local - theirs)


def _floor_local(local: Any, interval: Interval) -> Any:
    if interval.fixed is not None:
        return (local // interval.fixed) * interval.fixed
    unit = interval.calendar
    if unit == "minute":
        return (local // (60 * US)) * (60 * US)
    if unit == "hour":
        return (local // (3_600 * US)) * (3_600 * US)
    days = local // DAY
    if unit == "day":
        return days * DAY
    if unit == "week":  # ISO weeks: Monday; 1970-01-01 was a Thursday
        return (days - (days + 3) % 7) * DAY
    months = local.astype("datetime64[us]").astype("datetime64[M]").astype(np.int64)
    if unit == "quarter":
        months = months - months % 3
    elif unit == "year":
        months = months - months % 12
    return months.astype("datetime64[M]").astype("datetime64[us]").astype(np.int64)


def sample_step(interval: Interval) -> int:
    """A step of instants that meets every bucket (no bucket is shorter than twice it)."""
    if interval.fixed is not None:
        return max(1, min(interval.fixed, 1_800 * US))
    return {"minute": 30 * US, "hour": 900 * US, "day": 6 * 3_600 * US}.get(
        interval.calendar or "", DAY
    )


def bucket_range(lo: int, hi: int, interval: Interval, tz: tzinfo) -> Any:
    """Every bucket start from the bucket of ``lo`` to that of ``hi`` (both µs, inclusive):
    the empty buckets of ``min_doc_count=0`` and ``extended_bounds``."""
    step = sample_step(interval)
    if (hi - lo) // step > 4 * MAX_BUCKETS:
        raise BadRequest(
            f"more than {MAX_BUCKETS} buckets: widen the interval or narrow the range",
            reason="too_many_buckets",
        )
    samples = np.append(np.arange(lo, hi, step, dtype=np.int64), hi)
    starts = np.unique(bucket_starts(samples, interval, tz))
    if len(starts) > MAX_BUCKETS:
        raise BadRequest(
            f"more than {MAX_BUCKETS} buckets: widen the interval or narrow the range",
            reason="too_many_buckets",
        )
    return starts


def iso(start: int, tz: tzinfo) -> str:
    """A bucket key as ISO-8601 in ``tz`` (milliseconds, with the offset)."""
    # replace, not + timedelta: that would drop the fold of a repeated autumn hour
    moment = datetime.fromtimestamp(start // US, tz).replace(microsecond=start % US)
    return moment.isoformat(timespec="milliseconds")
