"""A Redis lock for jobs: ``SET NX PX`` (in a script Redis runs even when out of memory) with a
random token, a fencing number, a heartbeat that extends it while the job runs, and
compare-and-delete release (Lua).

redis-py's ``Lock`` does not fit as is: no expiry by default, no renewal, one token shared across
asyncio tasks, no fencing number. The lock only prevents duplicate work; correctness comes from
idempotent steps, and each step that changes data checks the token in its own script.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets

from redis.exceptions import ResponseError

from latest_server.redis_client import REDIS_DOWN, Client, Scripts, store_error

log = logging.getLogger(__name__)


class LockLost(Exception):
    """The lock expired or was taken over; the job must stop."""


class JobLock:
    def __init__(
        self, redis: Client, scripts: Scripts, name: str, fence_key: str, *, ttl: float = 30.0
    ) -> None:
        self.redis = redis
        self.scripts = scripts
        self.name = name
        self.fence_key = fence_key
        self.ttl_ms = max(1, int(ttl * 1000))
        self.token = ""
        self.fence = 0
        self.lost = asyncio.Event()
        self._heartbeat: asyncio.Task[None] | None = None

    async def acquire(self) -> bool:
        """Try once; True when held. The fencing number orders every holder ever."""
        token = secrets.token_hex(16)
        fence = int(
            await self.scripts.call(
                self.redis, "lock_acquire", [self.name, self.fence_key], [token, self.ttl_ms]
            )
        )
        if not fence:
            return False
        self.token = token
        self.fence = fence
        self.lost.clear()
        self._heartbeat = asyncio.create_task(self._beat(), name=f"heartbeat {self.name}")
        return True

    async def verify(self) -> None:
        """``check``, and ask Redis that the lock is still this holder's (raise LockLost)."""
        self.check()
        if await self.redis.get(self.name) != self.token.encode():
            self.lost.set()
            raise LockLost(self.name)

    def check(self) -> None:
        if self.lost.is_set():
            raise LockLost(f"lost {self.name}")

    async def _beat(self) -> None:
        interval = self.ttl_ms / 3000
        while True:
            await asyncio.sleep(interval)
            try:
                extended = await self.scripts.call(
                    self.redis, "lock_extend", [self.name], [self.token, self.ttl_ms]
                )
            except (*REDIS_DOWN, ResponseError) as exc:  # not the builtin ConnectionError
                if store_error(exc) is None:
                    raise
                log.warning("could not extend %s: %s", self.name, exc)
                continue
            if not extended:
                log.warning("lock %s was lost; stopping the job", self.name)
                self.lost.set()
                return

    async def release(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
            self._heartbeat = None
        if self.token:
            await self.scripts.call(self.redis, "lock_release", [self.name], [self.token])
            self.token = ""
