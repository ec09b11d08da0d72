"""Websocket subscriptions through real uvicorn and the `websockets` client, on the real Redis,
with history spread over Redis, transfer objects and merged objects (file:// and S3)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import orjson
import pytest
import websockets
from websockets.frames import Frame, Opcode

from latest_server import keys
from latest_server.resources import Resources
from latest_server.web.ws import direct as ws_direct
from tests.conftest import ServerThread, hub_of, packet, ws_url


@pytest.fixture
def server(
    stores: Resources, http_server: Callable[..., ServerThread]
) -> Callable[..., ServerThread]:
    def start(**overrides: Any) -> ServerThread:
        return http_server(stores.settings, **overrides)

    return start


async def frames(ws: Any, until: Callable[[dict[str, Any]], bool], within: float = 20) -> list[Any]:
    """Frames received until one satisfies ``until`` (included)."""
    got = []
    async with asyncio.timeout(within):
        while True:
            frame = orjson.loads(await ws.recv())
            got.append(frame)
            if until(frame):
                return got


def entries_of(got: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for frame in got:
        if frame["type"] == "backlog":
            out.extend(frame["entries"])
        elif frame["type"] == "entry":
            out.append(frame)
    return out


@pytest.mark.redis_both
async def test_history_from_every_tier_then_live_entries(
    stores: Resources, server: Callable[..., ServerThread]
) -> None:
    url = ws_url(server())
    await stores.ingestor.write_batch([packet("a", n) for n in range(100)])
    await stores.offloader.run_job(everything=True)  # 1..100 → a transfer object
    await stores.merger.merge_variable("a")  # → a merged object
    await stores.ingestor.write_batch([packet("a", n) for n in range(100, 150)])
    await stores.offloader.run_job(everything=True)  # 101..150 → a transfer object
    await stores.ingestor.write_batch([packet("a", n) for n in range(150, 180)])  # in Redis
    async with websockets.connect(url) as ws:
        await ws.send(orjson.dumps({"op": "subscribe", "ids": ["a"]}).decode())
        got = await frames(ws, lambda f: f["type"] == "live")
        assert got[0] == {"type": "subscribed", "id": "a", "key": keys.key_for("a")}
        backlog = entries_of(got)
        assert [e["seq"] for e in backlog] == list(range(1, 181))
        assert [e["doc"]["n"] for e in backlog] == list(range(180))
        assert got[-1]["seq"] == 180
        await stores.ingestor.write_batch([packet("a", 500), packet("a", 400)])  # one late
        live = await frames(ws, lambda f: f.get("seq") == 182)
        assert [(f["type"], f["seq"], f["doc"]["n"]) for f in live] == [
            ("entry", 181, 500),
            ("entry", 182, 400),
        ]
        assert live[0]["ts"] == (1_700_000_000 + 500) * 1_000_000
        assert live[0]["epoch"] == backlog[0]["epoch"]


@pytest.mark.redis_both
async def test_since_resumes_after_a_seq_from_latest_and_from_a_time(
    stores: Resources, server: Callable[..., ServerThread]
) -> None:
    url = ws_url(server())
    await stores.ingestor.write_batch([packet("a", n) for n in range(20)])
    await stores.offloader.run_job(everything=True)
    await stores.ingestor.write_batch([packet("a", n) for n in range(20, 30)])
    async with websockets.connect(url) as ws:
        await ws.send(orjson.dumps({"op": "subscribe", "ids": ["a"]}).decode())
        got = await frames(ws, lambda f: f["type"] == "live")
        epoch = got[-1]["epoch"]
    async with websockets.connect(url) as ws:
        await ws.send(
            orjson.dumps({"op": "subscribe", "ids": ["a"], "since": {"a": [epoch, 17]}}).decode()
        )
        got = await frames(ws, lambda f: f["type"] == "live")
        assert [e["seq"] for e in entries_of(got)] == list(range(18, 31))
        # another epoch: reset, then everything of the current one
        await ws.send(
            orjson.dumps(
                {"op": "subscribe", "ids": ["a"], "since": {"a": [epoch - 1, 17]}}
            ).decode()
        )
        got = await frames(ws, lambda f: f["type"] == "live")
        assert {"type": "reset", "id": "a", "epoch": epoch, "lost": None} in got
        assert [e["seq"] for e in entries_of(got)] == list(range(1, 31))
        # from a time: entries with ts >= from, in seq order (a late one included)
        await stores.ingestor.write_batch([packet("a", 5, late=True)])  # seq 31, ts of n=5
        [live] = await frames(ws, lambda f: True)  # the current subscription gets it live
        assert (live["type"], live["seq"]) == ("entry", 31)
        frm = (1_700_000_000 + 25) * 1_000_000
        await ws.send(orjson.dumps({"op": "subscribe", "ids": ["a"], "from": frm}).decode())
        got = await frames(ws, lambda f: f["type"] == "live")
        assert [e["doc"]["n"] for e in entries_of(got)] == [25, 26, 27, 28, 29]
        assert got[-1]["seq"] == 31
        # latest: only the latest document, then live
        await ws.send(orjson.dumps({"op": "subscribe", "ids": ["a"], "latest": True}).decode())
        got = await frames(ws, lambda f: f["type"] == "live")
        assert [(e["seq"], e["doc"]["n"]) for e in entries_of(got)] == [(30, 29)]
        assert got[-1]["seq"] == 31
        await stores.ingestor.write_batch([packet("a", 31)])
        [entry] = await frames(ws, lambda f: f["type"] == "entry")
        assert (entry["seq"], entry["doc"]["n"]) == (32, 31)


async def test_a_variable_with_no_history_yet_goes_live_and_gets_its_first_entries(
    stores: Resources, server: Callable[..., ServerThread]
) -> None:
    url = ws_url(server())
    async with websockets.connect(url) as ws:
        await ws.send(orjson.dumps({"op": "subscribe", "ids": ["new"]}).decode())
        await frames(ws, lambda f: f["type"] == "live")
        await stores.ingestor.write_batch([packet("new", n) for n in range(3)])
        got = await frames(ws, lambda f: f["type"] == "live" or f.get("seq") == 3)
        while got[-1]["type"] == "live" and got[-1]["seq"] < 3:  # delivered from the stores
            got += await frames(ws, lambda f: f["type"] == "live" or f.get("seq") == 3)
        assert [e["seq"] for e in entries_of(got)] == [1, 2, 3]


async def test_bad_requests_get_error_frames_and_the_socket_stays_open(
    stores: Resources, server: Callable[..., ServerThread]
) -> None:
    url = ws_url(server(ws_max_subscriptions=2))
    async with websockets.connect(url) as ws:
        for request, reason in [
            ("not json", "not_json"),
            ("[1]", "not_object"),
            ('{"op": "dance"}', "unknown_op"),
            ('{"op": "subscribe", "ids": []}', "bad_ids"),
            ('{"op": "subscribe", "ids": [7]}', "bad_ids"),
            ('{"op": "subscribe", "ids": ["a"], "since": {"a": "x"}}', "bad_since"),
            ('{"op": "subscribe", "ids": ["a"], "from": "yesterday"}', "bad_time"),
            ('{"op": "subscribe", "ids": ["a"], "from": 1, "latest": true}', "bad_request"),
            ('{"op": "subscribe", "ids": ["a", "b", "c"]}', "too_many_subscriptions"),
            ('{"op": "ping", "pad": "' + "x" * 70_000 + '"}', "frame_too_large"),
        ]:
            await ws.send(request)
            [frame] = await frames(ws, lambda f: True)
            assert frame["type"] == "error", request
            assert frame["reason"] == reason, (request, frame)
            assert frame["message"]
        await ws.send('{"op": "ping"}')
        assert await frames(ws, lambda f: True) == [{"type": "pong"}]
        await ws.send('{"op": "subscribe", "ids": ["a"]}')
        await frames(ws, lambda f: f["type"] == "live")
        await ws.send('{"op": "unsubscribe", "ids": ["a"]}')
        assert await frames(ws, lambda f: True) == [{"type": "unsubscribed", "id": "a"}]
        await stores.ingestor.write_batch([packet("a", 1)])
        await ws.send('{"op": "ping"}')
        assert await frames(ws, lambda f: True) == [{"type": "pong"}]  # no entry for "a"


@pytest.mark.parametrize("compression", [False, True])
async def test_permessage_deflate_only_when_the_setting_asks_for_it(
    stores: Resources, server: Callable[..., ServerThread], compression: bool
) -> None:
    """The websockets client offers permessage-deflate, as browsers do; uvicorn would accept it
    by default and compress every entry frame once per socket."""
    running = server(ws_compression=compression)
    async with websockets.connect(ws_url(running)) as ws:
        names = [extension.name for extension in ws.protocol.extensions]
        assert names == (["permessage-deflate"] if compression else [])
        await ws.send('{"op": "subscribe", "ids": ["z"]}')
        await frames(ws, lambda f: f["type"] == "live")
        [socket] = hub_of(running).sockets  # (answered: the server has made it)
        # compressed frames go through the server's send, uncompressed ones straight out
        assert (socket.direct is None) == compression
        await stores.ingestor.write_batch([packet("z", n) for n in range(3)])
        got: list[dict[str, Any]] = []
        while len(entries_of(got)) < 3:  # entry frames, or a backlog frame if it caught up
            got += await frames(ws, lambda f: f["type"] in ("entry", "backlog"))
        assert [e["doc"]["n"] for e in entries_of(got)] == [0, 1, 2]


async def test_shutdown_closes_cleanly_and_the_client_helper_resumes_on_the_restarted_server(
    stores: Resources,
) -> None:
    from ingest_client import Entry, subscribe

    first = ServerThread(stores.settings).__enter__()
    url = ws_url(first)
    await stores.ingestor.write_batch([packet("h", n) for n in range(10)])
    got: list[int] = []
    async with websockets.connect(url) as ws:
        await ws.send('{"op": "subscribe", "ids": ["h"]}')
        await frames(ws, lambda f: f["type"] == "live")
        helper = subscribe(url, ["h"])
        async for item in helper:
            assert isinstance(item, Entry)
            got.append(item.seq)
            if item.seq == 10:
                break
        await asyncio.to_thread(first.__exit__)  # uvicorn shutdown, as on SIGTERM
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await frames(ws, lambda f: False)
        assert closed.value.rcvd is not None and closed.value.rcvd.code in (1001, 1012)
    await stores.ingestor.write_batch([packet("h", n) for n in range(10, 15)])  # while it is down
    second = ServerThread(stores.settings)
    second.server.config.port = first.port  # the same address, as after a restart
    with second:
        await stores.ingestor.write_batch([packet("h", n) for n in range(15, 20)])
        async with asyncio.timeout(30):
            async for item in helper:  # it reconnects by itself with since=(epoch, 10)
                assert isinstance(item, Entry)
                got.append(item.seq)
                if item.seq == 20:
                    break
        await helper.aclose()
    assert got == list(range(1, 21))


@pytest.mark.parametrize("length", [0, 1, 125, 126, 127, 65_535, 65_536, 100_000])
def test_a_direct_frame_is_the_frame_websockets_builds(length: int) -> None:
    payload = b"x" * length
    built = Frame(Opcode.TEXT, payload).serialize(mask=False, extensions=[])
    assert ws_direct.header(length) + payload == built


async def test_entry_frames_are_written_straight_out_a_burst_in_fewer_writes(
    stores: Resources, server: Callable[..., ServerThread]
) -> None:
    """Entries of every frame length (one, two and eight length bytes) arrive whole and in
    order, and a burst takes fewer writes than it has frames."""
    running = server()
    await stores.ingestor.write_batch([packet("d", -1)])  # an epoch to follow live
    async with websockets.connect(ws_url(running), max_size=None) as ws:
        await ws.send('{"op": "subscribe", "ids": ["d"]}')
        await frames(ws, lambda f: f["type"] == "live")
        [socket] = hub_of(running).sockets
        direct = socket.direct
        assert direct is not None
        writes: list[int] = []
        write = direct.write

        def counted(chunks: list[bytes]) -> None:  # the real write, counted
            writes.append(len(chunks) // 2)
            write(chunks)

        direct.write = counted  # type: ignore[method-assign]
        sizes = [10, 200, 70_000, *([50] * 197)]
        burst = [packet("d", n, pad="y" * size) for n, size in enumerate(sizes)]
        await stores.ingestor.write_batch(burst)
        got: list[dict[str, Any]] = []
        while len(entries_of(got)) < len(sizes):
            got += await frames(ws, lambda f: f["type"] in ("entry", "backlog"))
        entries = entries_of(got)
        assert [(e["doc"]["n"], len(e["doc"]["pad"])) for e in entries] == list(enumerate(sizes))
        assert [e["seq"] for e in entries] == list(range(2, len(sizes) + 2))
        assert [f["type"] for f in got] == ["entry"] * len(sizes)  # live, not caught up
        assert sum(writes) == len(sizes)
        assert len(writes) <= len(sizes) // 4, writes
