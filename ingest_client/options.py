"""How a producer publishes: one frozen object, documented once, read by ``Session``,
``AsyncSession`` and the batchers.

Callers pass the fields as keyword arguments (``Session("run-42", url=…, min_interval=0.5)``),
or build the object once and share it (``Session("run-42", url=…, options=opts)``); keywords
given beside ``options=`` override its fields. An unknown keyword is a ``TypeError`` naming the
known ones, as a misspelt argument of a plain signature would be.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from typing import Any

from ingest_client.transports.base import DEFAULT_EXCHANGE, DEFAULT_ROUTING_KEY, DEFAULT_TIMEOUT

MIN_INTERVAL_VARIABLE = "LATEST_MIN_INTERVAL"
DEFAULT_MIN_INTERVAL = 1.0


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ProducerOptions:
    """Every setting of a producer but where it publishes (``url``) and its session id."""

    waiting: bool = False
    """Enter the session ``waiting``; ``start()`` or the first sample opens it."""
    info: Mapping[str, Any] | None = None
    """Free-form facts about the run, sent in the session document."""
    min_interval: float | None = None
    """Seconds from the end of one flush to the start of the next; None: ``LATEST_MIN_INTERVAL``
    (default 1.0), read when the batcher is made."""
    max_buffer: int = 100_000
    """Packets held before a flush takes them; a full buffer blocks ``add``."""
    max_message_bytes: int = 1_000_000
    """Largest message (a JSON array of packets); one packet larger than that goes alone."""
    block_timeout: float = 10.0
    """Seconds ``sample`` waits for room in a full buffer before raising ``BufferFull``."""
    retry_for: float = 30.0
    """Seconds a failed message is retried with backoff before it waits for the next flush."""
    close_timeout: float = 30.0
    """Seconds leaving the block may take; then ``FlushFailed`` lists what is unsent."""
    id_field: str = "id"
    """The packets' id field, as the server is configured (``LATEST_ID_FIELD``)."""
    time_field: str = "ts"
    """The packets' time field, one of the server's ``LATEST_TIME_FIELDS``."""
    exchange: str = DEFAULT_EXCHANGE
    """amqp://: the exchange messages are published to."""
    routing_key: str = DEFAULT_ROUTING_KEY
    """amqp://: their routing key."""
    timeout: float = DEFAULT_TIMEOUT
    """Seconds any one publish may take (connecting, the confirm, the HTTP answer)."""
    handle_sigterm: bool = True
    """End the session ``truncated`` on SIGTERM (main thread, no other handler installed)."""

    def __post_init__(self) -> None:
        if not self.close_timeout >= 0:
            raise ValueError(f"close_timeout must be >= 0 seconds, got {self.close_timeout!r}")

    @classmethod
    def of(cls, options: ProducerOptions | None, overrides: Mapping[str, Any]) -> ProducerOptions:
        """``options`` (or the defaults) with the keyword arguments ``overrides`` applied."""
        base = cls() if options is None else options
        if not overrides:
            return base
        unknown = sorted(set(overrides) - set(FIELDS))
        if unknown:
            raise TypeError(
                f"unknown producer option(s) {', '.join(unknown)} (known: {', '.join(FIELDS)})"
            )
        return dataclasses.replace(base, **overrides)

    def resolved_min_interval(self) -> float:
        return min_interval_from_env() if self.min_interval is None else self.min_interval


FIELDS = tuple(field.name for field in dataclasses.fields(ProducerOptions))


def min_interval_from_env(environ: Mapping[str, str] | None = None) -> float:
    """LATEST_MIN_INTERVAL in seconds (default 1.0); the client reads its own settings."""
    raw = (os.environ if environ is None else environ).get(MIN_INTERVAL_VARIABLE)
    if raw is None or not raw.strip():
        return DEFAULT_MIN_INTERVAL
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"LATEST_MIN_INTERVAL must be a number of seconds, got {raw!r}") from None
    if not value >= 0 or math.isinf(value):
        raise ValueError(f"LATEST_MIN_INTERVAL must be >= 0, got {raw!r}")
    return value
