"""``latest-server serve|consume``: flags override the environment, then the process runs until
SIGTERM/SIGINT, finishing the batch in hand (arq's run/close lifecycle)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import gc
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Coroutine, Iterator, Sequence
from pathlib import Path
from typing import Any

import uvicorn
from aio_pika.exceptions import AMQPError
from tqdm import tqdm

from latest_server import __version__, datadir
from latest_server.consumer import Consumer
from latest_server.datadir import DataDirBusy, Owner
from latest_server.embedded import EmbeddedValkey
from latest_server.errors import LatestError
from latest_server.keys import key_for
from latest_server.redact import RedactingFormatter, redact
from latest_server.redis_client import redis_bounded
from latest_server.resources import Resources, unusable
from latest_server.settings import Settings, describe
from latest_server.web.app import create_app, create_es_app, http_options, server_options

log = logging.getLogger("latest_server")


def flag_for(env: str) -> str:
    return "--" + env.removeprefix("LATEST_").lower().replace("_", "-")


def add_setting_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("settings (each overrides its environment variable)")
    for name, env, default, text in describe():
        group.add_argument(
            flag_for(env),
            dest=name,
            default=argparse.SUPPRESS,
            metavar="VALUE",
            help=f"{text} [env {env}; default {default or 'unset'}]",
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="latest-server",
        description="Keep the latest value and the full history of time-stamped data per variable.",
    )
    parser.add_argument("--version", action="version", version=f"latest-server {__version__}")
    add_setting_flags(parser)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = commands.add_parser(
        "serve", help="HTTP API, plus the AMQP consumer when AMQP_URL is set (the default command)"
    )
    add_setting_flags(serve)
    consume = commands.add_parser("consume", help="the AMQP consumer alone")
    add_setting_flags(consume)
    offload = commands.add_parser(
        "offload", help="run one offload job now (Redis history → transfer objects)"
    )
    offload.add_argument(
        "--all",
        dest="job_all",
        action="store_true",
        help="move every variable's history, whatever Redis' memory use",
    )
    add_setting_flags(offload)
    merge = commands.add_parser(
        "merge", help="merge variables' transfer objects (and what is left in Redis) into one"
    )
    which = merge.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--variable", dest="job_variables", action="append", metavar="ID", help="repeatable"
    )
    which.add_argument("--all", dest="job_all", action="store_true", help="every variable")
    which.add_argument(
        "--session", dest="job_session", metavar="ID", help="the variables of a session"
    )
    add_setting_flags(merge)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = vars(parser.parse_args(argv))
    command = args.pop("command", None) or "serve"
    job_args = {name: args.pop(name) for name in list(args) if name.startswith("job_")}
    try:
        settings = Settings.from_env().with_overrides(**args)
    except LatestError as exc:
        parser.error(exc.message)
    handler = logging.StreamHandler()
    handler.setFormatter(RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(_retries_in_one_line)
    logging.basicConfig(level=settings.log_level.upper(), handlers=[handler])
    logging.getLogger("aio_pika").setLevel(max(logging.WARNING, logging.getLogger().level))
    logging.getLogger("aiormq").setLevel(max(logging.WARNING, logging.getLogger().level))
    try:
        if command == "consume" and not settings.amqp_url:
            raise LatestError("'consume' needs AMQP_URL (or --amqp-url)")
        with redis_for(command, settings) as (settings, embedded):
            if command in JOB_COMMANDS:
                run_loop(JOB_COMMANDS[command](settings, **job_args))
            else:
                run_loop(run(command, settings, embedded))
    except (LatestError, ConnectionError, OSError) as exc:
        message = exc.message if isinstance(exc, LatestError) else str(exc)
        print(f"latest-server: error: {redact(message)}", file=sys.stderr)
        return 1
    return 0


def _retries_in_one_line(record: logging.LogRecord) -> bool:
    """The Elasticsearch client logs each retried failure as a warning with its traceback (at
    start-up against an unreachable cluster, a screenful of them): one line each says it all."""
    if record.name.startswith("elastic_transport") and record.levelno < logging.ERROR:
        record.exc_info = None
        record.exc_text = None
    return True


SERVERS = ("serve", "consume")  # run until stopped; every other command is a job


@contextlib.contextmanager
def redis_for(command: str, settings: Settings) -> Iterator[tuple[Settings, EmbeddedValkey | None]]:
    """The Redis a command uses, for every command alike: REDIS_URL, or else the data
    directory's embedded Valkey (see datadir.py). A server owns the directory and runs the
    Valkey; a job uses the Valkey of the server that owns the directory, through its socket, or
    owns the directory itself, with a Valkey of its own, when no server runs. Yields the
    settings with REDIS_URL set, and the Valkey this process runs, if any."""
    if settings.redis_url:
        yield settings, None
        return
    data_dir = Path(settings.data_dir)
    try:
        ownership = datadir.claim(data_dir)
    except DataDirBusy as busy:
        owner = busy.owner
        if command in SERVERS or owner is None or not owner.serves:
            raise
        log.info("REDIS_URL is not set: using the embedded Valkey of %s", owner.describe())
        yield dataclasses.replace(settings, redis_url=owner.redis_url), None
        return
    try:
        pid = os.getpid()
        record = Owner(pid, datadir.started_at(pid), command, "", _http_address(command, settings))

        def spawned(valkey_pid: int) -> None:  # the record names each Valkey it starts
            started = datadir.started_at(valkey_pid)
            ownership.record(
                dataclasses.replace(record, valkey_pid=valkey_pid, valkey_started=started)
            )

        embedded = EmbeddedValkey(data_dir, lock_fd=ownership.fd, on_spawn=spawned)
        record = dataclasses.replace(record, socket=embedded.socket)
        ownership.record(record)
        try:
            embedded.start()
            log.info(
                "REDIS_URL is not set: using an embedded Valkey server at %s (data in %s)",
                embedded.url,
                embedded.data_dir,
            )
            yield dataclasses.replace(settings, redis_url=embedded.url), embedded
        finally:
            embedded.stop()
    finally:
        ownership.release()


def _http_address(command: str, settings: Settings) -> str | None:
    if command != "serve":
        return None
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    return f"http://{host}:{settings.port}"


@redis_bounded  # Redis lost mid-job: one line, and the next job finishes this one's work
async def offload_command(settings: Settings, job_all: bool = False) -> None:
    resources = await Resources.open(settings)
    try:
        await resources.trigger.close()  # the start-up recovery job, if it is running
        with tqdm(desc="offload", unit=" entries", file=sys.stderr) as bar:
            report = await resources.offloader.run_job(everything=job_all, progress=bar.update)
        if report is None:
            raise LatestError("another offload job holds the lock; try again when it is done")
        print(
            f"offload job {report.job}: moved {report.entries} entries of {report.variables} "
            f"variables into {len(report.objects)} objects; finished {report.recovered} "
            "copies left by earlier jobs"
        )
    finally:
        await resources.close()


MERGE_RETRY_INTERVAL = 0.5  # seconds between tries of a variable another process is merging


@redis_bounded
async def merge_command(
    settings: Settings,
    job_all: bool = False,
    job_variables: list[str] | None = None,
    job_session: str | None = None,
) -> None:
    resources = await Resources.open(settings)
    try:
        await resources.trigger.close()
        merger = resources.merger
        if job_session is not None:
            assert resources.sessions is not None
            if await resources.sessions.get(job_session) is None:
                raise LatestError(f"no session {job_session!r}")
            job_variables = await resources.sessions.variables(job_session)
        targets = await merger.all_keys() if job_all else [key_for(v) for v in job_variables or []]
        total = 0
        trying = tqdm(targets, desc="merge", unit=" variables", file=sys.stderr)
        # A variable another process was merging (a session's end hook, say) is tried again
        # until that merge is done, or for as long (after the first pass) as a dead merger's
        # lock can outlive it.
        deadline = None
        while True:
            busy = []
            for key in trying:
                report = await merger.merge_key(key)
                total += report.entries
                if report.busy:
                    busy.append(key)
            deadline = deadline or time.monotonic() + merger.lock_ttl
            if not busy or time.monotonic() >= deadline:
                break
            await asyncio.sleep(MERGE_RETRY_INTERVAL)
            trying = busy
        print(f"merged {len(targets) - len(busy)} variables ({total} entries rewritten)")
        if busy:
            raise LatestError(
                f"{len(busy)} variables were still being merged elsewhere after "
                f"{merger.lock_ttl:g} s: {busy[:5]}"
            )
    finally:
        await resources.close()


# Collect the young generation every 20 000 net allocations instead of 700: a server allocates
# fast (frames, requests), and each collection also pays towards a full one, which on a busy
# websocket fan-out (6 000 tasks) paused the loop for 30-70 ms (bench/ws_fanout.py).
GC_THRESHOLDS = (20_000, 10, 10)


async def _freeze_after_start(servers: Sequence[_Server]) -> None:
    """Move what start-up allocated (modules, the app, clients: some 70 000 objects) out of the
    cyclic garbage collector's sight once every listener is up. They live as long as the process,
    and without this every full collection walks them again: measured, a fifth of the CPU time of
    ``GET /latest`` (bench/latest_http.py). Objects made later are collected as usual."""
    for server in servers:
        await server.up.wait()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    log.debug("%d start-up objects frozen out of the garbage collector", gc.get_freeze_count())


JOB_COMMANDS: dict[str, Any] = {"offload": offload_command, "merge": merge_command}


def run_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run ``main`` on uvloop where it is installed (it comes with uvicorn[standard]): the
    AMQP and Redis clients spend much of their time in the event loop."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main)


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: ``run`` owns SIGTERM/SIGINT for every edge.
    ``up`` is set once it listens."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.up = asyncio.Event()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            self.up.set()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def es_server(settings: Settings, resources: Resources) -> tuple[_Server, socket.socket] | None:
    """The Elasticsearch-compatible API's listener on LATEST_ES_PORT (0: none). A port that is
    taken is logged and skipped: the main API keeps running."""
    if not settings.es_port:
        return None
    try:
        sock = bound(settings, settings.es_port)
    except OSError as exc:
        log.error(
            "Elasticsearch-compatible API is off: cannot listen on %s:%s (%s); "
            "set LATEST_ES_PORT to a free port, or 0",
            settings.host,
            settings.es_port,
            exc,
        )
        return None
    config = uvicorn.Config(
        create_es_app(settings, resources=resources),
        host=settings.host,
        port=settings.es_port,
        log_level=settings.log_level,
        access_log=False,
        lifespan="on",
        **http_options(settings),
    )
    log.info("Elasticsearch-compatible API on %s:%s", settings.host, settings.es_port)
    return _Server(config), sock


def bound(settings: Settings, port: int) -> socket.socket:
    """A socket bound to LATEST_HOST:``port``, not yet listening: uvicorn listens once the app
    has started, so that nothing connects to a server that cannot answer yet, while a port
    that is taken is known before anything else is started."""
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((settings.host, port))
    except BaseException:
        sock.close()
        raise
    return sock


def http_socket(settings: Settings) -> socket.socket:
    try:
        return bound(settings, settings.port)
    except OSError as exc:
        raise LatestError(
            f"cannot listen on {settings.host}:{settings.port} for the HTTP API "
            f"({exc.strerror or exc}); set LATEST_PORT to a free port"
        ) from exc


async def run(command: str, settings: Settings, embedded: EmbeddedValkey | None = None) -> None:
    http = http_socket(settings) if command == "serve" else None
    try:
        resources = await Resources.open(settings)
    except BaseException:
        if http is not None:
            http.close()
        raise
    tasks: list[asyncio.Task[Any]] = []
    stops: list[Any] = []
    consumer: Consumer | None = None
    servers: list[_Server] = []
    supervisor: asyncio.Task[None] | None = None
    if embedded is not None:
        # Restarts it if it dies; meanwhile /readyz answers 503.
        supervisor = asyncio.create_task(embedded.supervise(), name="valkey-supervisor")
        resources.ready_checks["embedded_valkey"] = lambda: embedded.up
    try:
        if settings.amqp_url:
            consumer = Consumer(settings, resources.ingestor)
            try:
                await consumer.start()
            except (AMQPError, OSError) as exc:
                raise unusable("RabbitMQ", "AMQP_URL", settings.amqp_url, exc) from exc
            resources.ready_checks["consumer"] = lambda: consumer is not None and consumer.connected
            tasks.append(asyncio.create_task(consumer.run(), name="consumer"))
            stops.append(consumer.stop)
        if http is not None:
            config = uvicorn.Config(
                create_app(settings, resources=resources),
                host=settings.host,
                port=settings.port,
                log_level=settings.log_level,
                access_log=False,
                lifespan="on",
                **server_options(settings),
            )
            server = _Server(config)

            async def stop_server() -> None:
                server.should_exit = True

            tasks.append(asyncio.create_task(server.serve(sockets=[http]), name="http"))
            stops.append(stop_server)
            servers.append(server)
            es_listener = es_server(settings, resources)
            if es_listener is not None:
                es, sock = es_listener

                async def stop_es() -> None:
                    es.should_exit = True

                tasks.append(asyncio.create_task(es.serve(sockets=[sock]), name="es"))
                stops.append(stop_es)
                servers.append(es)

        freezer = asyncio.create_task(_freeze_after_start(servers), name="gc-freeze")
        loop = asyncio.get_running_loop()
        stopping = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopping.set)
        waiter = asyncio.create_task(stopping.wait())
        await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
        log.info("stopping")
        for stop in stops:
            await stop()
        waiter.cancel()
        freezer.cancel()
        for task in tasks:
            await task  # the consumer finishes the batch in hand; errors surface here
    finally:
        if supervisor is not None:
            supervisor.cancel()
        if consumer is not None:
            await consumer.close()
        await resources.close()
