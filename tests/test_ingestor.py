"""The single writer's batch results mapped back to where each packet came from (real Redis)."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator

import orjson
import pytest

from latest_server.ingestor import Origins
from latest_server.packets import Packet, PacketParser
from latest_server.resources import Resources
from latest_server.settings import Settings
from tests.conftest import unique

T0 = 1_700_000_000


@pytest.fixture
async def resources(settings: Settings) -> AsyncIterator[Resources]:
    opened = await Resources.open(dataclasses.replace(settings, amqp_url=None))
    yield opened
    await opened.close()


async def test_origins_map_refusals_and_outcomes_past_session_documents(
    resources: Resources,
) -> None:
    """Session documents are applied, not written: they have no outcome, so the samples after
    them still get their own; a refused one is named by its origin."""
    session, variable = unique("session"), unique("variable")
    parser = PacketParser(resources.settings)
    await resources.ingestor.write_batch(
        [parser.packet({"id": session, "ts": T0, "@session": {"state": "closed"}})]
    )
    documents = [
        {"id": variable, "ts": T0, "v": 1},
        {"id": session, "ts": T0 + 1, "@session": {"state": "waiting"}},  # closed → waiting
        {"id": variable, "ts": T0 + 2, "v": 2},
        {"id": variable, "ts": T0 - 1, "v": 0},  # stale
    ]
    origins: Origins[str] = Origins()
    for position, document in enumerate(documents):
        packet = parser.packet(orjson.loads(orjson.dumps(document)))
        assert isinstance(packet, Packet)
        origins.add(f"item {position}", packet)

    result = await resources.ingestor.write_batch(origins.packets)

    assert [(origin, r.reason) for origin, _, r in origins.refused(result)] == [
        ("item 1", "bad_transition")
    ]
    assert [(origin, outcome.applied) for origin, _, outcome in origins.outcomes(result)] == [
        ("item 0", True),
        ("item 2", True),
        ("item 3", False),
    ]
