"""HTTP latest-value reads: ``GET /latest/{id}`` of ``latest-server serve`` against a bare app.

What it measures, on one machine, with Redis on loopback and wrk as the load generator:

* Ours: ``latest-server serve`` (subprocess, no AMQP) answering ``GET /latest/{id}``.
* Reference: a bare Starlette app defined in this file, served by uvicorn in a subprocess with the
  same options as ours (one worker, access log off, log level warning, httptools, and the
  uvloop event loop, which is what ours runs on: ``--bare-loop asyncio`` to compare), whose
  single route ``GET /bare/{id}`` does one ``HGET <latest key> doc`` through redis.asyncio and
  returns the bytes: the least work a Python server can do to answer the same question.

Redis db 14 is first filled with ``--variables`` variables through the real write path
(``RedisLatestStore.write_batch``). wrk then requests the ids in turn (URL-encoded, each thread
starting elsewhere in the list) with ``--threads`` threads and ``--connections`` connections for
``--seconds`` per run, alternating bare, ours, bare, ours, … for ``--rounds`` rounds after a short
warm-up of each; the median of each is reported. On a machine with two cores or more, both servers
are pinned to the first core and wrk to the others (``--no-pin`` turns it off): left to the
scheduler, a server, wrk and Redis on two cores moved each other around, and the same server's
rate varied by a third from one run to the next. Beside each rate, the server process's CPU time
per request (from /proc) is printed: the steadier figure on a busy machine.

Needs wrk (``apt-get install wrk``). Run (about 2 minutes with the defaults)::

    .venv/bin/python bench/latest_http.py [--variables 10000] [--seconds 10] [--rounds 5]

``--token``: ours runs with a tokens file (LATEST_TOKENS_FILE) of one read token, and wrk sends
it as ``Authorization: Bearer`` to ours (the bare app checks nothing): what authentication costs
a read, to compare with a run without.

Uses Redis db 14 (``--redis-url``; flushed before and after: run one benchmark at a time). The
last line printed is ``ratio ours/bare: X.XX``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import orjson
import uvicorn
from common import HOST, free_port, get, ours_command, process_cpu, server
from redis.asyncio import Redis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from latest_server import keys
from latest_server.auth.tokens import new_token
from latest_server.packets import Packet, PacketParser
from latest_server.settings import Settings
from latest_server.stores.latest_redis import RedisLatestStore

REDIS_URL = "redis://127.0.0.1:6379/14"
LOG_LEVEL = "warning"
WARMUP_SECONDS = 3
WRITE_BATCH = 500

WRK_SCRIPT = """
-- Cycle through the ids; args[1] is the path prefix, args[2] a bearer token if any. Each thread
-- starts elsewhere in the list.
local ids = {%(ids)s}
local threads = 0
local prefix
local headers = {}
local i

function setup(thread)
  threads = threads + 1
  thread:set("start", threads * 4099)
end

function init(args)
  prefix = args[1]
  if args[2] then headers["Authorization"] = "Bearer " .. args[2] end
  i = (start or 0) %% #ids
end

function request()
  i = i %% #ids + 1
  return wrk.format("GET", prefix .. ids[i], headers)
end
"""


# --- the reference server ----------------------------------------------------------------------


def bare_app(redis_url: str) -> Starlette:
    """One route, one HGET of the key ``latest-server`` reads, the stored bytes returned as is."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        app.state.redis = Redis.from_url(redis_url)
        try:
            yield
        finally:
            await app.state.redis.aclose()

    async def bare(request: Request) -> Response:
        redis: Redis = request.app.state.redis
        key = keys.latest(keys.key_for(request.path_params["variable_id"]))
        doc = await redis.hget(key, "doc")
        if doc is None:
            return Response(b"", 404)
        return Response(doc, media_type="application/json")

    return Starlette(routes=[Route("/bare/{variable_id:path}", bare)], lifespan=lifespan)


def serve_bare(redis_url: str, port: int, loop: str) -> None:
    """The reference server, with the uvicorn options ``latest-server serve`` uses. Ours runs
    ``uvicorn.Server.serve()`` inside its own ``asyncio.run()``, so on the asyncio event loop
    whatever uvicorn's ``loop`` option says; ``loop="asyncio"`` does the same here."""
    config = uvicorn.Config(
        bare_app(redis_url),
        host=HOST,
        port=port,
        log_level=LOG_LEVEL,
        access_log=False,
        lifespan="on",
        loop=loop,
    )
    uvicorn.Server(config).run()


# --- set-up ------------------------------------------------------------------------------------


def variable_ids(count: int) -> list[str]:
    """Ids with a slash and a space, so they must be URL-encoded."""
    return [f"bench/aqm sensor-{n:05d}" for n in range(count)]


