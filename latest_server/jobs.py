"""The one-shot jobs of the command line: ``latest-server offload``, ``latest-server merge`` and
``latest-server reindex``.

Each opens the resources as a server does (``reindex`` needs only Redis), runs its job once,
prints what it did and closes them; ``cli`` runs them on the event loop."""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

from tqdm import tqdm

from latest_server.errors import LatestError
from latest_server.keys import key_for
from latest_server.redis_client import connect, load_scripts, redis_bounded
from latest_server.resources import Resources
from latest_server.settings import Settings
from latest_server.stores.variables import VariableIndex


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


@redis_bounded
async def reindex_command(settings: Settings) -> None:
    """Add every variable Redis holds to the index of variables (GET /variables): a repair, safe
    while servers write (the index only gains ids)."""
    redis = connect(str(settings.redis_url))
    try:
        found = await VariableIndex(redis, await load_scripts(redis)).reindex()
        print(f"indexed {found} variables")
    finally:
        await redis.aclose()


JOB_COMMANDS: dict[str, Any] = {
    "offload": offload_command,
    "merge": merge_command,
    "reindex": reindex_command,
}
