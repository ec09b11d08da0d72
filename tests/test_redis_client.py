from __future__ import annotations

import asyncio

from latest_server.redis_client import MAX_CONNECTIONS, connect
from tests.conftest import REDIS_URL, unique


async def test_more_concurrent_commands_than_connections_wait_instead_of_failing() -> None:
    """Hundreds of websocket subscriptions open at once, each reading the stores. Every BLPOP
    here holds its connection for 0.3 s, so more than MAX_CONNECTIONS at a time must wait for
    one; none may fail (redis-py 8's default pool raises "Too many connections" past 100)."""
    redis = connect(REDIS_URL)
    prefix = unique("pool")
    try:
        replies = await asyncio.gather(
            *(redis.blpop([f"{prefix}:{i}"], timeout=0.3) for i in range(MAX_CONNECTIONS + 100))
        )
    finally:
        await redis.aclose()
    assert replies == [None] * (MAX_CONNECTIONS + 100)
