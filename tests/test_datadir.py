"""One owner per data directory, on real processes: ``latest-server serve`` and the CLI jobs with
no REDIS_URL (the embedded Valkey), each in a data directory under tmp_path.

A second server on the directory refuses with one line naming the first; ``offload`` and
``merge`` beside a running server write through its Valkey (one Valkey, nothing lost, its lock
record intact); with no server running a job runs a Valkey of its own and stops it; the Valkey
is reached only through a unix socket in a directory only its owner can enter; and if it dies
the server starts it again while /readyz says 503."""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import sys
from pathlib import Path

import httpx
import orjson
import psutil
import pytest

from latest_server import datadir
from tests.conftest import free_port
from tests.test_faults import (
    Child,
    Spawn,
    _healthy,
    alive,
    kill_if_alive,
    latest_server,
    server_env,
    spawn,
    until,
    valkey_processes,
)

__all__ = ["spawn"]  # the fixture, shared with test_faults
pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

VARIABLES = 5
PER_VARIABLE = 40


def env_for(data_dir: Path, port: int | None = None) -> dict[str, str]:
    return server_env(
        LATEST_DATA_DIR=str(data_dir), LATEST_PORT=str(port or free_port()), LATEST_ES_PORT="0"
    )


async def start_serve(spawn: Spawn, data_dir: Path, name: str = "serve") -> tuple[Child, str]:
    port = free_port()
    server = latest_server(spawn, "serve", env_for(data_dir, port), name)
    url = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        await until("/healthz answers", lambda: _healthy(http), 30, server)
    return server, url


def packets(first_second: int = 0) -> bytes:
    lines = []
    for n in range(PER_VARIABLE):
        minute, second = divmod(first_second + n, 60)
        at = f"2024-05-17T10:{minute:02d}:{second:02d}Z"
        for v in range(VARIABLES):
            lines.append(orjson.dumps({"id": f"urn:owner:{v}", "observationDateTime": at, "n": n}))
    return b"\n".join(lines)


