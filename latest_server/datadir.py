"""One owner per data directory: the process that runs the embedded Valkey on it.

Without REDIS_URL, the data directory holds the embedded Valkey's append-only files, and two
Valkey servers on the same files lose history. So the process that starts it (``serve``,
``consume``, or a CLI job when no server runs) first takes an exclusive ``flock`` on
``latest-server.lock`` in the directory, and holds it for its whole life. The Valkey it starts
inherits the lock's file descriptor: the directory stays locked until both have exited, so an
owner that was SIGKILLed cannot let a second Valkey in while its own still runs.

The lock file also says who holds it and how it is reached (pid, command, HTTP address, the
Valkey's unix socket): a second server refuses to start with one line naming it, and a CLI job
uses the running server's Valkey through that socket instead of starting another.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import psutil

from latest_server.errors import LatestError

log = logging.getLogger(__name__)

LOCK_NAME = "latest-server.lock"
# How long a claim waits for a holder that is not (or no longer) named in the lock file: one
# that is writing its record, or a Valkey still stopping after its owner died.
CLAIM_WAIT = 15.0
ORPHAN_STOP_TIMEOUT = 10.0  # seconds for a dead owner's Valkey to exit after SIGTERM


@dataclass(frozen=True)
class Owner:
    """Who holds a data directory, as its lock file says."""

    pid: int
    started: float  # the process' start time: tells a reused pid apart
    command: str  # serve, consume, offload, merge
    socket: str  # the embedded Valkey's unix socket
    http: str | None = None  # where ``serve`` answers
    valkey_pid: int | None = None
    valkey_started: float | None = None

    @property
    def redis_url(self) -> str:
        return f"unix://{self.socket}?db=0"

    @property
    def serves(self) -> bool:
        """A long-running server, whose Valkey outlives a job run beside it."""
        return self.command in ("serve", "consume")

    def alive(self) -> bool:
        return _alive(self.pid, self.started)

    def valkey_alive(self) -> bool:
        return self.valkey_pid is not None and _alive(self.valkey_pid, self.valkey_started)

    def describe(self) -> str:
        parts = [f"pid {self.pid}"]
        if self.http:
            parts.append(f"HTTP on {self.http}")
        parts.append(f"Valkey at {self.redis_url}")
        return f"latest-server {self.command} ({', '.join(parts)})"


class DataDirBusy(LatestError):
    """Another process owns the data directory."""

    reason = "data_dir_busy"

    def __init__(self, data_dir: Path, owner: Owner | None, advice: str) -> None:
        holder = owner.describe() if owner is not None else "another process"
        super().__init__(f"the data directory {data_dir} is in use by {holder}: {advice}")
        self.owner = owner


def _alive(pid: int, started: float | None) -> bool:
    try:
        process = psutil.Process(pid)
        return (
            started is None or process.create_time() == started
        ) and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def started_at(pid: int) -> float:
    return psutil.Process(pid).create_time()


def read_owner(data_dir: Path) -> Owner | None:
    """The record in the lock file; None when there is none yet (or it is being written)."""
    try:
        fields: Any = orjson.loads((data_dir / LOCK_NAME).read_bytes())
        return Owner(**fields)
    except (OSError, orjson.JSONDecodeError, TypeError):
        return None


class Ownership:
    """The exclusive lock on a data directory, held until ``release`` (or the process' end)."""

    def __init__(self, data_dir: Path, fd: int) -> None:
        self.data_dir = data_dir
        self.fd = fd  # passed on to the Valkey this process starts

    def record(self, owner: Owner) -> None:
        data = orjson.dumps(dataclasses.asdict(owner))
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, data, 0)

    def release(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


def claim(data_dir: Path, *, wait: float = CLAIM_WAIT) -> Ownership:
    """Take the data directory, or raise DataDirBusy naming its owner (at once when the owner
    runs). A Valkey left running by an owner that died (SIGKILL) still holds the lock: it is
    stopped (SIGTERM: it writes its append-only file out and exits), then the lock is taken."""
    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(data_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    deadline = time.monotonic() + wait
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return Ownership(data_dir, fd)
            except BlockingIOError:
                pass
            owner = read_owner(data_dir)
            if owner is not None and owner.alive():
                raise DataDirBusy(data_dir, owner, _advice(owner))
            if owner is not None and owner.valkey_alive():
                _stop_orphan(owner)
            elif time.monotonic() > deadline:
                raise DataDirBusy(data_dir, owner, "it holds the lock file " + LOCK_NAME)
            time.sleep(0.1)
    except BaseException:
        os.close(fd)
        raise


def _advice(owner: Owner) -> str:
    if owner.serves:
        return "stop it first, or give this one another LATEST_DATA_DIR"
    return "try again when it is done"


def _stop_orphan(owner: Owner) -> None:
    assert owner.valkey_pid is not None
    log.warning(
        "the embedded Valkey (pid %d) of latest-server %s (pid %d, gone) is still running: "
        "stopping it",
        owner.valkey_pid,
        owner.command,
        owner.pid,
    )
    try:
        process = psutil.Process(owner.valkey_pid)
        process.terminate()
        try:
            process.wait(ORPHAN_STOP_TIMEOUT)
        except psutil.TimeoutExpired:
            process.kill()
            process.wait(ORPHAN_STOP_TIMEOUT)
    except psutil.NoSuchProcess:
        pass
