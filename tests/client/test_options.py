"""ProducerOptions: the one declaration of a producer's settings, given as keywords or as
``options=`` to Session, AsyncSession and the batchers alike."""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any

import orjson
import pytest

from ingest_client import AsyncSession, ProducerOptions, Session
from ingest_client.batcher import AsyncBatcher, Batcher
from ingest_client.transports import memory, open_async_transport, open_transport


def channel() -> str:
    return f"memory://{uuid.uuid4().hex}"


def packets(url: str) -> list[dict[str, Any]]:
    return [p for _, m in memory.received(url.removeprefix("memory://")) for p in orjson.loads(m)]


def test_keywords_and_an_options_object_are_the_same_settings() -> None:
    shared = ProducerOptions(min_interval=0.05, max_buffer=500, id_field="name", time_field="t")
    by_keywords = Session(
        url=channel(), min_interval=0.05, max_buffer=500, id_field="name", time_field="t"
    )
    by_object = Session(url=channel(), options=shared)
    assert by_keywords.options == by_object.options == shared
    assert by_object.batcher.max_buffer == 500 and by_object.batcher.min_interval == 0.05
    # Keywords given beside options= override its fields, and leave the object as it was.
    overridden = AsyncSession(url=channel(), options=shared, max_buffer=7, handle_sigterm=False)
    assert overridden.options == dataclasses.replace(shared, max_buffer=7, handle_sigterm=False)
    assert overridden.batcher.max_buffer == 7 and shared.max_buffer == 500
    for session in (by_keywords, by_object):
        session.transport.close()


def test_every_field_is_accepted_as_a_keyword_by_both_sessions() -> None:
    values = {
        f.name: getattr(ProducerOptions(), f.name) for f in dataclasses.fields(ProducerOptions)
    }
    assert len(values) == 14  # the settings of the three former copies of the signature
    sync = Session(url=channel(), **values)
    asynchronous = AsyncSession(url=channel(), **values)
    assert sync.options == asynchronous.options == ProducerOptions()
    sync.transport.close()


def test_an_unknown_or_bad_option_is_refused_naming_it() -> None:
    with pytest.raises(TypeError, match=r"min_intervall.*known: waiting, info, min_interval"):
        Session(url=channel(), min_intervall=0.1)
    with pytest.raises(TypeError, match="max_items"):
        Batcher(open_transport(channel()), max_items=10)
    with pytest.raises(ValueError, match="close_timeout must be >= 0"):
        AsyncSession(url=channel(), close_timeout=-1)
    with pytest.raises(TypeError):
        ProducerOptions(0.1)  # keywords only: no silent reordering


def test_the_packets_follow_the_options_object() -> None:
    url = channel()
    options = ProducerOptions(min_interval=0.0, id_field="name", time_field="t", info={"a": 1})
    with Session("run-1", url=url, options=options) as session:
        session.sample("speed", 3.2, ts=1_700_000_000)
    found = packets(url)
    assert found[0] == {
        "name": "run-1",
        "t": found[0]["t"],
        "@session": {"state": "open", "info": {"a": 1}},
    }
    assert {"name": "speed", "t": 1_700_000_000, "value": 3.2, "@session": "run-1"} in found


async def test_the_batchers_take_the_options_object() -> None:
    url = channel()
    options = ProducerOptions(min_interval=0.0, max_message_bytes=200)
    batcher = AsyncBatcher(open_async_transport(url), options)
    batcher.start()
    for i in range(40):
        await batcher.add({"id": "v", "ts": i})
    await batcher.close()
    messages = memory.received(url.removeprefix("memory://"))
    assert len(messages) > 1 and all(len(m) <= 200 for _, m in messages)
    assert [p["ts"] for p in packets(url)] == list(range(40))
