"""Offload: move history from Redis to transfer objects when Redis memory runs high.

One job at a time across all processes (``JobLock`` on ``lv:{offload}:lock``). For each variable,
largest first, until memory is below the target ratio:

1. ``RENAME lv:{k}:h → lv:{k}:h:x:<job>`` (and its index) in ``transfer.lua``: atomic; new writes
   start a fresh stream; readers find the job copy through ``lv:{k}:x``.
2. Read the job copy and write the transfer object
   ``history/<k>/transfer/<epoch>-<min_seq>-<max_seq>_<min_ts>_<max_ts>.parquet``, create-only.
   The name is a function of the content, so a retry lands on the same object.
3. Only then delete the job copy (``finish.lua``).

A job that dies leaves ``:x:`` copies behind; the next job, and every start-up, finds them with
SCAN and finishes steps 2–3 for them. Every step is idempotent, so finishing twice is harmless.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import KW_ONLY, dataclass, field
from typing import Any

from latest_server import keys
from latest_server.canonical import stored_digest
from latest_server.errors import StoreUnavailable
from latest_server.lock import JobLock, LockLost
from latest_server.redis_client import Client, Scripts, each_primary, redis_bounded, send_raw
from latest_server.redis_wire import is_cluster, node_name, slot_of
from latest_server.settings import Settings
from latest_server.stores import segments
from latest_server.stores.base import ObjectStore

log = logging.getLogger(__name__)

READ_CHUNK = 10_000
STARTUP_ATTEMPTS = 3
LAZYFREE_POLLS = 20  # reads of INFO memory while Redis frees what a job unlinked
LAZYFREE_POLL_SECONDS = 0.005


@dataclass
class JobReport:
    job: str = ""
    variables: int = 0
    entries: int = 0
    objects: list[str] = field(default_factory=list)
    recovered: int = 0


Progress = Callable[[int], None]


@dataclass(eq=False)
class Offloader:
    redis: Client
    scripts: Scripts
    objects: ObjectStore
    _: KW_ONLY
    ratio: float = 0.7
    target_ratio: float = 0.5
    max_bytes: int = 0
    lock_ttl: float = 30.0

    @classmethod
    def from_settings(
        cls, redis: Client, scripts: Scripts, objects: ObjectStore, settings: Settings
    ) -> Offloader:
        return cls(
            redis,
            scripts,
            objects,
            ratio=settings.offload_ratio,
            target_ratio=settings.offload_target_ratio,
            max_bytes=settings.offload_max_bytes,
            lock_ttl=settings.offload_lock_ttl,
        )

    @redis_bounded
    async def memory_ratio(self) -> float | None:
        """used_memory / maxmemory (or LATEST_OFFLOAD_MAX_BYTES); None when there is no limit.
        On a cluster, the fullest primary's: one full primary refuses its slots' writes."""
        ratios = await self.memory_ratios()
        return max(ratios.values()) if ratios else None

    async def memory_ratios(self) -> dict[str, float]:
        """``memory_ratio`` of every primary, by node name (``""`` for one Redis); empty when
        there is no limit.

        A moved variable's keys are freed by Redis' lazy-free thread after the UNLINK returns:
        until ``lazyfree_pending_objects`` is back to 0, used_memory still counts them, and a
        job reading it then would move one variable more than it needs (seen in CI)."""
        for _ in range(LAZYFREE_POLLS):
            infos = await each_primary(self.redis, "INFO", "memory")
            if not any(int(info.get("lazyfree_pending_objects", 0)) for info in infos.values()):
                break
            await asyncio.sleep(LAZYFREE_POLL_SECONDS)
        ratios = {}
        for node, info in infos.items():
            limit = int(info.get("maxmemory", 0)) or self.max_bytes
            if limit:
                ratios[node] = int(info["used_memory"]) / limit
        return ratios

    def lock(self) -> JobLock:
        return JobLock(
            self.redis, self.scripts, keys.OFFLOAD_LOCK, keys.OFFLOAD_FENCE, ttl=self.lock_ttl
        )

    @redis_bounded  # Redis refusing commands (read-only, ...) is StoreUnavailable, one line
    async def run_job(
        self, *, everything: bool = False, progress: Progress | None = None
    ) -> JobReport | None:
        """One offload job; None if another process holds the lock. ``everything`` moves every
        variable regardless of memory (``latest-server offload --all``)."""
        lock = self.lock()
        if not await lock.acquire():
            return None
        report = JobReport(job=f"o{lock.fence}")
        try:
            report.recovered = await self.recover(lock, report.job)
            ratios: dict[str, float] = {}
            if not everything:
                ratios = await self.memory_ratios()
                if not ratios or max(ratios.values()) <= self.ratio:
                    return report
            for moved, key in enumerate(await self.variables_by_size(ratios)):
                # INFO memory costs ~0.2 ms, far less than moving one variable: check each time.
                if not everything and moved:
                    ratios = await self.memory_ratios()
                    if not ratios or max(ratios.values()) < self.target_ratio:
                        break
                node = node_name(self.redis, keys.history(key))
                if not everything and ratios.get(node, 0.0) < self.target_ratio:
                    continue  # a cluster's primary with room (or no limit) keeps its history
                entries, name = await self.transfer(key, lock, report.job)
                if name:
                    report.variables += 1
                    report.entries += entries
                    report.objects.append(name)
                    if progress:
                        progress(entries)
            log.info(
                "offload job %s moved %d entries of %d variables",
                report.job,
                report.entries,
                report.variables,
            )
            return report
        finally:
            await lock.release()

    async def variables_by_size(self, ratios: dict[str, float] | None = None) -> list[str]:
        """Variable keys with live history, largest stream first; on a cluster, those of the
        fullest primary (by ``ratios``, per node name) before those of the next. The SCAN
        visits every primary."""
        names = [
            name async for name in self.redis.scan_iter(match=keys.HISTORY_PATTERN, count=1000)
        ]
        if not names:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for name in names:
            pipe.xlen(name)
        sizes = await pipe.execute()
        fullness = ratios or {}
        ranked = sorted(
            (
                (fullness.get(node_name(self.redis, _text(name)), 0.0), size, name)
                for size, name in zip(sizes, names, strict=True)
            ),
            reverse=True,
        )
        return [keys.key_of(_text(name)) for _, size, name in ranked if size]

    async def transfer(self, key: str, lock: JobLock, job: str) -> tuple[int, str | None]:
        """Move one variable's live history to a transfer object: (entries, object name)."""
        moved = await self.scripts.call(
            self.redis,
            "transfer",
            [
                keys.history(key),
                keys.history_index(key),
                keys.history_job(key, job),
                keys.history_index_job(key, job),
                keys.jobs(key),
                *await self._lock_keys(key, lock),
            ],
            [lock.token, job],
        )
        if moved == -1:
            raise LockLost(lock.name)
        if not moved:
            return 0, None
        return await self.flush(key, job, lock)

    async def flush(self, key: str, job: str, lock: JobLock) -> tuple[int, str | None]:
        """Write a job copy's transfer object, then delete the copy. Idempotent."""
        source = keys.history_job(key, job)
        ts: list[int] = []
        seqs: list[int] = []
        docs: list[bytes] = []
        start = "-"
        while True:
            chunk = await _xrange(self.redis, source, start, READ_CHUNK)
            seqs += [int(entry_id.partition(b"-")[0]) for entry_id, _fields in chunk]
            fields = [entry[1] for entry in chunk]
            if all(f[0] == b"t" and f[2] == b"d" for f in fields):  # as write.lua adds them
                ts += [int(f[1]) for f in fields]
                docs += [f[3] for f in fields]
            else:
                pairs = [dict(zip(f[::2], f[1::2], strict=True)) for f in fields]
                ts += [int(p[b"t"]) for p in pairs]
                docs += [p[b"d"] for p in pairs]
            if len(chunk) < READ_CHUNK:
                break
            start = f"({_text(chunk[-1][0])}"
        name = None
        if seqs:
            epoch = int(await self.redis.hget(keys.meta(key), "e") or 0)
            name = await asyncio.to_thread(self._write, key, epoch, ts, seqs, docs)
        lock.check()
        finished = await self.scripts.call(
            self.redis,
            "finish",
            [
                source,
                keys.history_index_job(key, job),
                keys.jobs(key),
                *await self._lock_keys(key, lock),
            ],
            [lock.token, job],
        )
        if finished == -1:
            raise LockLost(lock.name)
        return len(seqs), name

    async def _lock_keys(self, key: str, lock: JobLock) -> list[str]:
        """The lock as a KEY of a job's script on variable ``key``, which checks its token in
        the same atomic step. On a Redis Cluster a script's keys share a slot: the offload
        lock, in a slot of its own, is checked by a read just before instead (a merge's lock
        is in the variable's slot). Each step stays safe without the atomic check: a job only
        ever deletes its own copy once its object is durable, and objects are create-only."""
        if not is_cluster(self.redis) or slot_of(lock.name) == slot_of(keys.history(key)):
            return [lock.name]
        await lock.verify()
        return []

    def _write(
        self, key: str, epoch: int, ts: list[int], seqs: list[int], docs: list[bytes]
    ) -> str:
        table = segments.from_columns(ts, seqs, [stored_digest(d) for d in docs], docs)
        name = keys.transfer_object(key, epoch, min(seqs), max(seqs), min(ts), max(ts))
        data = segments.encode(table, {"epoch": str(epoch), "key": key})
        if not self.objects.put(name, data):
            log.info("transfer object %s already existed (a retried job)", name)
        return name

    async def recover(self, lock: JobLock, own_job: str = "") -> int:
        """Finish the job copies that dead jobs left behind. Returns how many."""
        done = 0
        async for name in self.redis.scan_iter(match=keys.JOB_HISTORY_PATTERN, count=1000):
            text = _text(name)
            job = keys.job_of(text)
            if job == own_job:
                continue
            await self.flush(keys.key_of(text), job, lock)
            done += 1
        if done:
            log.info("finished %d job copies left by earlier jobs", done)
        return done


