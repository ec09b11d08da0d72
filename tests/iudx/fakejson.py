"""fakeredis as the Redis with the JSON module: the JSON module cannot run on this machine (no
Redis Stack, no valkey-json), so fakeredis (with its Lua and JSON extras) stands in for it, in
process or over TCP (``fakeredis.TcpFakeServer``) for clients that connect by URL.

fakeredis has no INFO and no CONFIG GET, which the server's start-up check and offload trigger
read: this module gives it the two, answering what a Redis with no limit, no eviction and no
persistence would (``maxmemory 0``, ``noeviction``, ``save ""``). Nor does it read a script's
``#!lua flags=…`` line (the offload job's scripts have one): it is blanked before the script
runs, as Redis reads it and runs the rest.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

from fakeredis import TcpFakeServer
from fakeredis._commands import command
from fakeredis._socket._fakesocket import FakeSocket

from tests.services import free_port

INFO = {
    b"memory": b"# Memory\r\nused_memory:1048576\r\nmaxmemory:0\r\nmaxmemory_policy:noeviction\r\n"
    b"lazyfree_pending_objects:0\r\n",
    b"persistence": b"# Persistence\r\naof_enabled:0\r\nloading:0\r\n",
    b"cluster": b"# Cluster\r\ncluster_enabled:0\r\n",
    b"server": b"# Server\r\nredis_version:8.0.0\r\n",
}


@command(name="INFO", fixed=(), repeat=(bytes,))
def info(self: FakeSocket, *sections: bytes) -> bytes:
    wanted = [s.lower() for s in sections] or list(INFO)
    return b"\r\n".join(INFO.get(s, b"") for s in wanted)


@command(name="CONFIG GET", fixed=(bytes,), repeat=(bytes,))
def config_get(self: FakeSocket, *names: bytes) -> dict[bytes, bytes]:
    values = {b"save": b"", b"appendonly": b"no", b"maxmemory-policy": b"noeviction"}
    return {name: values[name] for name in names if name in values}


_eval = FakeSocket.eval


def _eval_without_shebang(self: FakeSocket, script: bytes, numkeys: int, *rest: bytes) -> Any:
    if script.startswith(b"#!"):
        script = b"\n" + script.partition(b"\n")[2]
    return _eval(self, script, numkeys, *rest)


FakeSocket.eval = _eval_without_shebang  # type: ignore[method-assign]
FakeSocket.info = info  # type: ignore[attr-defined]
FakeSocket.config_get = config_get  # type: ignore[attr-defined]


@contextlib.contextmanager
def fake_redis_server() -> Iterator[str]:
    """fakeredis' TCP server on a free loopback port, in a thread; yields its URL."""
    port = free_port()
    server = TcpFakeServer(("127.0.0.1", port), server_type="redis")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
