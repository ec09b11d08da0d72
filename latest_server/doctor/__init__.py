"""``latest-server doctor``: what the configured services and settings would do to the server,
checked before it runs, one line each (``ok``, ``warn``, or ``FAIL`` with the fix), and a
non-zero exit on any ``FAIL``.

Redis: reachable, version (7 or later: sharded pub/sub and script flags), eviction policy,
persistence, memory headroom against ``maxmemory`` (or LATEST_OFFLOAD_MAX_BYTES), cluster mode.
RabbitMQ (when AMQP_URL is set): the exchange, queue, dead-letter exchange and queue exist
(passive declares), dead letters waiting, consumers on the queue. The object store: an object
written, read back and deleted under ``doctor/``. The tokens file (when the build has the
setting and it is set): exists, parses, names unique, tokens stored hashed. The bind address:
anything but loopback without tokens is a FAIL."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from latest_server.doctor.access import check_bind, check_tokens
from latest_server.doctor.findings import Finding
from latest_server.doctor.services import check_broker, check_objects, check_redis
from latest_server.errors import LatestError
from latest_server.settings import Settings

__all__ = ["Finding", "diagnose", "doctor_command"]


async def diagnose(settings: Settings) -> list[Finding]:
    checks: list[Callable[[Settings], Awaitable[list[Finding]]]] = [
        check_redis,
        check_broker,
        check_objects,
    ]
    found: list[Finding] = []
    for check in checks:
        found += await check(settings)
    return found + check_tokens(settings) + check_bind(settings)


async def doctor_command(settings: Settings) -> None:
    """Prints the report; raises LatestError (exit 1) when any check FAILed."""
    findings = await diagnose(settings)
    for finding in findings:
        print(finding.line())
    failed = sum(f.level == "FAIL" for f in findings)
    warned = sum(f.level == "warn" for f in findings)
    print(f"{len(findings)} checks: {failed} failed, {warned} warnings")
    if failed:
        raise LatestError(f"{failed} checks failed (see above)")
