"""Durability of acknowledged writes against a Redis failover: how many replicas must have a
batch before it is acknowledged. Declared with ``setting()`` (setting_values.py); composed into
``Settings`` by ``latest_server/settings/__init__.py``."""

from __future__ import annotations

from dataclasses import dataclass

from latest_server import setting_values as parse
from latest_server.setting_values import setting


@dataclass(frozen=True)
class DurabilitySettings:
    redis_wait_replicas: int = setting(
        "LATEST_REDIS_WAIT_REPLICAS",
        0,
        parse.non_negative_int,
        "Replicas that must have a batch (Redis WAIT) before it is acknowledged; a write that "
        "fewer replicas confirm in time is answered 503 (retried, deduplicated). 0: no wait.",
    )
    redis_wait_timeout: float = setting(
        "LATEST_REDIS_WAIT_TIMEOUT",
        1.0,
        parse.positive_float,
        "Seconds a batch waits for LATEST_REDIS_WAIT_REPLICAS replicas before it is refused.",
    )
