"""The server runner: ``latest-server serve|consume`` until SIGTERM/SIGINT, finishing the batch
in hand (arq's run/close lifecycle), the HTTP and Elasticsearch-compatible listeners on uvicorn,
the AMQP consumer, and the event loop they share."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import signal
import socket
from collections.abc import Callable, Coroutine, Iterator, Sequence
from typing import Any

import uvicorn
from aio_pika.exceptions import AMQPError
from starlette.applications import Starlette

from latest_server import logs, metrics
from latest_server.access import is_loopback
from latest_server.auth.authenticator import Authenticator
from latest_server.consumer import Consumer
from latest_server.embedded import EmbeddedValkey
from latest_server.errors import LatestError
from latest_server.resources import Resources, unusable
from latest_server.settings import Settings
from latest_server.web.app import create_app, create_es_app, http_options, server_options
from latest_server.web.limits import TokenBuckets
from latest_server.workers import WorkerPool, watch_parent

log = logging.getLogger("latest_server")

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


def bound_ports(settings: Settings, http: socket.socket, es: socket.socket | None) -> Settings:
    """The settings with the ports this process bound: a port 0 becomes the one it got, for
    the workers to bind the same."""
    return dataclasses.replace(
        settings,
        port=http.getsockname()[1],
        es_port=es.getsockname()[1] if es is not None else 0,
    )


def configure_logging(settings: Settings) -> None:
    """One line per record, passwords masked (redact.py), at LATEST_LOG_LEVEL; the AMQP
    client's chatter at warnings only."""
    handler = logs.handler(settings.log_format)  # text or JSON lines (logs.py)
    handler.addFilter(_retries_in_one_line)
    logging.basicConfig(level=settings.log_level.upper(), handlers=[handler])
    logging.getLogger("aio_pika").setLevel(max(logging.WARNING, logging.getLogger().level))
    logging.getLogger("aiormq").setLevel(max(logging.WARNING, logging.getLogger().level))


def _retries_in_one_line(record: logging.LogRecord) -> bool:
    """The Elasticsearch client logs each retried failure as a warning with its traceback (at
    start-up against an unreachable cluster, a screenful of them): one line each says it all."""
    if record.name.startswith("elastic_transport") and record.levelno < logging.ERROR:
        record.exc_info = None
        record.exc_text = None
    return True


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


def _config(
    app: Starlette, settings: Settings, port: int, options: Callable[[Settings], dict[str, Any]]
) -> uvicorn.Config:
    """One listener's uvicorn config: what both share (host, log level, no access log, the
    app's lifespan) and its own ``options`` (web/app.py)."""
    return uvicorn.Config(
        app,
        host=settings.host,
        port=port,
        log_level=settings.log_level,
        access_log=False,
        log_config=None,  # uvicorn's lines through our handler: LATEST_LOG_FORMAT, redact
        lifespan="on",
        **options(settings),
    )


def es_socket(settings: Settings) -> socket.socket | None:
    """The Elasticsearch-compatible API's socket on LATEST_ES_PORT (0: none). A port that is
    taken is logged and skipped: the main API keeps running."""
    if not settings.es_port:
        return None
    try:
        return bound(settings, settings.es_port)
    except OSError as exc:
        log.error(
            "Elasticsearch-compatible API is off: cannot listen on %s:%s (%s); "
            "set LATEST_ES_PORT to a free port, or 0",
            settings.host,
            settings.es_port,
            exc,
        )
        return None


def es_server(
    settings: Settings,
    resources: Resources,
    authenticator: Authenticator,
    buckets: TokenBuckets | None = None,
) -> _Server:
    config = _config(
        create_es_app(settings, resources=resources, authenticator=authenticator, buckets=buckets),
        settings,
        settings.es_port,
        http_options,
    )
    log.info("Elasticsearch-compatible API on %s:%s", settings.host, settings.es_port)
    return _Server(config)


def bound(settings: Settings, port: int) -> socket.socket:
    """A socket bound to LATEST_HOST:``port``, not yet listening: uvicorn listens once the app
    has started, so that nothing connects to a server that cannot answer yet, while a port
    that is taken is known before anything else is started."""
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if settings.workers > 1:  # every process of `serve --workers N` binds the port
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
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


