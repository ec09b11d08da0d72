"""Settings of scaling out: the queue type competing consumers share, the delivery limit of a
quorum queue, and the number of server processes. Declared with ``setting()``
(setting_values.py); composed into ``Settings`` by ``latest_server/settings/__init__.py``."""

from __future__ import annotations

from dataclasses import dataclass

from latest_server import setting_values as parse
from latest_server.setting_values import setting

QUEUE_TYPES = ("classic", "quorum")


@dataclass(frozen=True)
class ScaleSettings:
    queue_type: str = setting(
        "LATEST_QUEUE_TYPE",
        "classic",
        parse.choice(*QUEUE_TYPES),
        "Type of the queue declared: `classic`, or `quorum` (replicated; a message whose "
        "processing keeps failing is dead-lettered after LATEST_DELIVERY_LIMIT deliveries).",
    )
    delivery_limit: int = setting(
        "LATEST_DELIVERY_LIMIT",
        5,
        parse.positive_int,
        "With LATEST_QUEUE_TYPE=quorum: redeliveries of a message after which the broker "
        "dead-letters it (x-delivery-limit).",
    )
    workers: int = setting(
        "LATEST_WORKERS",
        1,
        parse.positive_int,
        "Processes of `serve` sharing the HTTP and Elasticsearch ports (SO_REUSEPORT); the "
        "first also runs the embedded Valkey when REDIS_URL is unset.",
    )
