"""Resources: what a process opens once and shares between its edges."""

from __future__ import annotations

import orjson
from redis.asyncio import Redis

from latest_server import keys
from latest_server.packets import Packet
from latest_server.resources import Resources

T0 = 1_700_000_000


def packets(resources: Resources, *documents: object) -> list[Packet]:
    parsed = resources.parser.parse_message(orjson.dumps(list(documents)))
    assert all(isinstance(p, Packet) for p in parsed)
    return [p for p in parsed if isinstance(p, Packet)]


async def test_one_script_registry_for_every_store_and_job_reloaded_for_all(
    resources: Resources, redis: Redis
) -> None:
    """Every Lua script is registered once per process and shared: the latest store, history,
    the offloader (and its locks) and the session store all call the one registry, so that a
    Redis restart (here SCRIPT FLUSH) is repaired once for all of them."""
    registry = resources.scripts
    assert resources.latest.scripts is registry  # type: ignore[attr-defined]
    assert resources.history.scripts is registry
    assert resources.offloader.scripts is registry
    assert resources.sessions is not None and resources.sessions.scripts is registry
    assert {"write", "session_apply", "session_track", "lock_acquire"} <= set(registry.shas)

    await redis.script_flush()
    documents = [
        {"id": "run", "ts": T0, "@session": {"state": "open"}},
        {"id": "a", "ts": T0 + 1, "value": 1, "@session": "run"},
    ]
    result = await resources.ingestor.write_batch(packets(resources, *documents))
    assert (result.accepted, result.refused) == (2, [])
    assert (await resources.sessions.get("run")) is not None
    assert await redis.script_exists(*registry.shas.values()) == [True] * len(registry.shas)
    assert await redis.exists(keys.latest(keys.key_for("a")))
