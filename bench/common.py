"""What the benchmark scripts share: ports, process CPU time and waits, machine load, py-spy,
the command of ours.

The scripts run as ``python bench/<name>.py``, so this folder is on ``sys.path`` and they import
this module by its name.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import sys
from pathlib import Path

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system, all threads) a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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
