"""Offload and merge on the real Redis, with objects on file:// and on S3 (moto over HTTP)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis

from latest_server import keys
from latest_server.errors import StoreUnavailable
from latest_server.lock import LockLost
from latest_server.resources import Resources
from latest_server.settings import Settings
from latest_server.stores.segments import Window
from tests.conftest import S3_BUCKET, Churn, packet, unique

EVERYTHING = Window(-(2**62), 2**62)


async def seqs(stores: Resources, variable: str, window: Window = EVERYTHING) -> list[int]:
    page = await stores.history.read(keys.key_for(variable), window)
    return page.entries.column("seq").to_pylist()  # type: ignore[no-any-return]


@pytest.mark.redis_both
async def test_offload_moves_history_to_transfer_objects_and_reads_see_it_all(
    stores: Resources, redis: Redis
) -> None:
    await stores.ingestor.write_batch([packet("a", n) for n in range(300)] + [packet("b", 1)])
    report = await stores.offloader.run_job(everything=True)
    assert report is not None
    assert (report.variables, report.entries) == (2, 301)
    k = keys.key_for("a")
    assert not await redis.exists(keys.history(k), keys.history_index(k))
    [name] = [o.name for o in stores.objects.list(keys.transfer_prefix(k))]
    assert keys.parse_object(name)[2:4] == (1, 300)
    assert await seqs(stores, "a") == list(range(1, 301))
    # new writes carry on with the next seq, in Redis, and reads join both tiers
    await stores.ingestor.write_batch([packet("a", 1000), packet("a", 150, late=True)])
    assert await seqs(stores, "a") == [*range(1, 152), 302, *range(152, 301), 301]


@pytest.mark.redis_both
async def test_memory_threshold_moves_the_largest_variables_first(
    stores: Resources, redis: Redis
) -> None:
    await stores.ingestor.write_batch(
        [packet("big", n, pad="x" * 500) for n in range(3000)] + [packet("small", 1)]
    )
    used = int((await redis.info("memory"))["used_memory"])
    k = keys.key_for("big")
    big = int(await redis.memory_usage(keys.history(k))) + int(
        await redis.memory_usage(keys.history_index(k))
    )
    stores.offloader.max_bytes = int(used / 0.8)  # 80 % used: above the 0.7 ratio
    # moving "big" alone brings memory under the target; "small" must stay
    stores.offloader.target_ratio = (used - big / 2) / stores.offloader.max_bytes
    report = await stores.offloader.run_job()
    assert report is not None
    assert report.objects and keys.key_for("big") in report.objects[0]
    assert await redis.exists(keys.history(keys.key_for("small")))
    stores.offloader.max_bytes = used * 100  # plenty of room: nothing to do
    report = await stores.offloader.run_job()
    assert report is not None
    assert report.variables == 0


async def test_trigger_after_writes_starts_a_job(stores: Resources, redis: Redis) -> None:
    stores.offloader.max_bytes = 1  # always over the ratio
    stores.trigger.interval = 0.0
    await stores.ingestor.write_batch([packet("a", n) for n in range(10)])
    await stores.trigger.close()
    assert stores.trigger.jobs_run == 1
    assert not await redis.exists(keys.history(keys.key_for("a")))
    assert await seqs(stores, "a") == list(range(1, 11))


async def test_one_job_at_a_time(stores: Resources, settings: Settings, objects_url: str) -> None:
    await stores.ingestor.write_batch([packet(f"v{i}", n) for i in range(50) for n in range(20)])
    other = await Resources.open(dataclasses.replace(settings, objects_url=objects_url))
    await other.trigger.close()
    try:
        reports = await asyncio.gather(
            stores.offloader.run_job(everything=True), other.offloader.run_job(everything=True)
        )
    finally:
        await other.close()
    assert sorted(r is None for r in reports) == [False, True]
    done = next(r for r in reports if r is not None)
    assert done.variables == 50


async def test_a_job_that_lost_its_lock_stops(stores: Resources, redis: Redis) -> None:
    await stores.ingestor.write_batch([packet("a", 1)])
    lock = stores.offloader.lock()
    assert await lock.acquire()
    await redis.set(keys.OFFLOAD_LOCK, "someone-else")
    with pytest.raises(LockLost):
        await stores.offloader.transfer(keys.key_for("a"), lock, "o-test")
    assert await redis.exists(keys.history(keys.key_for("a")))  # nothing moved
    await lock.release()
    assert await redis.get(keys.OFFLOAD_LOCK) == b"someone-else"  # not ours to delete


async def test_heartbeat_keeps_the_lock_past_its_ttl(stores: Resources, redis: Redis) -> None:
    stores.offloader.lock_ttl = 0.3
    lock = stores.offloader.lock()
    assert await lock.acquire()
    await asyncio.sleep(1.0)
    assert await redis.get(keys.OFFLOAD_LOCK) == lock.token.encode()
    assert not lock.lost.is_set()
    first_fence = lock.fence
    await lock.release()
    assert not await redis.exists(keys.OFFLOAD_LOCK)
    again = stores.offloader.lock()
    assert await again.acquire()
    assert again.fence == first_fence + 1
    await again.release()


# --- crashes: a real process killed with SIGKILL at each dangerous point ---

CRASH = textwrap.dedent(
    """
    import asyncio, dataclasses, os, signal, sys
    from latest_server import keys
    from latest_server.resources import Resources
    from latest_server.settings import Settings

    async def main(point):
        settings = Settings.from_env()
        stores = await Resources.open(settings)
        await stores.trigger.close()
        offloader = stores.offloader
        lock = offloader.lock()
        assert await lock.acquire()
        key = keys.key_for("a")
        if point == "after-rename":
            calls = offloader.scripts.call
            async def rename_then_die(redis, name, k, a):
                result = await calls(redis, name, k, a)
                if name == "transfer":
                    os.kill(os.getpid(), signal.SIGKILL)
                return result
            offloader.scripts = dataclasses.replace(offloader.scripts)
            object.__setattr__(offloader.scripts, "call", rename_then_die)
        else:
            calls = offloader.scripts.call
            async def die_before_delete(redis, name, k, a):
                if name == "finish":
                    os.kill(os.getpid(), signal.SIGKILL)
                return await calls(redis, name, k, a)
            offloader.scripts = dataclasses.replace(offloader.scripts)
            object.__setattr__(offloader.scripts, "call", die_before_delete)
        await offloader.transfer(key, lock, "o999")

    asyncio.run(main(sys.argv[1]))
    """
)


@pytest.mark.parametrize("point", ["after-rename", "after-object-written"])
async def test_a_killed_job_is_finished_by_the_next_one(
    stores: Resources, settings: Settings, objects_url: str, redis: Redis, point: str
) -> None:
    await stores.ingestor.write_batch([packet("a", n) for n in range(200)])
    env = {
        **os.environ,
        "REDIS_URL": settings.redis_url or "",
        "OBJECTS_URL": objects_url,
        "LATEST_OFFLOAD_LOCK_TTL": "1",
    }
    crashed = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-c", CRASH, point], env=env, timeout=60
    )
    assert crashed.returncode == -signal.SIGKILL
    k = keys.key_for("a")
    assert await redis.exists(keys.history_job(k, "o999"))
    written = stores.objects.list(keys.transfer_prefix(k))
    assert len(written) == (1 if point == "after-object-written" else 0)
    # reads during the outage see everything, exactly once
    await stores.ingestor.write_batch([packet("a", 500)])
    assert await seqs(stores, "a") == list(range(1, 202))

    await asyncio.sleep(1.2)  # the dead job's lock expires
    if point == "after-rename":
        # a process starting up finishes what the dead job left
        restarted = await Resources.open(dataclasses.replace(settings, objects_url=objects_url))
        await restarted.trigger.close()
        await restarted.close()
    else:
        report = await stores.offloader.run_job(everything=True)
        assert report is not None
        assert report.recovered == 1
    assert not await redis.exists(keys.history_job(k, "o999"))
    assert await redis.scard(keys.jobs(k)) == 0
    assert await seqs(stores, "a") == list(range(1, 202))
    merged = await stores.merger.merge_variable("a")
    assert merged.entries == 201
    assert await seqs(stores, "a") == list(range(1, 202))
    assert [o.name for o in stores.objects.list(keys.history_prefix(k))] == [merged.merged]


async def test_a_job_facing_a_silent_s3_gives_its_lock_up_and_the_next_one_finishes(
    settings: Settings, redis: Redis, silent_s3: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """S3 takes connections and never answers: the job stops with StoreUnavailable after
    LATEST_S3_ATTEMPTS tries of LATEST_S3_TIMEOUT rather than botocore's minutes, and gives the
    offload lock up at once, leaving what it moved in Redis as a job copy. Once S3 answers again,
    a process starting up finishes that copy: every entry in one transfer object."""
    url = f"s3://{S3_BUCKET}/{unique('silent')}"
    stalled = await Resources.open(
        dataclasses.replace(settings, objects_url=url, s3_timeout=0.5, s3_attempts=2)
    )
    try:
        await stalled.trigger.close()
        await stalled.ingestor.write_batch([packet("a", n) for n in range(10)])
        with pytest.raises(StoreUnavailable, match=f"the object store {url} is unavailable"):
            await asyncio.wait_for(stalled.offloader.run_job(everything=True), 20)
    finally:
        await stalled.close()
    k = keys.key_for("a")
    assert not await redis.exists(keys.OFFLOAD_LOCK)
    [copy] = await redis.keys(keys.JOB_HISTORY_PATTERN)
    assert await redis.xlen(copy) == 10

    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", silent_s3)  # S3 answers again
    restarted = await Resources.open(dataclasses.replace(settings, objects_url=url))
    try:
        await restarted.trigger.close()  # its start-up job finishes the copy
        assert not await redis.exists(copy)
        assert len(restarted.objects.list(keys.transfer_prefix(k))) == 1
        assert await seqs(restarted, "a") == list(range(1, 11))
    finally:
        await restarted.close()


# --- merge ---


@pytest.mark.redis_both
async def test_merge_compacts_every_tier_into_one_object(stores: Resources, redis: Redis) -> None:
    for chunk in range(3):
        await stores.ingestor.write_batch([packet("a", chunk * 100 + n) for n in range(100)])
        await stores.offloader.run_job(everything=True)
    await stores.ingestor.write_batch([packet("a", 1000 + n) for n in range(10)])  # still in Redis
    k = keys.key_for("a")
    assert len(stores.objects.list(keys.transfer_prefix(k))) == 3
    report = await stores.merger.merge_variable("a")
    assert (report.entries, report.inputs) == (310, 4)
    assert not await redis.exists(keys.history(k))
    assert stores.objects.list(keys.transfer_prefix(k)) == []
    [merged] = stores.objects.list(keys.merged_prefix(k))
    assert keys.parse_object(merged.name)[:4] == ("merged", 1, 1, 310)
    assert await seqs(stores, "a") == list(range(1, 311))
    # a second merge with new data makes generation 2 and removes generation 1
    await stores.ingestor.write_batch([packet("a", 2000)])
    report = await stores.merger.merge_variable("a")
    [merged] = stores.objects.list(keys.merged_prefix(k))
    assert keys.parse_object(merged.name)[:2] == ("merged", 2)
    assert await seqs(stores, "a") == list(range(1, 312))
    assert await stores.merger.all_keys() == [k]


@pytest.mark.redis_both
async def test_redelivery_after_offload_is_removed_by_reads_and_merge(
    stores: Resources, redis: Redis
) -> None:
    first = [packet("a", n) for n in range(5)]
    await stores.ingestor.write_batch(first)
    await stores.offloader.run_job(everything=True)
    # the same packets again (a redelivery after their first copy left Redis) get new seqs
    outcomes = await stores.ingestor.write_batch(first[:2])
    assert [o.seq for o in outcomes.outcomes] == [6, 7]
    page = await stores.history.read(keys.key_for("a"), EVERYTHING)
    assert page.entries.column("seq").to_pylist() == [1, 2, 3, 4, 5]
    await stores.merger.merge_variable("a")
    docs = [
        orjson.loads(d)
        for d in (await stores.history.read(keys.key_for("a"), EVERYTHING))
        .entries.column("doc")
        .to_pylist()
    ]
    assert [d["n"] for d in docs] == [0, 1, 2, 3, 4]


# --- everything at once ---


@pytest.mark.redis_both
async def test_writes_offloads_merges_and_reads_concurrently_lose_and_double_nothing(
    stores: Resources,
) -> None:
    """A writer never pauses while offload jobs run back to back (a tiny memory budget) and
    merges run now and then; readers at random moments must see every entry that was committed
    before their read started, each once. At the end one merge per variable holds exactly what
    was written."""
    import random

    variables = [f"c{i}" for i in range(4)]
    committed: dict[str, set[int]] = {v: set() for v in variables}
    written: dict[str, list[bytes]] = {v: [] for v in variables}
    stores.offloader.max_bytes = 1  # always "over the limit"
    done = asyncio.Event()
    rng = random.Random(7)
    reads = 0
    churn = Churn(stores, variables, rng, done)

    async def writer() -> None:
        # At least 60 batches, and on until the other tasks have had their turns (a slow
        # machine may need longer); bounded so that a broken offload or merge fails the test.
        n = 0
        for round_ in range(600):
            if round_ >= 60 and churn.moved_variables > 3 and churn.merged > 1 and reads > 5:
                break
            batch = [packet(v, n + i, v=v) for i in range(25) for v in variables]
            n += 25
            result = await stores.ingestor.write_batch(batch)
            for p, outcome in zip(batch, result.outcomes, strict=True):
                assert outcome.seq > 0
                committed[p.variable_id].add(outcome.seq)
                written[p.variable_id].append(p.raw)
            await asyncio.sleep(0)
        done.set()

    async def reader() -> None:
        nonlocal reads
        while not done.is_set():
            variable = rng.choice(variables)
            before = set(committed[variable])
            got = await seqs(stores, variable)
            assert len(got) == len(set(got)), "a read returned an entry twice"
            missing = before - set(got)
            assert not missing, f"a read missed committed entries {sorted(missing)[:10]}"
            reads += 1
            await asyncio.sleep(rng.random() / 50)

    await asyncio.gather(writer(), churn.offload(0.01), churn.merge(0.05), reader(), reader())
    n_written = len(written[variables[0]])
    assert reads > 5
    assert churn.moved_variables > 3
    assert churn.merged > 1
    for variable in variables:
        await stores.merger.merge_variable(variable)
        page = await stores.history.read(keys.key_for(variable), EVERYTHING)
        assert page.entries.column("seq").to_pylist() == list(range(1, n_written + 1))
        assert sorted(page.entries.column("doc").to_pylist()) == sorted(written[variable])
        k = keys.key_for(variable)
        assert len(stores.objects.list(keys.merged_prefix(k))) == 1
        assert stores.objects.list(keys.transfer_prefix(k)) == []


async def test_an_object_merged_away_between_list_and_read_means_list_again(
    stores: Resources,
) -> None:
    for chunk in range(2):
        await stores.ingestor.write_batch([packet("a", chunk * 10 + n) for n in range(10)])
        await stores.offloader.run_job(everything=True)
    loop = asyncio.get_running_loop()
    real_open = stores.objects.open
    merged_during_read = []

    merging = False

    def open_after_a_merge(name: str) -> Any:
        nonlocal merging
        if not merged_during_read and not merging:  # the reader's first open: merge it away
            merging = True
            report = asyncio.run_coroutine_threadsafe(
                stores.merger.merge_variable("a"), loop
            ).result()
            merged_during_read.append(report)
        return real_open(name)

    stores.objects.open = open_after_a_merge  # type: ignore[method-assign]
    assert await seqs(stores, "a") == list(range(1, 21))
    assert merged_during_read[0].inputs == 2


@pytest.mark.redis_both
def test_offload_and_merge_commands(settings: Settings, objects_url: str, redis: Redis) -> None:
    async def write() -> None:
        opened = await Resources.open(dataclasses.replace(settings, objects_url=objects_url))
        await opened.trigger.close()
        await opened.ingestor.write_batch([packet(f"v{i}", n) for i in range(3) for n in range(50)])
        await opened.close()

    asyncio.run(write())
    env = {**os.environ, "REDIS_URL": settings.redis_url or "", "OBJECTS_URL": objects_url}
    command = [sys.executable, "-m", "latest_server"]
    offload = subprocess.run(
        [*command, "offload", "--all"], env=env, capture_output=True, text=True, timeout=60
    )
    assert offload.returncode == 0, offload.stderr
    assert "moved 150 entries of 3 variables" in offload.stdout
    merge = subprocess.run(
        [*command, "merge", "--all"], env=env, capture_output=True, text=True, timeout=60
    )
    assert merge.returncode == 0, merge.stderr
    assert "merged 3 variables (150 entries rewritten)" in merge.stdout
    merge_one = subprocess.run(
        [*command, "merge", "--variable", "v1"], env=env, capture_output=True, text=True, timeout=60
    )
    assert merge_one.returncode == 0, merge_one.stderr
    unknown = subprocess.run(
        [*command, "merge", "--session", "nope"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert unknown.returncode == 1
    assert "no session 'nope'" in unknown.stderr


@contextlib.asynccontextmanager
async def lock_holder(script: str, env: dict[str, str], *args: str) -> AsyncIterator[None]:
    """Run ``script`` (it takes a lock, then prints "holding") in another process until the
    block ends; the block starts once the lock is held."""
    holder = await asyncio.to_thread(
        subprocess.Popen,
        [sys.executable, "-c", script, *args],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        line = await asyncio.to_thread(holder.stdout.readline)
        assert line.strip() == "holding"
        yield
    finally:
        holder.kill()
        holder.wait(10)
        assert holder.stdout is not None
        holder.stdout.close()


HOLD_MERGE_LOCK = textwrap.dedent(
    """
    import asyncio, sys
    from latest_server import keys
    from latest_server.lock import JobLock
    from latest_server.resources import Resources
    from latest_server.settings import Settings

    async def main():
        stores = await Resources.open(Settings.from_env())
        await stores.trigger.close()
        lock = JobLock(
            stores.redis, stores.offloader.scripts, keys.merge_lock(keys.key_for(sys.argv[1])),
            keys.merge_fence(keys.key_for(sys.argv[1])), ttl=stores.merger.lock_ttl,
        )
        assert await lock.acquire()
        print("holding", flush=True)
        await asyncio.sleep(float(sys.argv[2]))  # a merge of that variable, still running
        await lock.release()
        print("released", flush=True)
        await asyncio.sleep(60)

    asyncio.run(main())
    """
)


@pytest.mark.parametrize("hold", [3.0, 30.0])
async def test_merge_all_waits_for_a_variable_another_process_is_merging(
    stores: Resources, settings: Settings, objects_url: str, hold: float
) -> None:
    """`merge --all` while another process merges one variable (a session's end hook): that
    variable is tried again until the other merge is done, and the command succeeds; a merge
    that outlasts the lock's lifetime is reported, with exit status 1."""
    await stores.ingestor.write_batch([packet(f"v{i}", n) for i in range(3) for n in range(10)])
    env = {
        **os.environ,
        "REDIS_URL": settings.redis_url or "",
        "OBJECTS_URL": objects_url,
        # The merge lock lives twice as long, 6 s: longer than the first holder takes (3 s,
        # started before the command, which needs over a second to start), shorter than 30 s.
        "LATEST_OFFLOAD_LOCK_TTL": "3",
    }
    async with lock_holder(HOLD_MERGE_LOCK, env, "v1", str(hold)):
        merge = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "latest_server", "merge", "--all"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if hold < 6:
            assert merge.returncode == 0, merge.stderr
            assert "merged 3 variables (30 entries rewritten)" in merge.stdout
            assert [await seqs(stores, f"v{i}") for i in range(3)] == [list(range(1, 11))] * 3
        else:
            assert merge.returncode == 1
            assert "merged 2 variables (20 entries rewritten)" in merge.stdout
            assert "1 variables were still being merged elsewhere after 6 s" in merge.stderr


HOLD_LOCK = textwrap.dedent(
    """
    import asyncio, sys
    from latest_server.resources import Resources
    from latest_server.settings import Settings

    async def main():
        stores = await Resources.open(Settings.from_env())
        await stores.trigger.close()
        lock = stores.offloader.lock()
        assert await lock.acquire()
        print("holding", flush=True)
        await asyncio.sleep(60)  # a long job; the test kills this process

    asyncio.run(main())
    """
)


async def test_another_process_holding_the_lock_keeps_a_second_job_out(
    stores: Resources, settings: Settings, objects_url: str
) -> None:
    """Two processes: while one holds the offload lock (a running job), `latest-server offload`
    in another refuses to start a second job; once the holder dies and its lock expires, the
    next job runs."""
    await stores.ingestor.write_batch([packet("a", n) for n in range(10)])
    env = {
        **os.environ,
        "REDIS_URL": settings.redis_url or "",
        "OBJECTS_URL": objects_url,
        "LATEST_OFFLOAD_LOCK_TTL": "1",
    }
    command = [sys.executable, "-m", "latest_server", "offload", "--all"]
    async with lock_holder(HOLD_LOCK, env):
        second = await asyncio.to_thread(
            subprocess.run, command, env=env, capture_output=True, text=True, timeout=60
        )
        assert second.returncode == 1
        assert "another offload job holds the lock" in second.stderr
    await asyncio.sleep(1.2)  # the holder is dead: its lock expires without the heartbeat
    third = await asyncio.to_thread(
        subprocess.run, command, env=env, capture_output=True, text=True, timeout=60
    )
    assert third.returncode == 0, third.stderr
    assert "moved 10 entries of 1 variables" in third.stdout
