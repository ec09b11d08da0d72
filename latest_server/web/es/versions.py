"""The scale of an Elasticsearch request's ``version`` (LATEST_ES_VERSION_SCALE).

``/ingest`` and AMQP version a packet by its time in µs; Logstash (the ``logstash/`` pipelines)
and most clients keeping "the latest document per resource" send the packet time in epoch
milliseconds. Compared as given, those two never meet: an ES write after an AMQP one is a 409,
and an AMQP packet always beats an ES write however old it is. With ``epoch`` (the default) a
request's version is read as an epoch time, its unit found as a time field's (by magnitude, or
LATEST_TIME_UNIT), and compared in µs with every other path. With ``raw`` it is compared as
given, for versions that are counters.

The client sees its own scale: a write answers the ``_version`` it sent, a conflict names the
current version in the unit of the one provided, and reads show the version a document was
written with (``Packet.es_version``).
"""

from __future__ import annotations

import time

from latest_server.times import MAX_US, UNIT_TO_US, epoch_to_us, epoch_unit
from latest_server.web.es.errors import IllegalArgument


class VersionScale:
    def __init__(self, scale: str, time_unit: str, max_future: float = 0.0) -> None:
        self.epoch = scale == "epoch"
        self.time_unit = time_unit
        self.max_future_us = round(max_future * 1_000_000)  # LATEST_MAX_FUTURE; 0: no bound
        self.horizon_us = -MAX_US if self.max_future_us else MAX_US  # as packets.PacketParser

    def compared(self, version: int) -> int:
        """``version`` (>= 0) as every path compares it; an IllegalArgument past 2**53, which
        Redis' doubles keep exactly (epoch µs until the year 2255), or on the epoch scale past
        LATEST_MAX_FUTURE ahead of the clock (read only past the last bound, as packets do)."""
        if not self.epoch:
            if version > MAX_US:
                raise IllegalArgument(
                    f"version [{version}] is above {MAX_US}, the largest version "
                    "latest-server keeps exactly"
                )
            return version
        found = epoch_to_us(version, self.time_unit)
        if found > MAX_US:
            unit = epoch_unit(version, self.time_unit)
            raise IllegalArgument(
                f"version [{version}], an epoch time in {unit}, is after the year 2255 "
                f"({MAX_US} µs), the latest version latest-server keeps exactly "
                "(LATEST_ES_VERSION_SCALE=raw compares versions as given)"
            )
        if found > self.horizon_us:
            self.horizon_us = time.time_ns() // 1000 + self.max_future_us
        if found > self.horizon_us:
            # A version years ahead (a delete at 2**53 leaves such a tombstone) would win
            # against every later write: refused as a packet time that far ahead is.
            unit = epoch_unit(version, self.time_unit)
            raise IllegalArgument(
                f"[future_time] version [{version}], an epoch time in {unit}, is more than "
                f"{self.max_future_us / 1e6:g} s ahead of the server clock (LATEST_MAX_FUTURE)"
            )
        return found

    def shown(self, current: int, provided: int, gte: bool) -> int:
        """``current`` (as compared) in the scale of ``provided``, so that a conflict reads
        true in the client's numbers: the largest version in that scale which ``current``
        refuses (``external``: not newer), or with ``gte`` the smallest that it does not."""
        if not self.epoch:
            return current
        unit = epoch_unit(provided, self.time_unit)
        if unit == "ns":  # the µs kept stand for a thousand ns
            return current * 1000 + (0 if gte else 999)
        factor = int(UNIT_TO_US[unit])
        return -(-current // factor) if gte else current // factor