def document(variable_id: str, n: int) -> dict[str, object]:
    doc: dict[str, object] = {
        "id": variable_id,
        "observationDateTime": f"2024-05-01T12:{n // 60 % 60:02d}:{n % 60:02d}.250000+05:30",
        "pm2p5": 12.5 + n % 97,
        "pm10": 40.25 + n % 113,
        "location": {"type": "Point", "coordinates": [77.5946, 12.9716]},
    }
    doc["status"] = "ok" + "." * max(0, 200 - len(orjson.dumps(doc)) - 13)
    return doc


async def fill(redis_url: str, ids: list[str]) -> int:
    """Write one document per variable through RedisLatestStore.write_batch. Returns its size."""
    parser = PacketParser(Settings())
    packets = [parser.packet(document(v, n)) for n, v in enumerate(ids)]
    redis = Redis.from_url(redis_url)
    try:
        await redis.flushdb()
        store = await RedisLatestStore.open(redis)
        for start in range(0, len(packets), WRITE_BATCH):
            outcomes = await store.write_batch(packets[start : start + WRITE_BATCH])
            if not all(outcome.applied for outcome in outcomes):
                raise RuntimeError("a bench document was not applied")
    finally:
        await redis.aclose()
    return round(statistics.mean(len(p.raw) for p in packets if isinstance(p, Packet)))


def cpu_sets(pin: bool) -> tuple[set[int] | None, set[int] | None]:
    """CPUs for the servers and for wrk: the first core and the rest, or None (unpinned)."""
    cpus = sorted(os.sched_getaffinity(0))
    if not pin or len(cpus) < 2:
        return None, None
    return {cpus[0]}, set(cpus[1:])


def pinned(cpus: set[int] | None) -> Callable[[], None] | None:
    if cpus is None:
        return None
    return lambda: os.sched_setaffinity(0, cpus)


# --- load --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WrkRun:
    requests_per_second: float
    latency: str  # mean latency as wrk prints it
    errors: str  # non-2xx answers and socket errors, empty when none
    requests: int


def wrk(
    script: Path,
    base_url: str,
    prefix: str,
    args: argparse.Namespace,
    seconds: int,
    cpus: set[int] | None,
    token: str | None = None,
) -> WrkRun:
    command = [
        "wrk",
        f"--threads={args.threads}",
        f"--connections={args.connections}",
        f"--duration={seconds}s",
        "--timeout=5s",
        f"--script={script}",
        base_url,
        "--",
        prefix,
        *([token] if token else []),
    ]
    output = subprocess.run(
        command, capture_output=True, text=True, check=True, preexec_fn=pinned(cpus)
    ).stdout
    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    count = re.search(r"(\d+) requests in", output)
    latency = re.search(r"Latency\s+(\S+)", output)
    if rate is None or latency is None or count is None:
        raise RuntimeError(f"cannot read wrk's output:\n{output}")
    errors = [line.strip() for line in output.splitlines() if "Non-2xx" in line or "errors" in line]
    return WrkRun(float(rate.group(1)), latency.group(1), "; ".join(errors), int(count.group(1)))


