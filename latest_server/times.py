"""Packet times → integer microseconds since the epoch, the scale of every version: ISO-8601
with an offset, or epoch numbers in s, ms, µs or ns (the unit picked by magnitude unless set).
Pure: stdlib only."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ONE_US = timedelta(microseconds=1)
UNIT_TO_US = {"s": 1_000_000, "ms": 1_000, "us": 1, "ns": 0.001}
# Lua numbers and sorted-set scores are doubles: a version (µs, on every path) is exact up to
# 2**53 (year 2255). Packet times stay below it, and no version goes above it.
MAX_US = 2**53


def epoch_unit(number: float, unit: str = "auto") -> str:
    """The unit of an epoch number: ``unit``, or with ``auto`` the one its magnitude says."""
    if unit != "auto":
        return unit
    magnitude = abs(number)
    if magnitude < 1e11:
        return "s"
    if magnitude < 1e14:
        return "ms"
    if magnitude < 1e17:
        return "us"
    return "ns"


def epoch_to_us(number: float, unit: str = "auto") -> int:
    """Epoch seconds/ms/µs/ns → µs. ``auto`` picks the unit by magnitude, which is exact for
    times from 1973-03-03 to 5138 (before 1973, µs look like ms: fix the unit by setting)."""
    if isinstance(number, float) and not math.isfinite(number):
        raise ValueError("time is not a finite number")
    unit = epoch_unit(number, unit)
    if unit == "ns" and isinstance(number, int):
        return number // 1000
    factor = UNIT_TO_US[unit]
    if isinstance(number, int) and isinstance(factor, int):
        return number * factor
    return round(number * factor)


def iso_to_us(text: str, default_tz: ZoneInfo | None = None) -> int:
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        if default_tz is None:
            raise ValueError("time has no UTC offset (set LATEST_DEFAULT_TZ to accept such times)")
        moment = moment.replace(tzinfo=default_tz)
    return (moment - EPOCH) // ONE_US
