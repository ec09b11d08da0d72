"""The other processes of ``latest-server serve --workers N``.

The first process (the one started) owns what must have one owner: the data directory's lock and
the embedded Valkey (datadir.py, embedded.py). It starts N - 1 workers, each a fresh interpreter
(multiprocessing's ``spawn``: no event loop, connection or lock inherited) running the same
server on the same Redis. Every process binds the HTTP (and Elasticsearch) port itself with
``SO_REUSEPORT``, so the kernel spreads new connections over them, and a worker that dies takes
its socket with it. What must happen once across processes is claimed in Redis: offload jobs
(``JobLock``), completion polls and session end steps (session_poll.lua, session_claim.lua).

The first process stops its workers (SIGTERM: each finishes what it has in hand) before itself,
and starts again a worker that died. A worker whose first process is gone stops by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
import time
from collections.abc import Callable
from multiprocessing.process import BaseProcess
from typing import Any

from latest_server.settings import Settings

log = logging.getLogger("latest_server")

SPAWN = multiprocessing.get_context("spawn")
WATCH_INTERVAL = 1.0  # seconds between checks on the workers, and on the first process
RESTART_PAUSE = 1.0  # seconds before a worker that died is started again


class WorkerPool:
    """N - 1 worker processes running ``target(settings, index, parent)`` (``parent``: this
    process' pid, which the worker watches); ``settings`` must name the ports actually bound (a
    port 0 is resolved by the first process)."""

    def __init__(
        self, settings: Settings, count: int, target: Callable[[Settings, int, int], None]
    ) -> None:
        self.settings = settings
        self.count = count
        self.target = target
        self.processes: dict[int, BaseProcess] = {}
        self.stopping = False

    def start(self) -> None:
        for index in range(1, self.count + 1):
            self._spawn(index)

    def _spawn(self, index: int) -> None:
        process = SPAWN.Process(
            target=self.target,
            args=(self.settings, index, os.getpid()),
            name=f"latest-server-worker-{index}",
        )
        process.start()
        self.processes[index] = process
        log.info("worker %d started (pid %s)", index, process.pid)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes.values() if p.pid is not None]

    async def supervise(self) -> None:
        """Start again every worker that exits while the pool is not stopping."""
        while not self.stopping:
            await asyncio.sleep(WATCH_INTERVAL)
            for index, process in list(self.processes.items()):
                if self.stopping or process.is_alive():
                    continue
                log.error(
                    "worker %d (pid %s) exited with %s; starting it again",
                    index,
                    process.pid,
                    process.exitcode,
                )
                await asyncio.sleep(RESTART_PAUSE)
                if not self.stopping:
                    self._spawn(index)

    async def stop(self, grace: float = 60.0) -> None:
        """SIGTERM every worker, wait up to ``grace`` seconds for them, then SIGKILL."""
        self.stopping = True
        for process in self.processes.values():
            if process.is_alive() and process.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for index, process in self.processes.items():
            await asyncio.to_thread(process.join, max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                log.error("worker %d (pid %s) did not stop; killing it", index, process.pid)
                process.kill()
                await asyncio.to_thread(process.join, 10)


async def watch_parent(parent: int, stop: Callable[[], Any]) -> None:
    """In a worker: call ``stop()`` once the first process (pid ``parent``, given by it: it may
    have died before the worker looked) is gone."""
    while os.getppid() == parent:  # noqa: ASYNC110 (no event tells a process its parent died)
        await asyncio.sleep(WATCH_INTERVAL)
    log.error("the first server process (pid %d) is gone; stopping", parent)
    stop()
