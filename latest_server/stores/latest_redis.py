"""LatestStore on Redis: a whole batch is one pipelined round trip of write.lua calls."""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Self

from redis.asyncio import Redis
from redis.exceptions import NoScriptError

from latest_server import keys
from latest_server.errors import StoreRefused
from latest_server.packets import Packet
from latest_server.redis_client import (
    CONNECTION_LOST,
    Client,
    Scripts,
    each_primary,
    load_scripts,
    redis_bounded,
    send_each,
)
from latest_server.settings import Settings
from latest_server.stores.base import DeleteOutcome, LatestDoc, WriteOutcome

# write.lua's ARGV[5] for each version type (Packet.version_type, or LATEST_VERSION_TYPE).
MODES = {"external": b"0", "external_gte": b"1", "create": b"c"}
# Packets per write.lua call: big enough to amortise a call, small enough that one call keeps
# Redis busy for a millisecond or so, not more.
WRITE_CHUNK = 100
# A batch's first calls are smaller, each half as big again as the one before: Redis starts
# writing while the server still builds the rest, instead of waiting for a hundred packets to be
# parsed and packed, and then finds the next call ready when it is done with one.
FIRST_CHUNK = 20


class RedisLatestStore:
    script = "write"  # the script a batch calls (stores/latest_redisjson.py: iudx_write)

    def __init__(self, redis: Client, scripts: Scripts, *, version_type: str = "external") -> None:
        self.redis = redis
        self.scripts = scripts
        self.gte = b"1" if version_type == "external_gte" else b"0"
        self.replicas = Replicas()

    @classmethod
    async def open(
        cls, redis: Client, *, version_type: str = "external", scripts: Scripts | None = None
    ) -> Self:
        """A store on ``redis``, calling ``scripts`` (the process' registry; by default loaded
        here, for a store used alone)."""
        return cls(redis, scripts or await load_scripts(redis), version_type=version_type)

    @classmethod
    async def from_url(
        cls, url: str, *, redis: Client, settings: Settings, scripts: Scripts | None = None
    ) -> Self:
        """The stores/__init__.py backend entry point: ``redis`` is already connected to ``url``."""
        store = await cls.open(redis, version_type=settings.version_type, scripts=scripts)
        store.replicas = Replicas(settings.redis_wait_replicas, settings.redis_wait_timeout)
        return store

    @redis_bounded
    async def write_batch(self, packets: Iterable[Packet]) -> list[WriteOutcome]:
        """``packets`` may be built lazily (a generator): each chunk is sent as soon as it is
        packed, so building the next one overlaps Redis running this one."""
        assert isinstance(self.redis, Redis)
        taken: list[Packet] = []
        replicas = self.replicas
        outcomes = self._outcomes  # stores/latest_redisjson.py reads its replies its own way
        convert: Any = outcomes
        if replicas.count:  # WAIT's reply (a number) comes last, as it is

            def convert(reply: Any) -> Any:
                return reply if isinstance(reply, int) else outcomes(reply)

        try:
            commands = replicas.after(self._commands(packets, taken))
            replies = await send_each(self.redis, commands, convert)
        except NoScriptError:
            # Redis restarted and lost its script cache. The script is idempotent, so the
            # whole batch is simply sent again (every packet was taken: replies are read
            # after the last command is sent).
            await self.scripts.reload(self.redis)
            replies = await send_each(
                self.redis, replicas.after(self._commands(taken, [])), convert
            )
        if replicas.count:
            replicas.check(replies.pop())
        return [outcome for chunk in replies for outcome in chunk]

    @staticmethod
    def _outcomes(replies: list[list[Any]]) -> list[WriteOutcome]:
        return _outcomes(replies)

    def _commands(self, packets: Iterable[Packet], taken: list[Packet]) -> Iterator[bytes]:
        """write.lua called once per chunk of packets (a call carries many, so Redis runs one
        script per chunk and the client packs one command per chunk); ``taken`` collects the
        packets as they are read."""
        sha = self.scripts.shas[self.script]
        gte = self.gte
        chunk: list[Packet] = []
        size = FIRST_CHUNK
        for packet in packets:
            chunk.append(packet)
            if len(chunk) == size:
                yield self._command(sha, gte, chunk)
                taken += chunk
                chunk = []
                size = min(size * 3 // 2, WRITE_CHUNK)
        if chunk:
            yield self._command(sha, gte, chunk)
            taken += chunk

    @staticmethod
    def _command(
        sha: str,
        gte: bytes,
        chunk: list[Packet],
        extra_keys: Sequence[bytes] = (),
        extra_args: Sequence[bytes] = (),
        *,
        undeclared: bool = False,
    ) -> bytes:
        """``EVALSHA sha numkeys KEYS... ARGV...`` for ``chunk``, packed (RESP) here rather than
        by hiredis: its packer formats each argument's length with ``sprintf``, which made a
        tenth of the write path's instructions; a packet's arguments are one ``%`` here, and
        the parts that repeat with its variable are packed once. ``extra_keys`` and
        ``extra_args`` (packed) follow write.lua's KEYS and ARGV (iudx_write.lua's).
        ``undeclared``: numkeys 0 and the keys after the arguments, for a call that spans slots
        of a cluster's node (the redisjson backend refuses a cluster, so never with extras)."""
        names: list[bytes] = []
        args: list[bytes] = []
        for p in chunk:
            variable_keys, feed = _packed_keys(p.key)
            names.append(variable_keys)
            ts = b"%d" % p.ts_us
            mode = gte if p.version_type is None else MODES[p.version_type]
            version = b"" if p.version is None else b"%d" % p.version
            shown = b"" if p.es_version is None else b"%d" % p.es_version
            digest = p.digest.encode()
            args.append(
                b"%b$%d\r\n%b\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n%b$%d\r\n%b\r\n$%d\r\n%b\r\n"
                % (
                    _packed(p.variable_id),
                    len(ts),
                    ts,
                    len(p.raw),
                    p.raw,
                    len(digest),
                    digest,
                    len(mode),
                    mode,
                    feed,
                    len(version),
                    version,
                    len(shown),
                    shown,
                )
            )
        # write.lua's strides: four KEYS and eight ARGV per packet
        count = b"0" if undeclared else b"%d" % (4 * len(chunk) + len(extra_keys))
        head = b"*%d\r\n$7\r\nEVALSHA\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n" % (
            3 + 12 * len(chunk) + len(extra_keys) + len(extra_args),
            len(sha),
            sha.encode(),
            len(count),
            count,
        )
        if undeclared:
            return b"".join((head, *args, *names))
        return b"".join((head, *names, *extra_keys, *args, *extra_args))

    @redis_bounded
    async def mget(self, variable_ids: Sequence[str]) -> list[LatestDoc | None]:
        if len(variable_ids) == 1:  # GET /latest/{id}: no pipeline to build
            replies = [
                await self.redis.hmget(keys.latest(keys.key_for(variable_ids[0])), "v", "doc")
            ]
        else:
            pipe = self.redis.pipeline(transaction=False)
            for variable_id in variable_ids:
                pipe.hmget(keys.latest(keys.key_for(variable_id)), "v", "doc")
            replies = await pipe.execute()
        return [
            _latest_doc(variable_id, reply)
            for variable_id, reply in zip(variable_ids, replies, strict=True)
        ]

    @redis_bounded
    async def read_keys(self, variable_keys: Sequence[str]) -> list[LatestDoc | None]:
        pipe = self.redis.pipeline(transaction=False)
        for key in variable_keys:
            pipe.hmget(keys.latest(key), "v", "doc", "id", "s", "ev")
        replies = await pipe.execute()
        found: list[LatestDoc | None] = []
        for version, doc, variable_id, seq, shown in replies:
            if version is None or doc is None:
                found.append(None)
            else:
                found.append(
                    LatestDoc(
                        variable_id.decode(),
                        int(version),
                        doc,
                        int(seq or 0),
                        int(shown) if shown else None,
                    )
                )
        return found

    @redis_bounded
    async def delete(
        self, variable_id: str, key: str, version: int | None, version_type: str
    ) -> DeleteOutcome:
        gte = MODES[version_type] if version is not None else self.gte
        args = ["" if version is None else version, gte]
        reply = await self.scripts.call(self.redis, "delete", [keys.latest(key)], args)
        result, tombstone, current = reply
        return DeleteOutcome(result.decode(), int(tombstone), int(current) if current else None)

    async def ping(self) -> bool:
        """Every primary answers (of a cluster; the one Redis otherwise)."""
        try:
            return all((await each_primary(self.redis, "PING")).values())
        except CONNECTION_LOST:
            return False

    async def close(self) -> None:
        await self.redis.aclose()


def _latest_doc(variable_id: str, reply: list[Any]) -> LatestDoc | None:
    version, doc = reply
    if version is None or doc is None:
        return None
    return LatestDoc(variable_id, int(version), doc)


def _bulk_string(value: str) -> bytes:
    data = value.encode()
    return b"$%d\r\n%b\r\n" % (len(data), data)


@functools.lru_cache(maxsize=65_536)  # ids repeat: packed once per variable
def _packed(variable_id: str) -> bytes:
    return _bulk_string(variable_id)


@functools.lru_cache(maxsize=65_536)
def _packed_keys(key: str) -> tuple[bytes, bytes]:
    """A variable's write.lua KEYS, and its feed channel (an ARGV), packed."""
    return b"".join(map(_bulk_string, keys.write_keys(key))), _bulk_string(keys.feed(key))


def _outcomes(replies: list[list[Any]]) -> list[WriteOutcome]:
    """write.lua's reply for a chunk: per packet [applied, seq, epoch, current, existed, entry]."""
    return [
        WriteOutcome(
            bool(r[0]), int(r[1]), int(r[2]), int(r[3]) if r[3] else None, bool(r[4]), int(r[5])
        )
        for r in replies
    ]


@dataclass(frozen=True)
class Replicas:
    """LATEST_REDIS_WAIT_REPLICAS: a batch is acknowledged only once ``count`` replicas have it
    (``WAIT`` after its calls, on their connection: WAIT waits for that connection's writes), so
    that an acknowledged write survives the failover of its primary. 0: no WAIT, no cost."""

    count: int = 0
    timeout: float = 1.0  # seconds

    def after(self, commands: Iterator[bytes]) -> Iterator[bytes]:
        """``commands``, then WAIT if asked for."""
        if not self.count:
            return commands
        return itertools.chain(commands, (self.command(),))

    def command(self) -> bytes:
        count, ms = b"%d" % self.count, b"%d" % max(1, round(self.timeout * 1000))
        return b"*3\r\n$4\r\nWAIT\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n" % (len(count), count, len(ms), ms)

    def convert(self, reply: Any) -> list[WriteOutcome] | int:
        """A write.lua reply as outcomes; WAIT's (a number of replicas) as it is."""
        return reply if isinstance(reply, int) else _outcomes(reply)

    def check(self, reply: Any) -> None:
        """WAIT's reply: fewer replicas than asked refuse the batch (503, retried: the write
        path drops what a retry repeats)."""
        if isinstance(reply, BaseException) or int(reply) < self.count:
            raise StoreRefused(
                "NOREPLICAS",
                f"{reply} of {self.count} replicas confirmed the batch within {self.timeout} s "
                "(LATEST_REDIS_WAIT_REPLICAS): not acknowledged, retry",
            )
