"""Websocket fan-out: ``GET /ws`` of ``latest-server serve`` against a bare Starlette broadcast.

What it measures, on one machine, with Redis on loopback. ``--clients`` websocket clients each
subscribe to ``--per-client`` of ``--variables`` variables (every variable gets the same number of
subscribers) while a producer writes ``--rate`` entries/s for ``--seconds`` through
``POST /ingest`` of the target, so every entry is delivered to each subscriber of its variable:

* Ours: ``latest-server serve`` (subprocess, no AMQP, no Elasticsearch-compatible listener). The
  clients send ``{"op": "subscribe", "ids": [...], "latest": true}`` and wait for a ``live`` frame
  per variable; each entry then goes the real way: ``POST /ingest``, the Lua write (history
  append + ``SPUBLISH``), the pub/sub feed, the websocket hub, a ``{"type": "entry", ...}`` frame.
* Reference: a bare Starlette app defined in this file, served by uvicorn in a subprocess on the
  same event loop (uvloop) with the same uvicorn options (so the same websocket implementation).
  Its ``/ws`` accepts the same subscribe frame and keeps a dict variable -> sockets; its
  ``/ingest`` takes the same producer batches and sends each packet, as the same-shaped
  ``{"type": "entry", "id", "epoch", "seq", "ts", "doc"}`` frame, to every subscriber of its
  variable with ``await websocket.send_text``: what the product does minus Redis, history and the
  gap-free logic. (One difference in how frames leave: ours writes them to uvicorn's transport
  itself, all a socket gets in one event-loop turn in one write, see latest_server/web/ws/
  direct.py; the reference sends each through ASGI, as a plain Starlette app does.)

The same clients, producer pacing and duration are used for both, one after the other in the
same invocation, alternating bare, ours, bare, ours... for ``--rounds`` rounds (fresh connections
each run); the medians are reported.

* Clients: ``--workers`` processes, each an asyncio loop (uvloop where installed) driving its
  share of the connections through the websockets library's Sans-I/O ``ClientProtocol`` on plain
  asyncio transports, frames parsed with orjson: far cheaper per frame than a coroutine per
  socket, which matters as clients and servers share the machine's cores. They connect and
  subscribe ``--connect-concurrency`` at a time per worker; that phase is not measured (its
  duration is printed), and with many more at a time ours answers some subscriptions with
  ``{"type": "error", "reason": "unavailable", "message": "Too many connections"}``.
* Producer: in the main process, batches of ``--batch`` packets (~200-byte documents,
  round-robin over the variables) posted at a fixed pace, at most ``--in-flight`` requests at a
  time over keep-alive connections (``Poster``: a few lines on httptools' parser, 50-140 CPU µs
  per 50-packet request against httpx's 1.2-2.1 ms); each packet carries ``sent_ns``
  (``time.time_ns()`` just before its batch is posted).
* Delivered entries/s: entry frames received by all clients (each distinct entry once per
  client) / (last frame received - first batch posted + one batch interval). The offered
  fan-out is ``--rate`` x subscribers per variable; a target that keeps up delivers about that.
* Latency: receive time (when the frame's bytes reached the client) - ``sent_ns``; p50 and p99
  over every entry delivered. The clients and the producer run no cyclic garbage collection
  while they measure (``pause_gc``), so their own pauses are not counted as the server's.
* Completeness: after the producer stops, each client waits (at most ``--drain`` s) for every
  entry written to its variables; missing and duplicated entries are counted per client, and
  ``seq`` must go up by exactly one per variable per client after ``live`` (from the ``latest``
  backlog entry on, for ours; the bare app numbers its frames per variable the same way).
  Entries in backlog frames after ``live`` (the server catching a variable up from the stores)
  count as delivered, in the same seq order, and are counted apart.
* CPU µs per delivered entry of the server process (and Redis, for ours), of the clients and of
  the producer.
* The machine during the run: CPUs busy (of ``os.cpu_count()``) and stolen by the hypervisor,
  and how long each process waited, runnable, for a CPU (ms per second of the run). The latency
  tail grows with these: every hand-off between processes (producer → server → Redis → server
  → client) waits for a free CPU when the cores are busy.

Run (about 3 minutes with the defaults; ``--quick`` is a 30-second smoke run)::

    .venv/bin/python bench/ws_fanout.py [--clients 500] [--variables 1000] [--per-client 10]
        [--rate 5000] [--seconds 20] [--rounds 3] [--skip-ours] [--profile ours.svg]

``--skip-ours`` measures the bare broadcast alone; ``--ours-env NAME=VALUE`` gives ours a setting
(the environment's ``LATEST_*`` are not passed on); ``--fresh`` skips writing one packet per
variable before ours' first run, so its clients subscribe to variables with no history yet.
``--deflate`` has the clients offer permessage-deflate, as browsers do, and both servers accept
it (ours with ``LATEST_WS_COMPRESSION=1``): what compression costs a fan-out.
``--profile out.svg`` (``.json`` speedscope,
``.txt`` raw) adds one run of ours, not counted, sampled by py-spy; ``--profile-bare`` the same
for the bare app. Uses Redis db 14 (``--redis-url``; flushed before and after: run one benchmark
at a time) and 127.0.0.1 only. The last lines printed are ``ratio ours/bare delivered
entries/s: X.XX`` and ``ratio ours/bare p99 latency: X.XX``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import multiprocessing
import os
import random
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request
from array import array
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any, cast

import httptools
import httpx
import orjson
import uvicorn
from common import (
    HOST,
    find_py_spy,
    free_port,
    machine_cpu,
    ours_command,
    process_cpu,
    process_wait,
    py_spy_format,
    redis_cpu,
    server,
)
from redis import Redis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect
from websockets.client import ClientProtocol
from websockets.exceptions import InvalidStatus
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory
from websockets.frames import Frame, Opcode
from websockets.http11 import Response as HandshakeResponse
from websockets.sync.client import connect
from websockets.uri import WebSocketURI, parse_uri

from latest_server.settings import Settings
from latest_server.web.app import server_options

REDIS_URL = "redis://127.0.0.1:6379/14"
LOG_LEVEL = "warning"
START_US = 1_714_521_600_000_000  # 2024-05-01T00:00:00Z; packet n is START_US + n µs
OFFSET = timezone(timedelta(hours=5, minutes=30))
TARGET_BYTES = 200
READY_TIMEOUT = 120.0  # seconds for every client to be connected and live
QUIET_SECONDS = 3.0  # a drain ends early once nothing arrived for this long
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

ACCEPTANCE = {"clients": 500, "variables": 1000, "per_client": 10, "rate": 5000, "seconds": 20}
QUICK = {"clients": 50, "variables": 100, "per_client": 10, "rate": 1000, "seconds": 5}


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop where installed: what ``latest-server serve`` runs on (``runner.run_loop``)."""
    try:
        import uvloop
    except ImportError:
        return None
    return cast(Callable[[], asyncio.AbstractEventLoop], uvloop.new_event_loop)


