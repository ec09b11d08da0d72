"""A file that is reread when it changes: its (inode, size, mtime) is looked at, at most once a
``CHECK_INTERVAL``, when it is used, and a change rereads it. A file that no longer parses keeps
what was read before, with an error logged, so a typo does not lock every client out."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

from latest_server.errors import ConfigError

log = logging.getLogger("latest_server.auth")

CHECK_INTERVAL = 1.0  # seconds between two stat() of a watched file, at most

T = TypeVar("T")


def _signature(path: str) -> tuple[int, int, int] | None:
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return None
    return (stat.st_ino, stat.st_size, stat.st_mtime_ns)


class Watched(Generic[T]):
    """``load(path)`` turns the file into a ``T`` (raising ``ConfigError`` on a bad file);
    ``value`` is the last good one. ``on_change`` is called after every reread that changed it."""

    def __init__(
        self,
        path: str,
        load: Callable[[str], T],
        what: str,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.path = path
        self.what = what  # e.g. "LATEST_TOKENS_FILE", for the log lines
        self._load = load
        self._on_change = on_change
        self._lock = threading.Lock()
        self._signature = _signature(path)
        if self._signature is None:
            raise ConfigError(f"{what}: {path} does not exist")
        self.value: T = load(path)
        self._checked = time.monotonic()

    def check(self) -> None:
        """Reread the file if it changed (looked at once a CHECK_INTERVAL at most)."""
        now = time.monotonic()
        if now - self._checked < CHECK_INTERVAL:
            return
        self._checked = now
        signature = _signature(self.path)
        if signature != self._signature:
            self.reload(signature)

    def reload(self, signature: tuple[int, int, int] | None = None) -> None:
        """Reread the file now (on SIGHUP, or when it changed)."""
        with self._lock:
            if signature is None:
                signature = _signature(self.path)
            self._signature = signature
            self._checked = time.monotonic()
            try:
                if signature is None:
                    raise ConfigError(f"{self.path} does not exist")
                self.value = self._load(self.path)
            except ConfigError as exc:
                log.error("%s: %s; keeping what was read before", self.what, exc.message)
                return
            except OSError as exc:
                log.error(
                    "%s: cannot read %s (%s); keeping what was read before",
                    self.what,
                    self.path,
                    exc,
                )
                return
            log.info("%s: %s reread", self.what, self.path)
        if self._on_change is not None:
            self._on_change()