async def ingest(url: str, first_second: int = 0) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        answer = await http.post(
            "/ingest",
            content=packets(first_second),
            headers={"content-type": "application/x-ndjson"},
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["accepted"] == VARIABLES * PER_VARIABLE, answer.text


async def history_counts(url: str) -> list[int]:
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        counts = []
        for v in range(VARIABLES):
            answer = await http.get(f"/history/urn:owner:{v}")
            assert answer.status_code == 200, answer.text
            counts.append(len(answer.json()["entries"]))
        return counts


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """The data directory of the test's servers and jobs (created by them)."""
    return tmp_path / "data"


async def run_job(spawn: Spawn, data_dir: Path, *argv: str) -> Child:
    job = spawn([sys.executable, "-m", "latest_server", *argv], env_for(data_dir), argv[0])
    assert await job.exited(60) == 0, job.describe()
    return job


def error_lines(child: Child) -> list[str]:
    return [line for line in child.log().splitlines() if line.strip()]


async def test_a_second_serve_on_the_same_data_directory_exits_with_one_line(
    spawn: Spawn, data_dir: Path
) -> None:
    first, url = await start_serve(spawn, data_dir, "first")
    await ingest(url)
    [valkey] = valkey_processes(data_dir)

    second = latest_server(spawn, "serve", env_for(data_dir), "second")
    assert await second.exited(10) != 0, second.describe()
    lines = error_lines(second)
    assert len(lines) == 1, second.log()
    assert lines[0].startswith(f"latest-server: error: the data directory {data_dir} is in use")
    assert f"latest-server serve (pid {first.pid}, HTTP on {url}," in lines[0], lines[0]
    assert "Traceback" not in second.log()

    assert first.alive() and valkey_processes(data_dir) == [valkey]
    assert await history_counts(url) == [PER_VARIABLE] * VARIABLES
    assert await first.terminate() == 0, first.describe()
    assert valkey_processes(data_dir) == []


async def test_offload_and_merge_beside_a_running_serve_use_its_valkey(
    spawn: Spawn, data_dir: Path
) -> None:
    server, url = await start_serve(spawn, data_dir)
    [valkey] = valkey_processes(data_dir)
    owner = datadir.read_owner(data_dir)
    assert owner is not None and owner.pid == server.pid and owner.valkey_pid == valkey.pid
    await ingest(url)

    for argv in (("offload", "--all"), ("merge", "--all")):
        job = await run_job(spawn, data_dir, *argv)
        assert f"using the embedded Valkey of latest-server serve (pid {server.pid}" in job.log()
        assert "using an embedded Valkey server" not in job.log(), job.log()
        assert valkey_processes(data_dir) == [valkey], argv  # no second one, the first intact
        assert datadir.read_owner(data_dir) == owner, argv  # the server's record untouched
        assert await history_counts(url) == [PER_VARIABLE] * VARIABLES, argv
    assert list((data_dir / "objects").rglob("*.parquet")), "the jobs moved nothing"

    await ingest(url, first_second=PER_VARIABLE)  # the server still writes
    assert await history_counts(url) == [2 * PER_VARIABLE] * VARIABLES
    assert await server.terminate() == 0, server.describe()
    assert valkey_processes(data_dir) == [] and not alive(valkey)


async def test_a_job_with_no_server_running_starts_and_stops_its_own_valkey(
    spawn: Spawn, data_dir: Path
) -> None:
    server, url = await start_serve(spawn, data_dir)
    await ingest(url)
    assert await server.terminate() == 0, server.describe()

    for argv in (("offload", "--all"), ("merge", "--all")):
        job = await run_job(spawn, data_dir, *argv)
        assert "using an embedded Valkey server" in job.log(), job.log()
        assert valkey_processes(data_dir) == [], argv
        datadir.claim(data_dir, wait=0).release()  # nobody holds the directory any more

    server, url = await start_serve(spawn, data_dir, "again")
    assert await history_counts(url) == [PER_VARIABLE] * VARIABLES
    assert await server.terminate() == 0


async def test_the_embedded_valkey_listens_only_on_a_private_unix_socket(
    spawn: Spawn, data_dir: Path
) -> None:
    server, _url = await start_serve(spawn, data_dir)
    [valkey] = valkey_processes(data_dir)
    socket_dir = data_dir / "run"
    assert stat.S_IMODE(socket_dir.stat().st_mode) == 0o700
    assert stat.S_ISSOCK((socket_dir / "valkey.sock").stat().st_mode)
    assert valkey.net_connections(kind="inet") == []  # no TCP port, not even on loopback
    assert await server.terminate() == 0


async def test_a_dead_embedded_valkey_is_started_again_and_readyz_says_so(
    spawn: Spawn, data_dir: Path
) -> None:
    server, url = await start_serve(spawn, data_dir)
    await ingest(url)
    await asyncio.sleep(1.5)  # appendfsync everysec
    [valkey] = valkey_processes(data_dir)
    unready: list[dict[str, bool]] = []

    async def ready_again(http: httpx.AsyncClient) -> bool:
        answer = await http.get("/readyz")
        if answer.status_code == 503:
            unready.append(answer.json()["checks"])
        return answer.status_code == 200 and bool(unready)

    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        assert (await http.get("/readyz")).status_code == 200
        valkey.send_signal(signal.SIGKILL)
        await until("/readyz 503, then 200 again", lambda: ready_again(http), 30, server)
    # Meanwhile it said why: Redis does not answer, and the embedded one is being restarted.
    assert {"redis": False, "embedded_valkey": False} in unready, unready
    [again] = valkey_processes(data_dir)
    assert again.pid != valkey.pid
    assert "exited with code" in server.log() and "running again" in server.log()
    assert await history_counts(url) == [PER_VARIABLE] * VARIABLES
    assert datadir.read_owner(data_dir).valkey_pid == again.pid  # type: ignore[union-attr]
    assert await server.terminate() == 0


async def test_a_killed_servers_valkey_is_stopped_by_the_next_owner(
    spawn: Spawn, data_dir: Path
) -> None:
    """A SIGKILLed server leaves its Valkey running, holding the inherited lock: the next serve
    stops it (it writes its files out) and starts its own on the same data."""
    server, url = await start_serve(spawn, data_dir)
    await ingest(url)
    [orphan] = valkey_processes(data_dir)
    server.kill()
    assert alive(orphan)
    try:
        again, url = await start_serve(spawn, data_dir, "again")
        assert not alive(orphan)
        assert f"the embedded Valkey (pid {orphan.pid})" in again.log()
        assert await history_counts(url) == [PER_VARIABLE] * VARIABLES
        assert await again.terminate() == 0
    finally:
        kill_if_alive(orphan)


def test_the_lock_is_refused_while_held_and_names_its_owner(tmp_path: Path) -> None:
    held = datadir.claim(tmp_path)
    me = os.getpid()
    held.record(datadir.Owner(me, psutil.Process(me).create_time(), "serve", "/x/valkey.sock"))
    try:
        with pytest.raises(datadir.DataDirBusy) as refused:
            datadir.claim(tmp_path, wait=0)
        assert f"latest-server serve (pid {me}, Valkey at unix:///x/valkey.sock?db=0)" in str(
            refused.value
        )
    finally:
        held.release()
    datadir.claim(tmp_path, wait=0).release()