def run_async(main: Coroutine[Any, Any, Any]) -> Any:
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(main)


# --- the reference server ----------------------------------------------------------------------


def time_us(value: object) -> int:
    """µs since the epoch of an ISO-8601 time with an offset (what the producer sends)."""
    return (datetime.fromisoformat(str(value)) - EPOCH) // timedelta(microseconds=1)


def bare_app() -> Starlette:
    """``/ws``: subscribe frames fill a dict variable -> sockets. ``/ingest``: each packet of a
    batch, as an entry frame numbered per variable, to every subscriber with ``send_text``."""
    subscribers: dict[str, set[WebSocket]] = {}
    seqs: dict[str, int] = {}

    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        mine: set[str] = set()
        try:
            while True:
                message = orjson.loads(await websocket.receive_text())
                op = message.get("op")
                if op == "subscribe":
                    for variable_id in message["ids"]:
                        subscribers.setdefault(variable_id, set()).add(websocket)
                        mine.add(variable_id)
                        frame = {"type": "live", "id": variable_id}
                        await websocket.send_text(orjson.dumps(frame).decode())
                elif op == "unsubscribe":
                    for variable_id in message["ids"]:
                        subscribers.get(variable_id, set()).discard(websocket)
                        mine.discard(variable_id)
                elif op == "ping":
                    await websocket.send_text('{"type":"pong"}')
        except WebSocketDisconnect:
            pass
        finally:
            for variable_id in mine:
                subscribers.get(variable_id, set()).discard(websocket)

    async def ingest(request: Request) -> Response:
        packets = orjson.loads(await request.body())
        if isinstance(packets, dict):
            packets = [packets]
        for packet in packets:
            variable_id = packet["id"]
            seq = seqs[variable_id] = seqs.get(variable_id, 0) + 1
            entry = {
                "type": "entry",
                "id": variable_id,
                "epoch": 1,
                "seq": seq,
                "ts": time_us(packet["observationDateTime"]),
                "doc": packet,
            }
            text = orjson.dumps(entry).decode()
            for websocket in list(subscribers.get(variable_id, ())):
                try:
                    await websocket.send_text(text)
                except Exception:  # gone: forget it
                    subscribers[variable_id].discard(websocket)
        answer = {"accepted": len(packets), "stale": 0, "duplicates": 0, "rejected": []}
        return Response(orjson.dumps(answer), media_type="application/json")

    async def healthz(request: Request) -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    return Starlette(
        routes=[
            WebSocketRoute("/ws", ws),
            Route("/ingest", ingest, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
        ]
    )


def serve_bare(port: int, deflate: bool) -> None:
    """The reference server the way ``latest-server serve`` runs its app: ``uvicorn.Server
    .serve()`` on a uvloop loop, access log off, the same uvicorn options otherwise (websocket
    implementation ``auto``, i.e. websockets' Sans-I/O protocol, HTTP ``auto``: httptools, and
    the websocket frame size and keep-alive pings of ``server_options``)."""
    config = uvicorn.Config(
        bare_app(),
        host=HOST,
        port=port,
        log_level=LOG_LEVEL,
        access_log=False,
        lifespan="on",
        **server_options(Settings(ws_compression=deflate)),
    )
    run_async(uvicorn.Server(config).serve())


# --- the workload ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    ids: list[str]
    subscriptions: list[list[int]]  # per client, the indexes of its variables

    @property
    def subscribers_per_variable(self) -> float:
        return sum(map(len, self.subscriptions)) / len(self.ids)


def make_plan(clients: int, variables: int, per_client: int, seed: int = 1) -> Plan:
    """Client c takes the next ``per_client`` variables of a shuffled list, wrapping around, so
    every variable gets the same number of subscribers (give or take one)."""
    ids = [f"bench/ws/sensor-{n:05d}" for n in range(variables)]
    order = list(range(variables))
    random.Random(seed).shuffle(order)
    subscriptions = [
        sorted({order[(c * per_client + j) % variables] for j in range(per_client)})
        for c in range(clients)
    ]
    return Plan(ids, subscriptions)


def padding() -> str:
    """A status string that brings a packet to about TARGET_BYTES bytes."""
    sample = document("bench/ws/sensor-00000", 10**9, "")
    sample["sent_ns"] = time.time_ns()
    return "ok" + "." * max(0, TARGET_BYTES - len(orjson.dumps(sample)) - 2)


def document(variable_id: str, n: int, status: str) -> dict[str, Any]:
    moment = datetime.fromtimestamp((START_US + n) / 1e6, OFFSET)
    return {
        "id": variable_id,
        "observationDateTime": moment.isoformat(timespec="microseconds"),
        "n": n,
        "sent_ns": 0,
        "pm2p5": 2.0 + n % 17_881 / 100,
        "pm10": 5.0 + n % 29_503 / 100,
        "location": {"type": "Point", "coordinates": [77.5946, 12.9716]},
        "status": status,
    }


# --- the clients (worker processes) ------------------------------------------------------------


class Stats:
    """What one worker's clients received."""

    def __init__(self) -> None:
        self.latencies = array("q")  # µs, one per entry delivered
        self.entries = 0  # distinct entries delivered (duplicates not counted)
        self.duplicates = 0  # entry frames whose seq was not above the last one seen
        self.gaps = 0  # seqs skipped
        self.epoch_changes = 0
        self.resets = 0
        self.backlog = 0  # backlog entries before live (the latest document, for ours)
        self.caught_up = 0  # entries delivered in backlog frames after live
        self.errors: list[str] = []
        self.last_ns = 0


class Client(asyncio.Protocol):
    """One websocket: the Sans-I/O protocol of the websockets library on an asyncio transport."""

    def __init__(self, uri: WebSocketURI, stats: Stats, ids: list[str], deflate: bool) -> None:
        loop = asyncio.get_running_loop()
        # Offered or not, as --deflate says; browsers and websockets.connect offer it.
        extensions = [ClientPerMessageDeflateFactory()] if deflate else None
        self.ws = ClientProtocol(uri, max_size=None, extensions=extensions)
        self.stats = stats
        self.waiting = set(ids)  # variables without their live frame yet
        self.opened: asyncio.Future[None] = loop.create_future()
        self.live: asyncio.Future[None] = loop.create_future()
        self.last: dict[str, tuple[int, int]] = {}  # variable -> (epoch, seq) seen last
        self.received = 0  # distinct entries
        self.fragments: list[bytes | bytearray | memoryview] = []
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.ws.send_request(self.ws.connect())
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        lost = ConnectionError(f"connection lost: {exc or 'closed by the server'}")
        for future in (self.opened, self.live):
            if not future.done():
                future.set_exception(lost)
                future.exception()  # retrieved: no "never retrieved" warning if nobody awaits

    def flush(self) -> None:
        assert self.transport is not None
        for chunk in self.ws.data_to_send():
            if chunk:
                self.transport.write(chunk)
            else:  # end of stream
                self.transport.close()

    def send(self, frame: bytes) -> None:
        self.ws.send_text(frame)
        self.flush()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.ws.send_close()
            self.flush()
        if self.transport is not None:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        now = time.time_ns()
        self.ws.receive_data(data)
        self.flush()  # pongs, close frames
        for event in self.ws.events_received():
            if isinstance(event, Frame):
                opcode = event.opcode
                if opcode is Opcode.TEXT:
                    if event.fin:
                        self.message(event.data, now)
                    else:
                        self.fragments = [event.data]
                elif opcode is Opcode.CONT:
                    self.fragments.append(event.data)
                    if event.fin:
                        self.message(b"".join(self.fragments), now)
                        self.fragments = []
            elif isinstance(event, HandshakeResponse) and not self.opened.done():
                if self.ws.handshake_exc is not None:
                    self.opened.set_exception(self.ws.handshake_exc)
                else:
                    self.opened.set_result(None)

    def message(self, data: bytes | bytearray | memoryview, now: int) -> None:
        message = orjson.loads(data)
        kind = message["type"]
        stats = self.stats
        if kind == "entry":
            self.entry(message["id"], message["epoch"], message["seq"], message["doc"], now)
        elif kind == "backlog":
            variable_id, entries = message["id"], message["entries"]
            if variable_id in self.waiting:  # the starting point (``latest``): not counted
                if entries:
                    stats.backlog += len(entries)
                    self.last[variable_id] = (entries[-1]["epoch"], entries[-1]["seq"])
            else:  # after live: the server caught this variable up from the stores
                stats.caught_up += len(entries)
                for entry in entries:
                    self.entry(variable_id, entry["epoch"], entry["seq"], entry["doc"], now)
        elif kind == "live":
            self.waiting.discard(message["id"])
            if not self.waiting and not self.live.done():
                self.live.set_result(None)
        elif kind == "reset":
            stats.resets += 1
            self.last.pop(message.get("id"), None)
        elif kind == "error":
            stats.errors.append(str(message.get("reason")))
            if not self.live.done():
                self.live.set_exception(RuntimeError(f"error frame: {message}"))

    def entry(self, variable_id: str, epoch: int, seq: int, doc: Any, now: int) -> None:
        """An entry delivered after live (in an entry frame, or a backlog frame when the
        server caught the variable up): must be the next seq of the variable."""
        stats = self.stats
        last = self.last.get(variable_id)
        if last is not None:
            if epoch != last[0]:
                stats.epoch_changes += 1
            elif seq <= last[1]:
                stats.duplicates += 1
                return
            elif seq != last[1] + 1:
                stats.gaps += seq - last[1] - 1
        self.last[variable_id] = (epoch, seq)
        self.received += 1
        stats.entries += 1
        stats.latencies.append((now - doc["sent_ns"]) // 1000)
        stats.last_ns = now


async def receive(conn: Connection) -> Any:
    """The next command from the main process, without blocking the event loop."""
    loop = asyncio.get_running_loop()
    readable: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not readable.done():
            readable.set_result(None)

    loop.add_reader(conn.fileno(), wake)
    try:
        await readable
    finally:
        loop.remove_reader(conn.fileno())
        os.set_blocking(conn.fileno(), True)  # the loop made it non-blocking: conn.send needs it
    return conn.recv()


async def open_clients(
    port: int,
    ids: list[str],
    subscriptions: list[list[int]],
    stats: Stats,
    concurrency: int,
    deflate: bool,
) -> list[Client]:
    """Connect, subscribe and wait for every variable's live frame, ``concurrency`` clients at
    a time."""
    loop = asyncio.get_running_loop()
    uri = parse_uri(f"ws://{HOST}:{port}/ws")
    gate = asyncio.Semaphore(concurrency)

    async def one(indexes: list[int]) -> Client:
        variable_ids = [ids[i] for i in indexes]
        async with gate:
            _, client = await loop.create_connection(
                lambda: Client(uri, stats, variable_ids, deflate), HOST, port
            )
            try:
                await client.opened
                if deflate and not client.ws.extensions:
                    raise RuntimeError("the server did not accept permessage-deflate")
                client.send(orjson.dumps({"op": "subscribe", "ids": variable_ids, "latest": True}))
                await client.live
            except BaseException:
                client.close()
                raise
            return client

    tasks = [asyncio.create_task(one(indexes)) for indexes in subscriptions]
    try:
        async with asyncio.timeout(READY_TIMEOUT):
            return await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        for done in await asyncio.gather(*tasks, return_exceptions=True):
            if isinstance(done, Client):
                done.close()
        raise


def pause_gc() -> None:
    """No cyclic garbage collection in this process until ``gc.enable()``: the clients and the
    producer time the entries, and a collection there (a full one took 30-84 ms in the producer,
    which holds the earlier runs' latencies) would be counted as the server's latency. What they
    allocate while measuring is freed by reference counting."""
    gc.collect()
    gc.disable()


async def drain(clients: list[Client], expected: list[int], stats: Stats, limit: float) -> None:
    """Wait until every client has every entry written to its variables, nothing arrived for
    QUIET_SECONDS, or ``limit`` seconds passed."""
    total = sum(expected)
    deadline = time.monotonic() + limit
    seen, changed = stats.entries, time.monotonic()
    while stats.entries < total and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        if stats.entries != seen:
            seen, changed = stats.entries, time.monotonic()
        elif time.monotonic() - changed > QUIET_SECONDS:
            break


async def worker_loop(conn: Connection) -> None:
    """Commands: ("run", port, ids, subscriptions, concurrency, deflate) -> ("ready",); ("drain",
    expected by variable, limit) -> ("done", results); ("exit",). Failures answer ("error",
    text)."""
    clients: list[Client] = []
    subscriptions: list[list[int]] = []
    stats = Stats()
    while True:
        command = await receive(conn)
        try:
            if command[0] == "run":
                _, port, ids, subscriptions, concurrency, deflate = command
                stats = Stats()
                clients = await open_clients(port, ids, subscriptions, stats, concurrency, deflate)
                pause_gc()
                conn.send(("ready",))
            elif command[0] == "drain":
                _, per_variable, limit = command
                expected = [sum(per_variable[i] for i in indexes) for indexes in subscriptions]
                await drain(clients, expected, stats, limit)
                gc.enable()
                results = {
                    "entries": stats.entries,
                    "received": [client.received for client in clients],
                    "expected": expected,
                    "duplicates": stats.duplicates,
                    "gaps": stats.gaps,
                    "epoch_changes": stats.epoch_changes,
                    "resets": stats.resets,
                    "backlog": stats.backlog,
                    "caught_up": stats.caught_up,
                    "errors": stats.errors[:5],
                    "last_ns": stats.last_ns,
                    "latencies": stats.latencies.tobytes(),
                }
                for client in clients:
                    client.close()
                clients = []
                await asyncio.sleep(0.2)  # let the closes go out
                conn.send(("done", results))
            elif command[0] == "exit":
                return
        except Exception:
            gc.enable()
            for client in clients:
                client.close()
            clients = []
            conn.send(("error", traceback.format_exc()))


def worker_main(conn: Connection) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process stops us
    run_async(worker_loop(conn))


@dataclass
class Worker:
    process: BaseProcess
    conn: Connection

    def ask(self, command: tuple[Any, ...]) -> None:
        self.conn.send(command)

    def answer(self, timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        while not self.conn.poll(0.2):
            if not self.process.is_alive():
                raise RuntimeError(f"client worker {self.process.pid} died")
            if time.monotonic() > deadline:
                raise RuntimeError(f"client worker {self.process.pid} did not answer in time")
        reply = self.conn.recv()
        if reply[0] == "error":
            raise RuntimeError(f"client worker {self.process.pid} failed:\n{reply[1]}")
        return reply


@contextlib.contextmanager
def workers(count: int) -> Iterator[list[Worker]]:
    context = multiprocessing.get_context("spawn")
    started: list[Worker] = []
    try:
        for _ in range(count):
            ours, theirs = context.Pipe()
            process = context.Process(target=worker_main, args=(theirs,), daemon=True)
            process.start()
            theirs.close()
            started.append(Worker(process, ours))
        yield started
    finally:
        for worker in started:
            with contextlib.suppress(Exception):
                worker.ask(("exit",))
        for worker in started:
            worker.process.join(5)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()


# --- the servers -------------------------------------------------------------------------------


def start_profiler(pid: int, output: str, seconds: int) -> subprocess.Popen[bytes]:
    command = [find_py_spy(), "record", "--pid", str(pid), "--rate", "200", "--output", output]
    command += ["--duration", str(seconds), "--nonblocking", *py_spy_format(output)]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, start_new_session=True)


def websocket_route_exists(port: int) -> bool:
    """Whether ``GET /ws`` upgrades (it is a 404 when there is no such route)."""
    try:
        with connect(f"ws://{HOST}:{port}/ws", open_timeout=10, compression=None):
            return True
    except InvalidStatus as exc:
        if exc.response.status_code in (403, 404):
            return False
        raise


# --- the producer ------------------------------------------------------------------------------


@dataclass
class Production:
    per_variable: list[int]  # entries accepted, by variable index
    first_ns: int = 0  # first batch posted
    last_ns: int = 0  # last batch posted
    next_n: int = 0
    behind: float = 0.0  # most seconds a batch was posted after its slot
    posts: list[float] = field(default_factory=list)  # seconds each POST /ingest took

    @property
    def entries(self) -> int:
        return sum(self.per_variable)

    @property
    def rate(self) -> float:
        return self.entries / max((self.last_ns - self.first_ns) / 1e9, 1e-9)


class Poster(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection that posts JSON bodies, one request at a time, and
    reads the answers with httptools' parser (C, installed with uvicorn[standard]). httpx cost
    the producer about 1 ms of CPU per 50-packet POST (2 ms with 8 requests in flight), a
    tenth to a fifth of a CPU at 5 000 entries/s, on the cores the servers and clients share."""

    def __init__(self, host: str, port: int) -> None:
        self.head = f"Host: {host}:{port}\r\nContent-Type: application/json\r\n".encode()
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.answer: asyncio.Future[tuple[int, bytes]] | None = None
        self.chunks: list[bytes] = []
        self.closed = False  # by either side: the server closes idle keep-alive connections

    @classmethod
    async def open(cls, host: str, port: int) -> Poster:
        loop = asyncio.get_running_loop()
        _, poster = await loop.create_connection(lambda: cls(host, port), host, port)
        return poster

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.answer is not None and not self.answer.done():
            self.answer.set_exception(ConnectionError(f"the server closed the connection: {exc}"))

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_body(self, body: bytes) -> None:  # httptools' callbacks
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        if self.answer is not None and not self.answer.done():
            self.answer.set_result((self.parser.get_status_code(), b"".join(self.chunks)))

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        """(status, body) of the answer."""
        assert self.transport is not None
        self.chunks = []
        self.answer = asyncio.get_running_loop().create_future()
        head = b"POST %s HTTP/1.1\r\n%sContent-Length: %d\r\n\r\n"
        self.transport.write(head % (path.encode(), self.head, len(body)) + body)
        return await asyncio.wait_for(self.answer, 30)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


async def produce(
    base_url: str, ids: list[str], args: argparse.Namespace, first_n: int, seconds: float
) -> Production:
    """Post ``args.rate`` entries/s in batches of ``args.batch`` for ``seconds``, paced."""
    status = padding()
    per_batch = args.batch
    interval = per_batch / args.rate
    batches = max(1, round(args.rate * seconds / per_batch))
    production = Production([0] * len(ids), next_n=first_n + batches * per_batch)
    failures: list[BaseException] = []
    url = urllib.parse.urlsplit(base_url)
    host, port = url.hostname or HOST, url.port or 80
    idle: asyncio.Queue[Poster] = asyncio.Queue()  # at most --in-flight requests at a time
    connections = [await Poster.open(host, port) for _ in range(args.in_flight)]
    for connection in connections:
        idle.put_nowait(connection)
    opened = list(connections)  # closed at the end, reopened ones too

    async def post(connection: Poster, k: int) -> None:
        try:
            if connection.closed:  # idle past the server's keep-alive timeout (slow --rate)
                connection = await Poster.open(host, port)
                opened.append(connection)
            first = first_n + k * per_batch
            numbers = range(first, first + per_batch)
            docs = [document(ids[n % len(ids)], n, status) for n in numbers]
            sent = time.time_ns()
            for doc in docs:
                doc["sent_ns"] = sent
            if not production.first_ns:
                production.first_ns = sent
            production.last_ns = max(production.last_ns, sent)
            posted = time.perf_counter()
            status_code, content = await connection.post("/ingest", orjson.dumps(docs))
            production.posts.append(time.perf_counter() - posted)
            result = orjson.loads(content)
            if status_code != 200 or result.get("accepted") != len(docs):
                raise RuntimeError(f"POST /ingest answered {status_code}: {result}")
            for n in numbers:
                production.per_variable[n % len(ids)] += 1
        except BaseException as exc:
            failures.append(exc)
        finally:
            idle.put_nowait(connection)

    try:
        tasks = []
        started = time.perf_counter()
        for k in range(batches):
            slot = started + k * interval
            delay = slot - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            connection = await idle.get()
            production.behind = max(production.behind, time.perf_counter() - slot)
            if failures:
                break
            tasks.append(asyncio.create_task(post(connection, k)))
        await asyncio.gather(*tasks)
    finally:
        for connection in opened:
            connection.close()
    if failures:
        raise RuntimeError(f"the producer failed: {failures[0]!r}") from failures[0]
    return production


def prefill(base_url: str, ids: list[str], status: str) -> None:
    """One packet per variable, so a ``latest`` subscription has a document to send first."""
    docs = [document(variable_id, n, status) for n, variable_id in enumerate(ids)]
    for start in range(0, len(docs), 500):
        body = orjson.dumps(docs[start : start + 500])
        answer = httpx.post(f"{base_url}/ingest", content=body, timeout=30)
        answer.raise_for_status()


# --- one run -----------------------------------------------------------------------------------


@dataclass
class Run:
    target: str
    ready: float  # seconds until every client was connected and live
    delivered: int
    expected: int
    seconds: float
    latencies: list[int]  # µs, sorted
    production: Production
    duplicates: int
    gaps: int
    missing: int
    complete_clients: int
    clients: int
    epoch_changes: int
    resets: int
    backlog: int
    caught_up: int
    errors: list[str]
    cpu: dict[str, float] = field(default_factory=dict)  # seconds, by process
    waits: dict[str, float] = field(default_factory=dict)  # seconds runnable without a CPU
    machine: dict[str, float] = field(default_factory=dict)  # busy, steal: CPU seconds
    wall: float = 0.0  # seconds over which cpu, waits and machine were taken

    @property
    def rate(self) -> float:
        return self.delivered / self.seconds

    def percentile(self, p: float) -> float:
        """ms"""
        if not self.latencies:
            return float("nan")
        index = min(len(self.latencies) - 1, round(p / 100 * (len(self.latencies) - 1)))
        return self.latencies[index] / 1000

    def describe(self, offered: float) -> str:
        posts = sorted(1000 * seconds for seconds in self.production.posts) or [float("nan")]
        cpu = ", ".join(
            f"{name} {1e6 * seconds / max(self.delivered, 1):.0f}"
            for name, seconds in self.cpu.items()
        )
        checks = (
            f"{self.missing} missing, {self.duplicates} duplicated, {self.gaps} seq gaps, "
            f"{self.complete_clients}/{self.clients} clients got every entry"
        )
        if self.caught_up:
            checks += f", {self.caught_up} entries came in backlog frames after live"
        if self.epoch_changes or self.resets or self.errors:
            checks += f", {self.epoch_changes} epoch changes, {self.resets} resets"
            checks += f", errors: {self.errors}" if self.errors else ""
        waits = ", ".join(
            f"{name} {1000 * seconds / self.wall:.0f}" for name, seconds in self.waits.items()
        )
        machine = (
            f"machine: {self.machine['busy'] / self.wall:.2f} of {os.cpu_count()} CPUs busy, "
            f"{self.machine['steal'] / self.wall:.2f} stolen; waiting for a CPU, ms per s: {waits}"
        )
        return (
            f"delivered {self.rate:,.0f} entries/s ({100 * self.rate / offered:.1f} % of the "
            f"{offered:,.0f} offered), latency p50 {self.percentile(50):.1f} ms, "
            f"p99 {self.percentile(99):.1f} ms, max {self.percentile(100):.0f} ms; producer "
            f"{self.production.rate:,.0f} entries/s (POST /ingest p50 {posts[len(posts) // 2]:.1f}"
            f" ms, p99 {posts[len(posts) * 99 // 100]:.1f} ms; at most "
            f"{1000 * self.production.behind:.0f} ms behind its pace); {checks}; CPU µs per "
            f"delivered entry: {cpu}; {machine}; all clients live {self.ready:.2f} s after "
            "connecting"
        )


@dataclass(frozen=True)
class Target:
    name: str
    port: int
    pid: int
    redis: Redis | None  # ours: Redis CPU is counted too
    writer: tuple[int, int] | None = None  # (port, pid) of the process taking POST /ingest


def measure(
    target: Target,
    pool: list[Worker],
    plan: Plan,
    args: argparse.Namespace,
    first_n: int,
    profile: str | None = None,
) -> Run:
    shares = [plan.subscriptions[w :: len(pool)] for w in range(len(pool))]
    started = time.perf_counter()
    for worker, share in zip(pool, shares, strict=True):
        worker.ask(("run", target.port, plan.ids, share, args.connect_concurrency, args.deflate))
    for worker in pool:
        worker.answer(READY_TIMEOUT + 10)
    ready = time.perf_counter() - started

    redis_pid = None
    if target.redis is not None:  # Redis on this machine: its waits are counted too
        redis_pid = int(target.redis.info("server")["process_id"])
        name = ""
        with contextlib.suppress(OSError):
            name = Path(f"/proc/{redis_pid}/comm").read_text()
        if not name.startswith(("redis", "valkey")):
            redis_pid = None

    def by_process(read: Callable[[int], float], redis: float | None) -> dict[str, float]:
        """``read`` of every process of the run, by role; Redis's figure comes from the caller
        (its CPU from INFO, which works for a Redis elsewhere too)."""
        found = {"server": read(target.pid)}
        if redis is not None:
            found["Redis"] = redis
        if target.writer is not None:
            found["writer"] = read(target.writer[1])
        found["clients"] = sum(read(cast(int, w.process.pid)) for w in pool)
        found["producer"] = read(os.getpid())
        return found

    def cpu_now() -> dict[str, float]:
        redis = None if target.redis is None else redis_cpu(target.redis.info("cpu"))
        return by_process(process_cpu, redis)

    def waits_now() -> dict[str, float]:
        return by_process(process_wait, None if redis_pid is None else process_wait(redis_pid))

    pause_gc()  # before the counters: its own collection is not the run's
    profiler = start_profiler(target.pid, profile, args.seconds) if profile else None
    before, waits_before, machine_before = cpu_now(), waits_now(), machine_cpu()
    wall_before = time.perf_counter()
    try:
        port = target.port if target.writer is None else target.writer[0]
        try:
            production = run_async(
                produce(f"http://{HOST}:{port}", plan.ids, args, first_n, args.seconds)
            )
        finally:
            gc.enable()
        for worker in pool:
            worker.ask(("drain", production.per_variable, args.drain))
        replies = [worker.answer(args.drain + 30)[1] for worker in pool]
    finally:
        if profiler is not None:
            try:
                profiler.wait(timeout=args.seconds + 30)
            except subprocess.TimeoutExpired:
                profiler.send_signal(signal.SIGINT)
                profiler.wait()
    after, waits_after, machine_after = cpu_now(), waits_now(), machine_cpu()
    wall = time.perf_counter() - wall_before
    latencies: list[int] = []
    for reply in replies:
        part = array("q")
        part.frombytes(reply["latencies"])
        latencies.extend(part)
    latencies.sort()
    received = [n for reply in replies for n in reply["received"]]
    expected = [n for reply in replies for n in reply["expected"]]
    last_ns = max(reply["last_ns"] for reply in replies) or production.last_ns
    return Run(
        target=target.name,
        ready=ready,
        delivered=sum(reply["entries"] for reply in replies),
        expected=sum(expected),
        seconds=(last_ns - production.first_ns) / 1e9 + args.batch / args.rate,
        latencies=latencies,
        production=production,
        duplicates=sum(reply["duplicates"] for reply in replies),
        gaps=sum(reply["gaps"] for reply in replies),
        missing=sum(max(e - r, 0) for e, r in zip(expected, received, strict=True)),
        complete_clients=sum(r >= e for e, r in zip(expected, received, strict=True)),
        clients=len(received),
        epoch_changes=sum(reply["epoch_changes"] for reply in replies),
        resets=sum(reply["resets"] for reply in replies),
        backlog=sum(reply["backlog"] for reply in replies),
        caught_up=sum(reply["caught_up"] for reply in replies),
        errors=[error for reply in replies for error in reply["errors"]][:5],
        cpu={name: after[name] - before[name] for name in before},
        waits={name: waits_after[name] - waits_before[name] for name in waits_before},
        machine={name: machine_after[name] - machine_before[name] for name in machine_before},
        wall=wall,
    )


# --- main --------------------------------------------------------------------------------------


def median_run(runs: list[Run]) -> tuple[float, float, float]:
    """Median delivered entries/s, p50 and p99 (ms) over runs."""
    return (
        statistics.median(run.rate for run in runs),
        statistics.median(run.percentile(50) for run in runs),
        statistics.median(run.percentile(99) for run in runs),
    )


def summary(name: str, runs: list[Run]) -> str:
    rate, p50, p99 = median_run(runs)
    checks = (
        f"{sum(r.missing for r in runs)} missing, {sum(r.duplicates for r in runs)} duplicated, "
        f"{sum(r.gaps for r in runs)} seq gaps over {len(runs)} runs"
    )
    busy = statistics.median(run.machine["busy"] / run.wall for run in runs)
    return (
        f"{name} (median of {len(runs)}): delivered {rate:,.0f} entries/s, "
        f"latency p50 {p50:.1f} ms, p99 {p99:.1f} ms; {checks}; {busy:.2f} of "
        f"{os.cpu_count()} CPUs busy"
    )


def flush(redis_url: str) -> None:
    with Redis.from_url(redis_url) as redis:
        redis.flushdb()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sizes = ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in QUICK.items())
    parser.add_argument("--quick", action="store_true", help=f"a smoke run: {sizes}, 1 round")
    parser.add_argument("--clients", type=int, help=f"[{ACCEPTANCE['clients']}]")
    parser.add_argument("--variables", type=int, help=f"[{ACCEPTANCE['variables']}]")
    parser.add_argument(
        "--per-client", type=int, help=f"variables per client [{ACCEPTANCE['per_client']}]"
    )
    parser.add_argument("--rate", type=int, help=f"entries/s written [{ACCEPTANCE['rate']}]")
    parser.add_argument("--seconds", type=int, help=f"per run [{ACCEPTANCE['seconds']}]")
    parser.add_argument("--rounds", type=int, help="runs of each target, alternating [3]")
    parser.add_argument("--batch", type=int, default=50, help="packets per POST [%(default)s]")
    parser.add_argument(
        "--in-flight", type=int, default=8, help="concurrent POSTs at most [%(default)s]"
    )
    parser.add_argument("--workers", type=int, default=2, help="client processes [%(default)s]")
    parser.add_argument(
        "--connect-concurrency",
        type=int,
        default=5,
        help="clients connecting and subscribing at a time, per worker [%(default)s]",
    )
    parser.add_argument(
        "--drain", type=float, default=30.0, help="seconds to wait for stragglers [%(default)s]"
    )
    parser.add_argument("--redis-url", default=REDIS_URL, help="a database this run may flush")
    parser.add_argument(
        "--writer-process",
        action="store_true",
        help="ours: POST /ingest to a second latest-server process (as a deployment with a "
        "separate consumer would write), so the measured one only fans out",
    )
    parser.add_argument("--skip-ours", action="store_true", help="measure the bare app only")
    parser.add_argument(
        "--fresh",
        action="store_true",
        help="do not write a first packet per variable before ours' first run",
    )
    parser.add_argument(
        "--ours-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting for ours only, e.g. LATEST_WS_PROBE_INTERVAL=60 (repeatable)",
    )
    parser.add_argument(
        "--profile", help="one more run of ours, not counted, sampled by py-spy into this file"
    )
    parser.add_argument("--profile-bare", help="the same for the bare app")
    parser.add_argument(
        "--deflate",
        action="store_true",
        help="clients offer permessage-deflate, as browsers do, and both servers accept it (ours "
        "with LATEST_WS_COMPRESSION=1)",
    )
    parser.add_argument("--serve-bare", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_bare:
        return args
    for name, value in (QUICK if args.quick else ACCEPTANCE).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.rounds is None:
        args.rounds = 1 if args.quick else 3
    positive = ("clients", "variables", "per_client", "rate", "seconds", "rounds", "batch")
    others = ("in_flight", "workers", "connect_concurrency")
    if any(getattr(args, name) < 1 for name in (*positive, *others)):
        parser.error(
            "sizes, --rounds, --batch, --in-flight, --workers, --connect-concurrency "
            "must be positive"
        )
    if args.per_client > args.variables:
        parser.error("--per-client cannot exceed --variables")
    if any("=" not in item for item in args.ours_env):
        parser.error("--ours-env takes NAME=VALUE")
    if args.skip_ours and args.profile:
        parser.error("--profile profiles ours: not with --skip-ours")
    if args.profile or args.profile_bare:
        find_py_spy()
    return args


def stop_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(f"stopped by signal {signum}")


def main() -> None:
    args = parse_args()
    if args.serve_bare:
        serve_bare(args.serve_bare, args.deflate)
        return
    signal.signal(signal.SIGTERM, stop_on_sigterm)  # clean up as on Ctrl-C
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = args.clients + 1024
    if soft < wanted:  # the servers and the workers inherit it
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))
    if args.ours_env:
        print(f"ours runs with {' '.join(args.ours_env)}")
    if args.deflate:
        print("clients offer permessage-deflate, and both servers accept it")

    plan = make_plan(args.clients, args.variables, args.per_client)
    offered = args.rate * plan.subscribers_per_variable
    print(
        f"{args.clients} clients × {args.per_client} of {args.variables} variables "
        f"({plan.subscribers_per_variable:g} subscribers per variable) in {args.workers} "
        f"processes; {args.rate:,} entries/s for {args.seconds} s in POST /ingest batches of "
        f"{args.batch} (~{TARGET_BYTES}-byte packets): {offered:,.0f} entry frames/s offered; "
        f"{args.rounds} runs of each target, alternating"
    )
    env = {k: v for k, v in os.environ.items() if k != "AMQP_URL" and not k.startswith("LATEST_")}
    env.update(REDIS_URL=args.redis_url, LATEST_HOST=HOST, LATEST_LOG_LEVEL=LOG_LEVEL)
    env.update(LATEST_ES_PORT="0")
    bare_port = free_port()
    bare_command = [sys.executable, __file__, f"--serve-bare={bare_port}"]
    if args.deflate:
        bare_command.append("--deflate")
    runs: dict[str, list[Run]] = {"bare": [], "ours": []}
    first_n = args.variables  # 0 .. variables - 1 are the prefill packets
    redis = Redis.from_url(args.redis_url)
    try:
        redis.flushdb()
        with (
            tempfile.TemporaryDirectory() as data_dir,
            workers(args.workers) as pool,
            contextlib.ExitStack() as stack,
        ):
            bare_pid = stack.enter_context(
                server(
                    "the bare app",
                    bare_command,
                    env,
                    f"http://{HOST}:{bare_port}/healthz",
                    own_session=True,
                )
            ).pid
            targets = [Target("bare", bare_port, bare_pid, None)]
            if not args.skip_ours:
                ours_port = free_port()
                ours_env = {**env, "LATEST_PORT": str(ours_port), "LATEST_DATA_DIR": data_dir}
                ours_env["LATEST_WS_COMPRESSION"] = "1" if args.deflate else "0"
                ours_env.update(item.split("=", 1) for item in args.ours_env)
                ours_url = f"http://{HOST}:{ours_port}"
                ours_pid = stack.enter_context(
                    server(
                        "latest-server serve",
                        ours_command(),
                        ours_env,
                        f"{ours_url}/healthz",
                        own_session=True,
                    )
                ).pid
                if not websocket_route_exists(ours_port):
                    raise SystemExit(
                        "latest-server serve has no GET /ws yet: run with --skip-ours to "
                        "measure the bare broadcast alone"
                    )
                if not args.fresh:
                    prefill(ours_url, plan.ids, padding())
                writer = None
                if args.writer_process:
                    writer_port = free_port()
                    writer_env = {**ours_env, "LATEST_PORT": str(writer_port)}
                    writer_url = f"http://{HOST}:{writer_port}"
                    writer_pid = stack.enter_context(
                        server(
                            "the writer",
                            ours_command(),
                            writer_env,
                            f"{writer_url}/healthz",
                            own_session=True,
                        )
                    ).pid
                    writer = (writer_port, writer_pid)
                targets.append(Target("ours", ours_port, ours_pid, redis, writer))
            names = {
                "bare": "bare Starlette websocket broadcast",
                "ours": "latest-server serve, GET /ws",
            }
            for round_ in range(1, args.rounds + 1):
                for target in targets:
                    run = measure(target, pool, plan, args, first_n)
                    first_n = run.production.next_n
                    runs[target.name].append(run)
                    print(f"  round {round_} {target.name}: {run.describe(offered)}", flush=True)
            for target in targets:
                profile = args.profile if target.name == "ours" else args.profile_bare
                if profile:
                    run = measure(target, pool, plan, args, first_n, profile)
                    first_n = run.production.next_n
                    print(f"  profiled {target.name} (not counted): {run.describe(offered)}")
                    print(f"  profile of {names[target.name]} written to {profile}")
    finally:
        with contextlib.suppress(Exception):
            redis.flushdb()
        redis.close()

    print(summary(names["bare"], runs["bare"]))
    if not runs["ours"]:
        print("ours not measured (--skip-ours)")
        return
    print(summary(names["ours"], runs["ours"]))
    bare_rate, _, bare_p99 = median_run(runs["bare"])
    ours_rate, _, ours_p99 = median_run(runs["ours"])
    lost = sum(r.missing + r.duplicates + r.gaps for r in runs["ours"])
    print(
        f"targets: delivered ≥ 0.8 × bare: {'met' if ours_rate >= 0.8 * bare_rate else 'MISSED'}"
        f"; p99 ≤ 2 × bare p99: {'met' if ours_p99 <= 2 * bare_p99 else 'MISSED'}; "
        f"every entry exactly once, in seq order: {'yes' if lost == 0 else 'NO'}"
    )
    print(f"ratio ours/bare delivered entries/s: {ours_rate / bare_rate:.2f}")
    print(f"ratio ours/bare p99 latency: {ours_p99 / bare_p99:.2f}")


if __name__ == "__main__":
    main()