class OffloadTrigger:
    """Called after every batch; at most every ``interval`` seconds it reads INFO memory and,
    past the ratio, starts an offload job in the background (one per process at a time)."""

    def __init__(self, offloader: Offloader, interval: float = 1.0) -> None:
        self.offloader = offloader
        self.interval = interval
        self.last_check = 0.0
        self.task: asyncio.Task[None] | None = None
        self.jobs_run = 0

    def poke(self) -> None:
        now = time.monotonic()
        if now - self.last_check < self.interval or (self.task and not self.task.done()):
            return
        self.last_check = now
        self.task = asyncio.create_task(self._check(), name="offload")

    def start(self) -> None:
        """At start-up: finish what dead jobs left in Redis, whatever the memory use. If a job
        (perhaps a dead one, until its lock expires) holds the lock, try again a few times."""
        self.last_check = time.monotonic()
        self.task = asyncio.create_task(self._startup(), name="offload start-up")

    async def _startup(self) -> None:
        for _attempt in range(STARTUP_ATTEMPTS):
            if await _logged("start-up offload job", self._run_job):
                return
            await asyncio.sleep(self.offloader.lock_ttl / 2)

    async def _check(self) -> None:
        await _logged("offload job", self._run_job_if_full)

    async def _run_job(self) -> bool:
        return await self.offloader.run_job() is not None

    async def _run_job_if_full(self) -> bool:
        ratio = await self.offloader.memory_ratio()
        if ratio is not None and ratio > self.offloader.ratio and await self._run_job():
            self.jobs_run += 1
        return True

    async def close(self, *, cancel: bool = False) -> None:
        if self.task is not None:
            if cancel:
                self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)


async def _xrange(redis: Client, stream: str, start: str, count: int) -> list[Any]:
    """XRANGE from ``start`` as Redis answers it, ``[[id, [field, value, ...]], ...]``: the
    reply callback of redis-py builds a dict per entry, which costs more than Redis reading it."""
    (reply,) = await send_raw(redis, [("XRANGE", stream, start, "+", "COUNT", count)])
    return reply  # type: ignore[no-any-return]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def _logged(job: str, run: Callable[[], Awaitable[bool]]) -> bool:
    """``run`` (an offload job), its failures logged, never raised: a failed job leaves job
    copies that the next job finishes, so ingesting goes on. False when it failed."""
    try:
        return await run()
    except LockLost:
        log.warning("%s stopped: it lost its lock", job)
    except StoreUnavailable as exc:
        log.warning("%s stopped, the next one will finish its work: %s", job, exc)
    except Exception:
        log.exception("%s failed; the next one will finish its work", job)
    return False
