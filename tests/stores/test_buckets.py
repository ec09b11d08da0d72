"""Time buckets and partial aggregates, without any store: intervals as Elasticsearch names them,
DST change days in a zone, and partials that merge to the same answer in any split."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest

from latest_server.errors import BadRequest
from latest_server.stores import buckets, partials
from latest_server.stores.buckets import Interval, parse_interval

PARIS = buckets.zone("Europe/Paris")
HOUR = 3_600_000_000


def us(*parts: int, tz: object = UTC) -> int:
    return int(datetime(*parts, tzinfo=tz).timestamp()) * 1_000_000  # type: ignore[arg-type, misc]


def test_intervals_fixed_and_calendar() -> None:
    assert parse_interval("30s") == Interval(fixed=30_000_000)
    assert parse_interval("500ms") == Interval(fixed=500_000)
    assert parse_interval("1m") == Interval(fixed=60_000_000)  # the history API: fixed
    assert parse_interval("1M") == Interval(calendar="month")
    assert parse_interval("week") == Interval(calendar="week")
    assert parse_interval("1m", "calendar") == Interval(calendar="minute")  # ES calendar_interval
    assert parse_interval("1d", "fixed") == Interval(fixed=86_400_000_000)
    for bad, kind in [("2M", None), ("1w", "fixed"), ("5m", "calendar"), ("0s", None), ("m", None)]:
        with pytest.raises(BadRequest) as refused:
            parse_interval(bad, kind)
        assert refused.value.reason == "bad_interval"


def test_zones_by_name_or_offset() -> None:
    assert buckets.zone("UTC") is UTC
    assert buckets.iso(0, buckets.zone("+05:30")) == "1970-01-01T05:30:00.000+05:30"
    with pytest.raises(BadRequest) as refused:
        buckets.zone("Europe/Atlantis")
    assert refused.value.reason == "bad_time_zone"


def test_days_of_a_dst_change_start_at_local_midnight() -> None:
    day = parse_interval("day")
    spring = [us(2026, 3, 29, h, 30, tz=PARIS) for h in (0, 1, 3, 12, 23)]
    autumn = [us(2026, 10, 25, h, 30, tz=PARIS) for h in (0, 1, 12, 23)]
    starts = buckets.bucket_starts(np.array(spring + autumn), day, PARIS)
    assert set(starts[:5]) == {us(2026, 3, 28, 23)}  # Paris midnight, UTC+1
    assert set(starts[5:]) == {us(2026, 10, 24, 22)}  # Paris midnight, UTC+2
    around = buckets.bucket_range(us(2026, 3, 28, 12), us(2026, 3, 30, 12), day, PARIS)
    assert np.diff(around).tolist() == [24 * HOUR, 23 * HOUR]  # the change day: 23 hours
    around = buckets.bucket_range(us(2026, 10, 24, 12), us(2026, 10, 26, 12), day, PARIS)
    assert np.diff(around).tolist() == [24 * HOUR, 25 * HOUR]


def test_the_repeated_autumn_hour_is_two_hour_buckets() -> None:
    first, second = us(2026, 10, 25, 0, 30), us(2026, 10, 25, 1, 30)  # both 02:30 in Paris
    starts = buckets.bucket_starts(np.array([first, second]), parse_interval("hour"), PARIS)
    assert starts.tolist() == [us(2026, 10, 25, 0), us(2026, 10, 25, 1)]
    assert [buckets.iso(int(s), PARIS) for s in starts] == [
        "2026-10-25T02:00:00.000+02:00",
        "2026-10-25T02:00:00.000+01:00",
    ]


def test_weeks_start_on_monday_and_quarters_on_their_month() -> None:
    moments = np.array([us(2026, 11, 1, 12), us(2026, 11, 2, 0), us(2026, 5, 17)])
    weeks = buckets.bucket_starts(moments, parse_interval("1w"), UTC)
    assert weeks.tolist() == [us(2026, 10, 26), us(2026, 11, 2), us(2026, 5, 11)]
    quarters = buckets.bucket_starts(moments, parse_interval("quarter"), PARIS)
    assert quarters.tolist() == [us(2026, 9, 30, 22), us(2026, 9, 30, 22), us(2026, 3, 31, 22)]
    years = buckets.bucket_starts(moments, parse_interval("1y"), UTC)
    assert set(years.tolist()) == {us(2026, 1, 1)}


def test_partials_merge_to_the_same_answer_in_any_split() -> None:
    rng = np.random.default_rng(7)
    n = 5_000
    ts = np.sort(rng.integers(0, 50 * HOUR, n))
    seq = np.arange(1, n + 1)
    value = rng.normal(size=n)
    value[rng.random(n) < 0.2] = np.nan
    starts = buckets.bucket_starts(ts, parse_interval("1h"), UTC)
    aggs = partials.AGGS
    whole = partials.from_rows(starts, ts, seq, {"v": value}, values=True)
    cuts = np.sort(rng.choice(n, 7, replace=False))
    pieces = [
        partials.from_rows(starts[a:b], ts[a:b], seq[a:b], {"v": value[a:b]}, values=True)
        for a, b in zip(np.r_[0, cuts], np.r_[cuts, n], strict=True)
    ]
    merged = partials.merge(pieces[::-1])
    assert merged.starts.tolist() == whole.starts.tolist()
    assert merged.docs.tolist() == whole.docs.tolist()
    for i in range(len(whole.starts)):
        want = partials.finish(whole.fields["v"], i, aggs, (50.0,))
        got = partials.finish(merged.fields["v"], i, aggs, (50.0,))
        for agg in aggs:
            if isinstance(want[agg], dict):  # percentiles, extended_stats
                flat = {k: v for k, v in want[agg].items() if not isinstance(v, dict)}
                assert {k: got[agg][k] for k in flat} == pytest.approx(flat)
            else:
                assert got[agg] == pytest.approx(want[agg])
        held = value[(starts == whole.starts[i]) & ~np.isnan(value)]
        assert want["avg"] == pytest.approx(held.mean())
        assert want["first"] == held[0] and want["last"] == held[-1]
