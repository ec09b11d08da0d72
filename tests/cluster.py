"""A real Redis Cluster of the tests' own: three primaries, each with one replica, from
``redis-server`` on free loopback ports, made a cluster by ``redis-cli --cluster create``.

Nothing is shared with another run: each node keeps its files (``nodes.conf``, logs) in a
directory of its own, removed at the end. ``cluster-node-timeout`` is short, so a stopped primary
is failed over by its replica within a few seconds, as in a real deployment (no manual step).
"""

from __future__ import annotations

import contextlib
import random
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.services import _wait_for_port, redis_argv, redis_binary, stop

NODE_TIMEOUT_MS = 1000
READY_TIMEOUT = 60.0


@dataclass
class Node:
    port: int
    directory: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        log = self.directory / "server.log"
        self.process = subprocess.Popen(
            redis_argv(
                self.port,
                self.directory,
                *("--cluster-enabled", "yes"),
                *("--cluster-config-file", "nodes.conf"),
                *("--cluster-node-timeout", str(NODE_TIMEOUT_MS)),
                *("--maxclients", "4096"),
                *("--repl-diskless-sync-delay", "0"),
                *("--logfile", str(log)),
            ),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_for_port(self.port, self.process, log)

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process)
            self.process = None

    def cli(self, *args: str) -> str:
        return _cli("-p", str(self.port), *args)


@dataclass
class Cluster:
    nodes: list[Node] = field(default_factory=list)

    @property
    def url(self) -> str:
        """The URL latest-server takes: every primary's address (a client needs only one)."""
        return "redis+cluster://" + ",".join(node.address for node in self.primaries())

    def running(self) -> list[Node]:
        return [node for node in self.nodes if node.process is not None]

    def primaries(self) -> list[Node]:
        return [node for node in self.running() if _role(node) == "master"]

    def primary_of(self, key: str) -> Node:
        """The primary that serves ``key``'s slot now."""
        any_node = self.running()[0]
        slot = int(any_node.cli("cluster", "keyslot", key))
        port = next(port for first, last, port in _slots(any_node) if first <= slot <= last)
        return next(node for node in self.running() if node.port == port)

    def replica_of(self, primary: Node) -> Node:
        """A running replica of ``primary``."""
        node_id = primary.cli("cluster", "myid").strip()
        for line in primary.cli("cluster", "nodes").splitlines():
            fields = line.split()
            if len(fields) > 3 and "slave" in fields[2] and fields[3] == node_id:
                port = int(fields[1].split("@")[0].rsplit(":", 1)[1])
                return next(node for node in self.running() if node.port == port)
        raise LookupError(f"{primary.address} has no replica")

    def wait_ok(self, within: float = READY_TIMEOUT) -> None:
        """Until every running node says ``cluster_state:ok``, three primaries serve the slots
        and every running replica is in sync with its primary (a replica that never synced
        would not take over)."""
        deadline = time.monotonic() + within
        while True:
            states = {node.port: node.cli("cluster", "info") for node in self.running()}
            synced = all(
                "master_link_status:up" in node.cli("info", "replication")
                for node in self.running()
                if _role(node) == "slave"
            )
            ok = all("cluster_state:ok" in info for info in states.values())
            if ok and synced and len(self.primaries()) == 3:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the tests' Redis Cluster is not ok: {states}")
            time.sleep(0.1)

    def close(self) -> None:
        for node in self.nodes:
            node.stop()


def cluster_port() -> int:
    """A free loopback port whose cluster bus port (10 000 higher) is free too: the kernel's
    ephemeral ports are above 55 535, which Redis refuses for a cluster node."""
    while True:
        port = random.randrange(20_000, 45_000)
        with contextlib.ExitStack() as stack:
            try:
                for candidate in (port, port + 10_000):
                    sock = stack.enter_context(socket.socket())
                    sock.bind(("127.0.0.1", candidate))
            except OSError:
                continue
            return port


def cli_binary() -> str:
    """``redis-cli`` beside ``redis-server``, else the ``valkey-cli`` the Valkey package ships
    next to the server binary the tests then run (tests/services.py, ``redis_binary``)."""
    if shutil.which("redis-server"):
        found = shutil.which("redis-cli")
        if found is None:
            raise RuntimeError("the cluster tests need redis-cli (Debian's redis-tools)")
        return found
    return str(Path(redis_binary()).with_name("valkey-cli"))


def _cli(*args: str) -> str:
    result = subprocess.run(
        [cli_binary(), "-h", "127.0.0.1", *args], capture_output=True, text=True, timeout=60
    )
    if result.returncode != 0:
        raise RuntimeError(f"redis-cli {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


def _role(node: Node) -> str:
    try:
        info = node.cli("role")
    except RuntimeError:
        return "down"
    return info.split("\n", 1)[0].strip()


def _slots(node: Node) -> list[tuple[int, int, int]]:
    """(first slot, last slot, primary port) per range, from CLUSTER SLOTS in redis-cli's
    plain output: each range is its two numbers, then the primary's host, port and id."""
    lines = [line.strip() for line in node.cli("cluster", "slots").splitlines() if line.strip()]
    ranges = []
    index = 0
    while index + 3 < len(lines):
        if lines[index].isdigit() and lines[index + 1].isdigit() and lines[index + 3].isdigit():
            ranges.append((int(lines[index]), int(lines[index + 1]), int(lines[index + 3])))
            index += 4
        else:
            index += 1
    return ranges


@contextlib.contextmanager
def redis_cluster(primaries: int = 3, replicas: int = 1) -> Iterator[Cluster]:
    """A running cluster of ``primaries`` primaries with ``replicas`` replicas each; stopped and
    its files removed at the end."""
    cli_binary()  # one clear error before any node starts
    root = Path(tempfile.mkdtemp(prefix="latest-test-cluster-"))
    cluster = Cluster()
    try:
        for index in range(primaries * (1 + replicas)):
            directory = root / str(index)
            directory.mkdir()
            node = Node(cluster_port(), directory)
            cluster.nodes.append(node)
            node.start()
        _cli(
            "--cluster",
            "create",
            *(node.address for node in cluster.nodes),
            "--cluster-replicas",
            str(replicas),
            "--cluster-yes",
        )
        cluster.wait_ok()
        yield cluster
    finally:
        cluster.close()
        shutil.rmtree(root, ignore_errors=True)
