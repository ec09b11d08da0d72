"""``latest-server serve|consume|offload|merge|reindex|doctor``: flags override the environment, the
Redis to use is chosen (REDIS_URL or the data directory's embedded Valkey), then the server runs
until stopped (runner.py), the job runs once (jobs.py) or the checks run (doctor.py)."""

from __future__ import annotations

import argparse
import atexit
import contextlib
import dataclasses
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from latest_server import __version__, datadir
from latest_server.auth.tokens import new_token
from latest_server.datadir import DataDirBusy, Owner
from latest_server.embedded import EmbeddedValkey
from latest_server.errors import LatestError
from latest_server.redact import redact
from latest_server.settings import Settings, describe

# The runner and the jobs (and through them latest_server.metrics) are imported by ``main``
# once LATEST_METRICS_DIR is exported: prometheus_client reads PROMETHEUS_MULTIPROC_DIR when
# the metrics are created (metrics.py). Nothing imported above creates any.

log = logging.getLogger("latest_server")


def flag_for(env: str) -> str:
    return "--" + env.removeprefix("LATEST_").lower().replace("_", "-")


def add_setting_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("settings (each overrides its environment variable)")
    for name, env, default, text in describe():
        switch = default in ("true", "false")  # a boolean: --insecure alone means true
        group.add_argument(
            flag_for(env),
            dest=name,
            default=argparse.SUPPRESS,
            metavar="VALUE",
            nargs="?" if switch else None,
            const="true" if switch else None,
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
    reindex = commands.add_parser(
        "reindex", help="rebuild the index of variables (GET /variables) from what Redis holds"
    )
    add_setting_flags(reindex)
    doctor = commands.add_parser(
        "doctor",
        help="check Redis, RabbitMQ, the object store, the tokens file and the bind address; "
        "exit 1 on any FAIL",
    )
    add_setting_flags(doctor)
    query_worker = commands.add_parser(
        "query-worker",
        help="run the parts of large aggregations that servers with LATEST_QUERY_REMOTE send "
        "over AMQP_URL (needs no Redis)",
    )
    add_setting_flags(query_worker)
    token = commands.add_parser(
        "token", help="make a new API token: prints it, and the table to add to LATEST_TOKENS_FILE"
    )
    token.add_argument("--name", dest="job_name", required=True, help="who uses it (logs, limits)")
    token.add_argument(
        "--scopes", dest="job_scopes", required=True, help="comma-separated: read, write, admin"
    )
    token.add_argument(
        "--prefix",
        dest="job_prefixes",
        action="append",
        default=[],
        metavar="PREFIX",
        help="variable-id prefix it is limited to (repeatable; none: every variable)",
    )
    token.add_argument(
        "--index",
        dest="job_indices",
        action="append",
        default=[],
        metavar="INDEX",
        help="Elasticsearch index it is limited to (repeatable; none: every index)",
    )
    return parser


def make_token(job_args: dict[str, Any]) -> int:
    """``latest-server token``: the secret on stdout's first line, then its [[tokens]] table."""
    scopes = tuple(s.strip() for s in job_args["job_scopes"].split(",") if s.strip())
    secret, table = new_token(
        job_args["job_name"],
        scopes,
        tuple(job_args["job_prefixes"]),
        tuple(job_args["job_indices"]),
    )
    print(secret)
    print("# add to LATEST_TOKENS_FILE (only the hash is kept; the token is shown once):")
    print(table, end="")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = vars(parser.parse_args(argv))
    command = args.pop("command", None) or "serve"
    job_args = {name: args.pop(name) for name in list(args) if name.startswith("job_")}
    if command == "token":
        try:
            return make_token(job_args)
        except LatestError as exc:
            parser.error(exc.message)
    try:
        settings = Settings.from_env().with_overrides(**args)
    except LatestError as exc:
        parser.error(exc.message)
    export_metrics_dir(command, settings)
    from latest_server.jobs import JOB_COMMANDS as JOBS
    from latest_server.runner import configure_logging, run, run_loop

    configure_logging(settings)
    try:
        if command == "consume" and not settings.amqp_url:
            raise LatestError("'consume' needs AMQP_URL (or --amqp-url)")
        if command == "query-worker":
            from latest_server.query_worker import serve  # only this command needs it

            run_loop(serve(settings))
            return 0
        with redis_for(command, settings) as (settings, embedded):
            if command == "doctor":
                from latest_server.doctor import doctor_command  # only this command needs it

                run_loop(doctor_command(settings))
            elif command in JOBS:
                run_loop(JOBS[command](settings, **job_args))
            else:
                run_loop(run(command, settings, embedded))
    except (LatestError, ConnectionError, OSError) as exc:
        message = exc.message if isinstance(exc, LatestError) else str(exc)
        print(f"latest-server: error: {redact(message)}", file=sys.stderr)
        return 1
    return 0


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


def export_metrics_dir(command: str, settings: Settings) -> None:
    """LATEST_METRICS_DIR as PROMETHEUS_MULTIPROC_DIR, before the metrics exist (the workers of
    ``serve --workers`` inherit it). Several workers and no directory: one of their own, so that
    the /metrics of whichever answers sums them all; removed at exit."""
    directory = settings.metrics_dir
    if not directory and command == "serve" and settings.workers > 1:
        if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
            return
        directory = tempfile.mkdtemp(prefix="latest-metrics-")
        atexit.register(shutil.rmtree, directory, ignore_errors=True)
    if directory:
        os.makedirs(directory, exist_ok=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory


def _http_address(command: str, settings: Settings) -> str | None:
    if command != "serve":
        return None
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    return f"http://{host}:{settings.port}"
