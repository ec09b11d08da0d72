"""Sessions: a group of variables written by one producer run, with a state and a time range.

States go ``waiting → open → closed | truncated | failed``; the completion detector may also move
an ``open`` session to ``complete`` (its producer never said it ended), from which the producer
can still end it. A session is created by its first session document, or by its first sample
(then ``open``). Entering an end state, or ``complete``, queues the session's end hook — the final
offload and merge of its variables — which ``SessionEnds`` runs at least once across all server
processes (a claim with a lease in Redis, so it survives restarts and crashes).

How packets reach a session (see packets.SESSION_FIELD): a sample carries ``"@session": "<id>"``
and is written like any packet, then counted here; a session document carries ``"@session":
{"state": …, "start": …, "end": …, "info": {…}, "error": …}`` (its id is the session id) and is
applied here instead of being written as a variable. Every change is published as JSON on the
``keys.session_events()`` channel for the websocket hub.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import KW_ONLY, dataclass, field
from typing import Any

import orjson

from latest_server import keys
from latest_server.errors import RejectReason, StoreUnavailable
from latest_server.packets import Packet
from latest_server.redis_client import REDIS_DOWN, Client, Scripts, redis_bounded

log = logging.getLogger(__name__)

STATES = ("waiting", "open", "complete", "closed", "truncated", "failed")
END_STATES = ("closed", "truncated", "failed")
# What an end hook raises when a store is away rather than because it failed: retried for as
# long as it takes (StoreUnavailable, or redis-py's own errors from the merge's Redis calls).
STORE_AWAY = (StoreUnavailable, *REDIS_DOWN)


@dataclass(frozen=True, slots=True)
class Session:
    """A session as stored. Times are µs since the epoch."""

    id: str
    state: str
    created: int
    updated: int
    count: int  # history entries written by its samples
    start: int | None = None  # time range of its samples (and of its documents' start/end)
    end: int | None = None
    opened: int | None = None
    ended: int | None = None  # when it entered an end state
    completed: int | None = None  # when the completion detector declared it complete
    info: dict[str, Any] | None = None
    error: str | None = None
    implicit: bool = False  # created by a sample, not by a session document
    variables: dict[str, int] = field(default_factory=dict)  # id → entries (filled by get())

    def to_json(self, *, with_variables: bool = True) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.id,
            "state": self.state,
            "created": self.created,
            "updated": self.updated,
            "start": self.start,
            "end": self.end,
            "count": self.count,
            "opened": self.opened,
            "ended": self.ended,
            "completed": self.completed,
            "info": self.info,
            "error": self.error,
        }
        if with_variables:
            body["variables"] = self.variables
        return body


# The end hook: called once a session ended or completed, with the ids of its variables.
# This is where the final offload + merge plugs in.
EndHook = Callable[[Session, list[str]], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Refusal:
    """A session document that could not be applied."""

    index: int  # position in the packets given to apply()
    reason: RejectReason
    detail: str


class SessionStore:
    """Session state in Redis. Every change is one Lua script call, pipelined per batch."""

    def __init__(self, redis: Client, scripts: Scripts, *, completion_delay: float = 30.0) -> None:
        self.redis = redis
        self.scripts = scripts
        self.delay_ms = max(1, round(completion_delay * 1000))
        self.channel = keys.session_events()

    async def _call(self, name: str, keys_: Sequence[str], args: Sequence[Any]) -> Any:
        return await self.scripts.call(self.redis, name, keys_, args)

    @redis_bounded
    async def apply(self, documents: Sequence[tuple[int, Packet]]) -> list[Refusal]:
        """Apply session documents, in order, in one round trip. Returns the refused ones."""
        if not documents:
            return []
        calls = []
        for _, packet in documents:
            doc = packet.session_doc
            assert doc is not None
            calls.append(
                (
                    keys.session_keys(keys.key_for(packet.variable_id)),
                    [
                        packet.variable_id,
                        doc.state or "",
                        "" if doc.start_us is None else doc.start_us,
                        "" if doc.end_us is None else doc.end_us,
                        doc.info or b"",
                        doc.error or "",
                        self.delay_ms,
                        self.channel,
                    ],
                )
            )
        replies = await self.scripts.pipelined(self.redis, "session_apply", calls)
        refused = []
        for (index, packet), (outcome, previous) in zip(documents, replies, strict=True):
            if outcome == b"rejected":
                assert packet.session_doc is not None
                refused.append(
                    Refusal(
                        index,
                        "bad_transition",
                        f"session {packet.variable_id!r} is {previous.decode()}: it cannot "
                        f"become {packet.session_doc.state}",
                    )
                )
        return refused

    @redis_bounded
    async def track(self, packets: Sequence[Packet], seqs: Sequence[int]) -> None:
        """Count the new history entries (``seq`` > 0) of session samples, per session, and widen
        each session's time range: one script call per session per batch.

        This runs after the history write, in a second round trip: a crash in between loses the
        count of that batch (the redelivered packets are duplicates and are not counted again),
        which only delays completion, never loses data."""
        batches: dict[str, _Tally] = {}
        for packet, seq in zip(packets, seqs, strict=True):
            if packet.session_id is None or seq == 0:
                continue
            tally = batches.get(packet.session_id)
            if tally is None:
                tally = batches[packet.session_id] = _Tally(packet.ts_us, packet.ts_us)
            tally.add(packet)
        if not batches:
            return
        calls = []
        for session_id, tally in batches.items():
            pairs: list[Any] = []
            for variable_id, n in tally.variables.items():
                pairs += [variable_id, n]
            args = [session_id, tally.entries, tally.min_ts, tally.max_ts, self.delay_ms]
            calls.append(
                (keys.session_keys(keys.key_for(session_id)), [*args, self.channel, *pairs])
            )
        await self.scripts.pipelined(self.redis, "session_track", calls)

    @redis_bounded
    async def get(self, session_id: str) -> Session | None:
        k = keys.key_for(session_id)
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(keys.session(k))
        pipe.hgetall(keys.session_variables(k))
        fields, variables = await pipe.execute()
        if not fields:
            return None
        return _session(fields, variables)

    @redis_bounded
    async def recent(self, *, state: str | None = None, limit: int = 100) -> list[Session]:
        """The newest sessions first (without their variables), optionally in one state."""
        found: list[Session] = []
        offset = 0
        page = max(limit, 100)
        while len(found) < limit:
            ids: Any = await self.redis.zrevrange(keys.sessions_index(), offset, offset + page - 1)
            if not ids:
                break
            offset += len(ids)
            pipe = self.redis.pipeline(transaction=False)
            for session_id in ids:
                pipe.hgetall(keys.session(keys.key_for(session_id.decode())))
            for fields in await pipe.execute():
                if not fields:
                    continue
                session = _session(fields, {})
                if state is None or session.state == state:
                    found.append(session)
        return found[:limit]

    @redis_bounded
    async def variables(self, session_id: str) -> list[str]:
        names: Any = await self.redis.hkeys(keys.session_variables(keys.key_for(session_id)))
        return sorted(name.decode() for name in names)

    # --- the completion detector's and the end runner's primitives (used by completion.py) ---

    async def due(self, queue: str, limit: int = 100) -> list[str]:
        """Session ids whose due time (by the Redis clock) has passed, in ``queue``."""
        now_s, now_us = await self.redis.time()
        now_ms = now_s * 1000 + now_us // 1000
        ids: Any = await self.redis.zrangebyscore(queue, "-inf", now_ms, start=0, num=limit)
        return [session_id.decode() for session_id in ids]

    async def next_due_in(self, queue: str) -> float | None:
        """Seconds until the earliest due time in ``queue`` (0 if past), None if it is empty."""
        first: Any = await self.redis.zrange(queue, 0, 0, withscores=True)
        if not first:
            return None
        now_s, now_us = await self.redis.time()
        return max(0.0, (float(first[0][1]) - (now_s * 1000 + now_us / 1000)) / 1000)

    async def poll(self, session_id: str, *, repeats: int, shrink: float) -> int:
        """One completion-detector step (lua/session_poll.lua): 0 not due, 1 polled, 2 complete."""
        reply = await self._call(
            "session_poll",
            keys.session_keys(keys.key_for(session_id)),
            [session_id, repeats, self.delay_ms, shrink, self.channel],
        )
        return int(reply)

    async def claim(self, session_id: str, lease: float) -> bytes | None:
        token = await self._call(
            "session_claim", [keys.sessions_ending()], [session_id, max(1, round(lease * 1000))]
        )
        return token if isinstance(token, bytes) else None

    async def release(
        self, session_id: str, token: bytes, *, retry_in: float | None = None, error: str = ""
    ) -> bool:
        reply = await self._call(
            "session_release",
            [keys.sessions_ending(), keys.session(keys.key_for(session_id))],
            [
                session_id,
                token,
                "" if retry_in is None else max(1, round(retry_in * 1000)),
                error[:4096],
            ],
        )
        return bool(reply)


class _Tally:
    __slots__ = ("entries", "max_ts", "min_ts", "variables")

    def __init__(self, min_ts: int, max_ts: int) -> None:
        self.entries = 0
        self.min_ts = min_ts
        self.max_ts = max_ts
        self.variables: dict[str, int] = {}

    def add(self, packet: Packet) -> None:
        self.entries += 1
        ts = packet.ts_us
        if ts < self.min_ts:
            self.min_ts = ts
        elif ts > self.max_ts:
            self.max_ts = ts
        self.variables[packet.variable_id] = self.variables.get(packet.variable_id, 0) + 1


@dataclass(eq=False)
class SessionEnds:
    """Runs the end hook of sessions that ended or completed, at least once, in any process.

    A due session is claimed for ``lease`` seconds (its score in the ending queue becomes the lease
    expiry); the hook runs; the claim is released. A hook that raises is retried with backoff, up
    to ``max_attempts``, or for as long as it takes when it raised StoreUnavailable or a Redis
    connection error (a store that is away comes back; the merge must still run then); a process
    that dies mid-hook is replaced when the lease expires. The hook must therefore be idempotent
    (the merge is)."""

    store: SessionStore
    on_end: EndHook | None
    _: KW_ONLY
    lease: float = 300.0
    retry: float = 1.0
    max_attempts: int = 8
    failures: dict[str, int] = field(default_factory=dict, init=False)

    async def step(self) -> int:
        """Run the hook of every due session; returns how many hooks ran to completion."""
        done = 0
        for session_id in await self.store.due(keys.sessions_ending()):
            token = await self.store.claim(session_id, self.lease)
            if token is None:
                continue  # another process holds it
            if await self._run(session_id, token):
                done += 1
        return done

    async def _run(self, session_id: str, token: bytes) -> bool:
        session = await self.store.get(session_id)
        if session is None:
            await self.store.release(session_id, token)
            return False
        started = time.monotonic()
        try:
            if self.on_end is not None:
                await self.on_end(session, sorted(session.variables))
        except (
            Exception
        ) as exc:  # the hook is someone else's code: log, retry, never crash the loop
            attempts = self.failures.get(session_id, 0) + 1
            self.failures[session_id] = attempts
            if attempts >= self.max_attempts and not isinstance(exc, STORE_AWAY):
                log.error("end hook of session %r failed %d times; giving up", session_id, attempts)
                await self.store.release(session_id, token)
                await self.store.redis.hset(
                    keys.session(keys.key_for(session_id)), "end_error", str(exc)[:4096]
                )
                self.failures.pop(session_id, None)
                return False
            delay = min(self.retry * 2 ** (attempts - 1), 60.0)
            log.warning(
                "end hook of session %r failed (%s); retrying in %.1fs", session_id, exc, delay
            )
            await self.store.release(session_id, token, retry_in=delay, error=str(exc))
            return False
        self.failures.pop(session_id, None)
        if not await self.store.release(session_id, token):
            log.warning(
                "end hook of session %r took %.1fs, longer than its lease: it may run again",
                session_id,
                time.monotonic() - started,
            )
        return True


def _int(value: bytes | None) -> int | None:
    return None if value is None else int(value)


def _session(fields: dict[bytes, bytes], variables: dict[bytes, bytes]) -> Session:
    info = fields.get(b"info")
    error = fields.get(b"error")
    return Session(
        id=fields[b"id"].decode(),
        state=fields.get(b"state", b"open").decode(),
        created=int(fields[b"created"]),
        updated=int(fields.get(b"updated", fields[b"created"])),
        count=int(fields.get(b"count", b"0")),
        start=_int(fields.get(b"start")),
        end=_int(fields.get(b"end")),
        opened=_int(fields.get(b"opened")),
        ended=_int(fields.get(b"ended")),
        completed=_int(fields.get(b"completed")),
        info=orjson.loads(info) if info else None,
        error=error.decode() if error is not None else None,
        implicit=fields.get(b"implicit") == b"1",
        variables={name.decode(): int(n) for name, n in variables.items()},
    )
