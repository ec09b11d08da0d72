"""What the benchmark scripts share: ports, process CPU time, py-spy, the command of ours.

The scripts run as ``python bench/<name>.py``, so this folder is on ``sys.path`` and they import
this module by its name.
"""

from __future__ import annotations

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