def access_check(settings: Settings) -> Authenticator:
    """The authenticator of both listeners. Without tokens every request may do everything,
    so the server keeps to loopback unless LATEST_INSECURE says otherwise (logged every start)."""
    authenticator = Authenticator(settings)
    if authenticator.enabled:
        log.info("access: %s; SIGHUP rereads them", authenticator.describe())
        return authenticator
    if is_loopback(settings.host):
        log.info(
            "access: no tokens configured (LATEST_TOKENS_FILE, LATEST_JWT_PUBLIC_KEY_FILE, "
            "LATEST_JWKS_FILE): every request may do everything, so the server listens on "
            "loopback (%s) only",
            settings.host,
        )
        return authenticator
    if not settings.insecure:
        raise LatestError(
            f"refusing to serve {settings.host} without tokens: anyone who reaches it could "
            "write, delete and read everything. Configure LATEST_TOKENS_FILE or a JWT key, or "
            "listen on 127.0.0.1, or pass --insecure (LATEST_INSECURE=true) to accept that"
        )
    log.warning(
        "INSECURE: serving %s without tokens (LATEST_INSECURE): anyone who reaches the ports "
        "may write, delete and read everything",
        settings.host,
    )
    return authenticator


def serve_worker(settings: Settings, index: int, parent: int) -> None:
    """A worker process of ``serve --workers N`` (workers.py), in a fresh interpreter."""
    configure_logging(settings)
    try:
        run_loop(run("serve", settings, worker=index, parent=parent))
    except (LatestError, OSError) as exc:
        log.error("worker %d: %s", index, exc.message if isinstance(exc, LatestError) else exc)
        raise SystemExit(1) from None


async def run(
    command: str,
    settings: Settings,
    embedded: EmbeddedValkey | None = None,
    *,
    worker: int = 0,
    parent: int = 0,
) -> None:
    """Serve until SIGTERM/SIGINT. ``worker``: 0 in the process started, which starts the other
    LATEST_WORKERS - 1 of ``serve`` (workers.py); their index in them, and ``parent`` the pid
    of the process that started them."""
    metrics.check(settings.metrics_dir)
    authenticator = access_check(settings) if command == "serve" else None
    http = http_socket(settings) if command == "serve" else None
    es_sock = es_socket(settings) if http is not None else None
    try:
        resources = await Resources.open(settings)
    except BaseException:
        for sock in (http, es_sock):
            if sock is not None:
                sock.close()
        raise
    pool: WorkerPool | None = None
    background: list[asyncio.Task[None]] = []
    stopping = asyncio.Event()
    if http is not None and worker == 0 and settings.workers > 1:
        pool = WorkerPool(bound_ports(settings, http, es_sock), settings.workers - 1, serve_worker)
        pool.start()
        background.append(asyncio.create_task(pool.supervise(), name="workers"))
    elif worker:
        background.append(asyncio.create_task(watch_parent(parent, stopping.set)))
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
        if http is not None and authenticator is not None:
            buckets = TokenBuckets.of(settings)  # one rate per client, on both listeners
            app = create_app(
                settings, resources=resources, authenticator=authenticator, buckets=buckets
            )
            config = _config(app, settings, settings.port, server_options)
            server = _Server(config)

            async def stop_server() -> None:
                server.should_exit = True

            tasks.append(asyncio.create_task(server.serve(sockets=[http]), name="http"))
            stops.append(stop_server)
            servers.append(server)
            if es_sock is not None:
                es = es_server(settings, resources, authenticator, buckets)

                async def stop_es() -> None:
                    es.should_exit = True

                tasks.append(asyncio.create_task(es.serve(sockets=[es_sock]), name="es"))
                stops.append(stop_es)
                servers.append(es)

        freezer = asyncio.create_task(_freeze_after_start(servers), name="gc-freeze")
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopping.set)
        if authenticator is not None and authenticator.enabled:
            loop.add_signal_handler(signal.SIGHUP, authenticator.reload)
        waiter = asyncio.create_task(stopping.wait())
        await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
        log.info("stopping")
        if pool is not None:
            await pool.stop()  # the workers first: they use this process' Valkey
        for stop in stops:
            await stop()
        waiter.cancel()
        freezer.cancel()
        for task in tasks:
            await task  # the consumer finishes the batch in hand; errors surface here
    finally:
        metrics.process_exit()
        for task in background:
            task.cancel()
        if pool is not None and not pool.stopping:
            await pool.stop()
        if supervisor is not None:
            supervisor.cancel()
        if consumer is not None:
            await consumer.close()
        await resources.close()
