"""What the benchmark scripts share: ports, HTTP GETs, server subprocesses, process CPU time and
waits, machine load, py-spy, the command of ours.

The scripts run as ``python bench/<name>.py``, so this folder is on ``sys.path`` and they import
this module by its name.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """Status and body of a GET, whatever the status."""
    try:
        request = urllib.request.Request(url, headers=headers or {})
        with urllib.request.urlopen(request, timeout=5) as answer:
            return int(answer.status), bytes(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@contextlib.contextmanager
def server(
    name: str,
    command: list[str],
    env: dict[str, str],
    ready_url: str | list[str],
    *,
    preexec_fn: Callable[[], None] | None = None,
    own_session: bool = False,
) -> Iterator[subprocess.Popen[bytes]]:
    """Run a server subprocess until the block ends; wait until ``ready_url`` (each of them, for
    a server with several listeners) answers 200; its output is shown if it does not start
    within 30 s. ``own_session``: Ctrl-C reaches only this script, which stops the server with
    SIGTERM."""
    waiting = [ready_url] if isinstance(ready_url, str) else list(ready_url)
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(
            command,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=preexec_fn,
            start_new_session=own_session,
        )
        try:
            deadline = time.monotonic() + 30
            while True:
                if process.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    output = log.read().decode(errors="replace")[-4000:]
                    raise RuntimeError(f"{name} did not start:\n{output}")
                with contextlib.suppress(OSError):
                    while waiting and get(waiting[0])[0] == 200:
                        waiting.pop(0)
                if not waiting:
                    break
                time.sleep(0.1)
            yield process
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system, all threads) a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def redis_cpu(info: Mapping[str, Any]) -> float:
    """CPU seconds Redis has used so far, from its ``INFO cpu`` (main and background threads)."""
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def process_wait(pid: int) -> float:
    """Seconds the process's threads have spent runnable but waiting for a CPU so far (Linux
    /proc/<pid>/task/*/schedstat): on a busy machine, the delay the scheduler adds to every
    hand-off between processes."""
    waited = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):  # a thread that has just ended
            waited += int((task / "schedstat").read_text().split()[1])
    return waited / 1e9


def machine_cpu() -> dict[str, float]:
    """CPU seconds so far, summed over every CPU (Linux /proc/stat): ``busy`` (user, system,
    interrupts) and ``steal`` (time the hypervisor gave to other guests while this one wanted
    to run: the noisy neighbour)."""
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    tick = os.sysconf("SC_CLK_TCK")
    return {"busy": (user + nice + system + irq + softirq) / tick, "steal": steal / tick}


def find_py_spy() -> str:
    found = shutil.which("py-spy", path=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    if found is None:
        raise SystemExit("--profile needs py-spy: pip install py-spy")
    return found


def py_spy_format(output: str) -> list[str]:
    """py-spy's format option for an output file: .txt raw stacks, .json speedscope, else SVG."""
    if output.endswith(".txt"):
        return ["--format", "raw"]
    if output.endswith(".json"):
        return ["--format", "speedscope"]
    return []


def ours_command(job: str = "serve") -> list[str]:
    """``latest-server <job>`` from this interpreter's environment."""
    script = Path(sys.executable).with_name("latest-server")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "latest_server"]
    return [*command, job]
