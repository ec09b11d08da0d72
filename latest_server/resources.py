"""The open resources of a running process, shared by its edges (HTTP and AMQP)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from redis.exceptions import ResponseError

from latest_server.completion import SessionJobs
from latest_server.errors import ConfigError, LatestError, StoreUnavailable
from latest_server.ingestor import Ingestor
from latest_server.merge import Merger
from latest_server.offload import Offloader, OffloadTrigger
from latest_server.packets import PacketParser
from latest_server.redact import redact
from latest_server.redis_client import (
    REDIS_DOWN,
    Client,
    Scripts,
    check_server,
    connect,
    load_scripts,
)
from latest_server.sessions import EndHook, Session, SessionStore
from latest_server.settings import Settings
from latest_server.stores import open_latest_store, open_object_store
from latest_server.stores.aggregate import Aggregator
from latest_server.stores.base import LatestStore, ObjectStore
from latest_server.stores.history import HistoryStore
from latest_server.stores.variables import VariableIndex

log = logging.getLogger(__name__)


@dataclass
class Resources:
    settings: Settings
    redis: Client
    latest: LatestStore  # Redis, or Elasticsearch (LATEST_BACKEND)
    ingestor: Ingestor
    parser: PacketParser
    objects: ObjectStore
    history: HistoryStore
    offloader: Offloader
    merger: Merger
    trigger: OffloadTrigger
    scripts: Scripts  # every Lua script, loaded once, shared by the stores and jobs
    variables: VariableIndex  # the index of variables (GET /variables), kept by the ingestor
    # Extra readiness conditions, e.g. "consumer": lambda: consumer.connected.
    ready_checks: dict[str, Callable[[], bool]] = field(default_factory=dict)
    sessions: SessionStore | None = None
    session_jobs: SessionJobs | None = None  # completion detector + end-hook runner
    aggregates: Aggregator | None = None  # aggregations over every tier (stores/aggregate.py)
    # At start-up, the index rebuilt when its key is missing while variables exist.
    reindexing: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, settings: Settings, *, on_end: EndHook | None = None) -> Resources:
        """Connect to Redis (refusing an evicting one) and build the write path.

        ``on_end(session, variables)`` runs once a session ended or completed (at least once,
        in one process); by default it is the final offload + merge of the session's variables."""
        if not settings.redis_url:
            raise ValueError("Resources.open needs a REDIS_URL (the CLI starts the embedded one)")
        redis = connect(settings.redis_url)
        try:
            try:
                await check_server(redis)
                scripts = await load_scripts(redis)
            except (*REDIS_DOWN, ResponseError) as exc:  # NOAUTH, WRONGPASS among them
                raise unusable("Redis", "REDIS_URL", settings.redis_url, exc) from exc
            url = latest_url(settings)
            try:
                latest = await open_latest_store(
                    url, redis=redis, settings=settings, scripts=scripts
                )
            except Exception as exc:
                if settings.backend != "elasticsearch" or isinstance(exc, ConfigError):
                    raise
                # Unreachable, refused credentials, or an index it will not create.
                raise unusable("Elasticsearch", "ELASTICSEARCH_URL", url, exc) from exc
        except BaseException:
            await redis.aclose()
            raise
        objects = open_object_store(objects_url(settings), settings)
        offloader = Offloader.from_settings(redis, scripts, objects, settings)
        trigger = OffloadTrigger(offloader, settings.offload_check_interval)
        # At start-up, finish whatever a job that died left in Redis (then offload if needed).
        trigger.start()
        merger = Merger(offloader, lock_ttl=settings.offload_lock_ttl * 2)
        sessions = SessionStore(redis, scripts, completion_delay=settings.completion_delay)
        session_jobs = SessionJobs(sessions, settings, on_end or merge_on_end(merger))
        session_jobs.start()
        history = HistoryStore(redis, scripts, objects)
        variables = VariableIndex(redis, scripts)
        return cls(
            settings,
            redis,
            latest,
            Ingestor(latest, trigger, sessions=sessions, variables=variables),
            PacketParser(settings),
            objects,
            history,
            offloader,
            merger,
            trigger,
            scripts,
            variables,
            sessions=sessions,
            session_jobs=session_jobs,
            aggregates=Aggregator(history, objects_url(settings), settings),
            reindexing=asyncio.create_task(_ensure_index(variables)),
        )

    async def close(self) -> None:
        if self.reindexing is not None:
            self.reindexing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.reindexing
        if self.session_jobs is not None:
            await self.session_jobs.close()
        await self.trigger.close(cancel=True)
        if self.aggregates is not None:
            await self.aggregates.aclose()
        await self.latest.close()  # its own client (Elasticsearch), or the Redis one
        await self.redis.aclose()


async def _ensure_index(variables: VariableIndex) -> None:
    try:
        await variables.ensure()
    except StoreUnavailable as exc:  # the next start tries again; `latest-server reindex` too
        log.warning("the index of variables was not checked: %s", exc)


def unusable(service: str, setting: str, url: str, exc: Exception) -> StoreUnavailable:
    """A service that cannot be used at start-up, in one line naming it and its setting, with
    its URL's password masked: "cannot reach Redis at redis://:***@host:6379/0 (REDIS_URL): …"."""
    reason = exc.message if isinstance(exc, LatestError) else str(exc) or type(exc).__name__
    reason = reason.removeprefix(f"{service} is unavailable: ")
    verb = "cannot log in to" if _refused_login(exc) else "cannot reach"
    return StoreUnavailable(redact(f"{verb} {service} at {url} ({setting}): {reason}"))


def _refused_login(exc: Exception) -> bool:
    """Credentials refused: redis-py's AuthenticationError (NOAUTH, WRONGPASS), aio-pika's
    ProbableAuthenticationError, or an Elasticsearch ApiError with status 401/403."""
    status = getattr(getattr(exc, "meta", None), "status", None)
    return "Authentication" in type(exc).__name__ or status in (401, 403)


def merge_on_end(merger: Merger) -> EndHook:
    """The end of a session: move what is left of its variables in Redis and merge each."""

    async def on_end(session: Session, variables: list[str]) -> None:
        await merger.merge_variables(variables)

    return on_end


def latest_url(settings: Settings) -> str:
    """Where latest documents live: REDIS_URL, or ELASTICSEARCH_URL with LATEST_BACKEND."""
    if settings.backend == "elasticsearch":
        if not settings.elasticsearch_url:
            raise ConfigError("LATEST_BACKEND=elasticsearch needs ELASTICSEARCH_URL")
        return settings.elasticsearch_url
    return str(settings.redis_url)


def objects_url(settings: Settings) -> str:
    if settings.objects_url:
        return settings.objects_url
    return Path(settings.data_dir, "objects").resolve().as_uri()