def check_same_answers(ours: str, bare: str, ids: list[str], token: str | None) -> None:
    headers = {"Authorization": f"Bearer {token}"} if token else None
    for variable_id in (ids[0], ids[len(ids) // 2], ids[-1]):
        path = quote(variable_id, safe="")
        ours_answer, bare_answer = get(ours + path, headers), get(bare + path)
        if ours_answer[0] != 200 or ours_answer != bare_answer:
            raise RuntimeError(f"the two servers answer {variable_id!r} differently")


def measure(
    args: argparse.Namespace, ids: list[str], data_dir: str
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Start both servers, then run wrk against each in turn. Returns req/s and server CPU µs
    per request, by target."""
    server_cpus, wrk_cpus = cpu_sets(args.pin)
    env = {k: v for k, v in os.environ.items() if k != "AMQP_URL" and not k.startswith("LATEST_")}
    env.update(REDIS_URL=args.redis_url, LATEST_HOST=HOST, LATEST_LOG_LEVEL=LOG_LEVEL)
    env.update(LATEST_DATA_DIR=data_dir, LATEST_ES_PORT="0")  # no Elasticsearch-compatible API
    token = None
    ours_env = {**env}
    if args.token:
        token, table = new_token("bench", ("read",))
        tokens = Path(data_dir) / "tokens.toml"
        tokens.write_text(table)
        ours_env["LATEST_TOKENS_FILE"] = str(tokens)
    ours_port, bare_port = free_port(), free_port()
    bare_command = [sys.executable, __file__, f"--bare-loop={args.bare_loop}"]
    bare_command += [f"--redis-url={args.redis_url}", f"--serve-bare={bare_port}"]
    targets = {
        "bare": (f"http://{HOST}:{bare_port}", "/bare/"),
        "ours": (f"http://{HOST}:{ours_port}", "/latest/"),
    }
    rates: dict[str, list[float]] = {name: [] for name in targets}
    costs: dict[str, list[float]] = {name: [] for name in targets}
    with (
        tempfile.NamedTemporaryFile("w", suffix=".lua") as lua,
        server(
            "latest-server serve",
            ours_command(),
            {**ours_env, "LATEST_PORT": str(ours_port)},
            f"{targets['ours'][0]}/healthz",
            preexec_fn=pinned(server_cpus),
        ) as ours_process,
        server(
            "the bare app",
            bare_command,
            env,
            "".join(targets["bare"]) + quote(ids[0], safe=""),
            preexec_fn=pinned(server_cpus),
        ) as bare_process,
    ):
        pids = {"ours": ours_process.pid, "bare": bare_process.pid}
        lua.write(WRK_SCRIPT % {"ids": ", ".join(f'"{quote(v, safe="")}"' for v in ids)})
        lua.flush()
        script = Path(lua.name)
        check_same_answers("".join(targets["ours"]), "".join(targets["bare"]), ids, token)
        if token:
            refused = get("".join(targets["ours"]) + quote(ids[0], safe=""))[0]
            if refused != 401:
                raise RuntimeError(f"ours answers {refused} without the token, not 401")
        print(
            f"wrk: {args.threads} threads, {args.connections} connections, {args.seconds} s per "
            f"run, {args.rounds} runs of each target, alternating, after a {WARMUP_SECONDS} s "
            f"warm-up; the bare app on the {args.bare_loop} event loop; "
            + ("ours with a bearer token; " if token else "")
            + (
                f"servers pinned to CPU {sorted(server_cpus)}, wrk to CPU {sorted(wrk_cpus or ())}"
                if server_cpus
                else "nothing pinned"
            )
        )
        tokens_of = {"ours": token, "bare": None}
        for name, (base, prefix) in targets.items():
            wrk(script, base, prefix, args, WARMUP_SECONDS, wrk_cpus, tokens_of[name])
        for round_ in range(1, args.rounds + 1):
            for name, (base, prefix) in targets.items():
                before = process_cpu(pids[name])
                run = wrk(script, base, prefix, args, args.seconds, wrk_cpus, tokens_of[name])
                cost = (process_cpu(pids[name]) - before) / max(run.requests, 1) * 1e6
                rates[name].append(run.requests_per_second)
                costs[name].append(cost)
                print(
                    f"  round {round_} {name}: {run.requests_per_second:,.0f} req/s, "
                    f"{cost:.0f} server CPU µs/request, "
                    f"mean latency {run.latency}{'; ' + run.errors if run.errors else ''}"
                )
                if run.errors:
                    raise RuntimeError(f"{name} answered with errors: {run.errors}")
    return rates, costs


async def flush(redis_url: str) -> None:
    redis = Redis.from_url(redis_url)
    await redis.flushdb()
    await redis.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variables", type=int, default=10_000)
    parser.add_argument("--redis-url", default=REDIS_URL, help="a database this run may flush")
    parser.add_argument("--seconds", type=int, default=10, help="per wrk run")
    parser.add_argument("--rounds", type=int, default=5, help="runs of each target")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument(
        "--bare-loop",
        choices=("asyncio", "uvloop"),
        default="uvloop",
        help="event loop of the bare app (ours runs on uvloop where it is installed)",
    )
    parser.add_argument(
        "--no-pin",
        dest="pin",
        action="store_false",
        help="leave the servers and wrk to the scheduler instead of pinning them to CPUs",
    )
    parser.add_argument(
        "--token",
        action="store_true",
        help="ours with a tokens file, every request with a bearer token (the cost of auth)",
    )
    parser.add_argument("--serve-bare", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_bare:
        serve_bare(args.redis_url, args.serve_bare, args.bare_loop)
        return
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install wrk")
    if args.variables < 1 or args.seconds < 1 or args.rounds < 1:
        parser.error("--variables, --seconds and --rounds must be positive")

    ids = variable_ids(args.variables)
    started = time.perf_counter()
    size = asyncio.run(fill(args.redis_url, ids))
    print(
        f"filled {len(ids)} variables through RedisLatestStore.write_batch "
        f"({size}-byte documents) in {time.perf_counter() - started:.1f} s"
    )
    try:
        with tempfile.TemporaryDirectory() as data_dir:
            rates, costs = measure(args, ids, data_dir)
    finally:
        asyncio.run(flush(args.redis_url))
    ours, bare = statistics.median(rates["ours"]), statistics.median(rates["bare"])
    ours_cost, bare_cost = statistics.median(costs["ours"]), statistics.median(costs["bare"])
    print(
        f"latest-server serve, GET /latest/{{id}} (median): {ours:,.0f} req/s, "
        f"{ours_cost:.0f} CPU µs/request"
    )
    print(
        f"bare Starlette + one HGET, GET /bare/{{id}} (median): {bare:,.0f} req/s, "
        f"{bare_cost:.0f} CPU µs/request"
    )
    print(f"CPU per request bare/ours: {bare_cost / ours_cost:.2f}")
    print(f"ratio ours/bare: {ours / bare:.2f}")


if __name__ == "__main__":
    main()
