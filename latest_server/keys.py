"""Identity and naming. Every Redis key, channel and object name is built here and nowhere else.

All keys of one variable carry its SHA-1 in a hash tag (``lv:{<sha1>}:…``) so they share one
Redis Cluster slot and a Lua script may touch them together.
"""

from __future__ import annotations

import functools
import hashlib

PREFIX = "lv"


@functools.lru_cache(maxsize=65_536)  # ids repeat: one sha1 per variable, not per packet
def key_for(variable_id: str, namespace: str = "") -> str:
    """The variable's key: sha1 hex of its id. Raw ids never appear in key names.

    A ``namespace`` (an Elasticsearch index other than the main one) gives the same id another
    key, derived from the id's sha1 alone, so a reader holding only ``sha1(id)`` (the Logstash
    document id convention) finds it too: see ``namespaced``."""
    return namespaced(digest(variable_id), namespace)


@functools.lru_cache(maxsize=65_536)
def digest(variable_id: str) -> str:
    """sha1 hex of a variable id: its key in the main namespace, and the Elasticsearch document
    id the reference Logstash pipeline gives it."""
    return hashlib.sha1(variable_id.encode()).hexdigest()


def namespaced(digest: str, namespace: str = "") -> str:
    """The key of the variable whose id has sha1 hex ``digest``, in ``namespace`` ('' = main)."""
    if not namespace:
        return digest
    return hashlib.sha1(f"{namespace}\x00{digest}".encode()).hexdigest()


def _k(key: str, suffix: str) -> str:
    return f"{PREFIX}:{{{key}}}:{suffix}"


def latest(key: str) -> str:
    """Hash with fields ``v`` (version, µs), ``doc`` (JSON bytes), ``id`` (variable id), ``s``
    (seq of its history entry), ``ev`` (the version as an Elasticsearch request gave it, or '')."""
    return _k(key, "latest")


def history(key: str) -> str:
    """Stream of history entries, entry id ``<seq>-0``, fields ``t`` (ts µs) and ``d`` (doc)."""
    return _k(key, "h")


def history_index(key: str) -> str:
    """Sorted set: score ts µs, member ``<seq, 16 digits><digest hex>`` (canonical.digest): dedup
    and time index."""
    return _k(key, "i")


def meta(key: str) -> str:
    """Hash with fields ``e`` (epoch), ``s`` (last seq) and ``b`` (base: the last seq before the
    epoch began, so the epoch's entries are ``b < seq <= s``) of the variable's stream, and
    ``id`` (the variable id, set with a new epoch)."""
    return _k(key, "meta")


@functools.lru_cache(maxsize=65_536)  # built for every packet written
def feed(key: str) -> str:
    """Sharded pub/sub channel carrying each new history entry."""
    return _k(key, "feed")


@functools.lru_cache(maxsize=65_536)
def write_keys(key: str) -> tuple[str, str, str, str]:
    """The KEYS of lua/write.lua, in order."""
    return latest(key), history(key), history_index(key), meta(key)


# --- the index of variables ----------------------------------------------------------------
# One sorted set of every variable id (main namespace), score 0, so ZRANGE BYLEX pages it by
# prefix (stores/variables.py). Its own hash tag: one key, one Redis Cluster slot, never touched
# by the per-variable scripts (their keys are in the variables' slots).

VARIABLES = f"{PREFIX}:{{vars}}:ids"


# --- offload and merge -------------------------------------------------------------------------

# The offload job's lock and fencing counter, in one slot of a Redis Cluster (lock_acquire.lua
# touches both).
OFFLOAD_LOCK = f"{PREFIX}:{{offload}}:lock"
OFFLOAD_FENCE = f"{PREFIX}:{{offload}}:fence"
# SCAN patterns: every live history stream, every job-owned stream.
HISTORY_PATTERN = f"{PREFIX}:*:h"
JOB_HISTORY_PATTERN = f"{PREFIX}:*:h:x:*"
META_PATTERN = f"{PREFIX}:*:meta"


def history_job(key: str, job: str) -> str:
    """The history stream while job ``job`` moves it (RENAME target, unique per job)."""
    return _k(key, f"h:x:{job}")


def history_index_job(key: str, job: str) -> str:
    return _k(key, f"i:x:{job}")


def jobs(key: str) -> str:
    """Set of job ids holding job-owned copies of this variable's history (read by readers)."""
    return _k(key, "x")


def merge_lock(key: str) -> str:
    return _k(key, "merge")


def merge_fence(key: str) -> str:
    """The fencing counter of the variable's merges (its job ids ``m<n>``), in the lock's slot."""
    return _k(key, "merge:fence")


def key_of(redis_key: str) -> str:
    """The variable key (sha1 hex) inside any ``lv:{<key>}:…`` name."""
    return redis_key[redis_key.index("{") + 1 : redis_key.index("}")]


def job_of(job_key: str) -> str:
    return job_key.rsplit(":x:", 1)[1]


# Objects. Names carry what a reader needs to skip an object without opening it: the seq range
# (and epoch or generation) and the time range. Seqs are zero-padded so names sort by seq.
OBJECT_ROOT = "history"


def history_prefix(key: str) -> str:
    return f"{OBJECT_ROOT}/{key}/"


def transfer_prefix(key: str) -> str:
    return f"{OBJECT_ROOT}/{key}/transfer/"


def merged_prefix(key: str) -> str:
    return f"{OBJECT_ROOT}/{key}/merged/"


def _span(min_seq: int, max_seq: int, min_ts: int, max_ts: int) -> str:
    return f"{min_seq:020d}-{max_seq:020d}_{min_ts}_{max_ts}.parquet"


def transfer_object(
    key: str, epoch: int, min_seq: int, max_seq: int, min_ts: int, max_ts: int
) -> str:
    """Deterministic: a retried transfer of the same entries lands on the same name."""
    return f"{transfer_prefix(key)}{epoch}-{_span(min_seq, max_seq, min_ts, max_ts)}"


def merged_object(
    key: str, generation: int, min_seq: int, max_seq: int, min_ts: int, max_ts: int
) -> str:
    return f"{merged_prefix(key)}{generation:010d}-{_span(min_seq, max_seq, min_ts, max_ts)}"


def parse_object(name: str) -> tuple[str, int, int, int, int, int]:
    """(kind, epoch or generation, min_seq, max_seq, min_ts, max_ts) of an object name."""
    kind = name.rsplit("/", 2)[-2]
    stem = name.rsplit("/", 1)[-1].removesuffix(".parquet")
    head, min_ts, max_ts = stem.split("_")
    first, min_seq, max_seq = head.split("-")
    return kind, int(first), int(min_seq), int(max_seq), int(min_ts), int(max_ts)


# --- sessions ----------------------------------------------------------------------------------
# Every session key carries the hash tag {sessions}: a session's hash, the indexes and the queues
# of the completion detector sit in one Redis Cluster slot, so one Lua script may touch them all.
# Session ids appear only as its SHA-1 (key_for) in key names, raw only in values and members.

SESSIONS = f"{PREFIX}:{{sessions}}"


def session(session_key: str) -> str:
    """Hash: ``id``, ``state``, ``created``/``updated``/``opened``/``ended``/``completed`` (µs),
    ``start``/``end`` (µs, the time range), ``count`` (history entries), ``info`` (JSON),
    ``error``, and the detector's ``cc`` (count at the last poll), ``cr`` (repeats), ``cd`` (ms)."""
    return f"{SESSIONS}:s:{session_key}"


def session_variables(session_key: str) -> str:
    """Hash: variable id → number of history entries it got in this session."""
    return f"{SESSIONS}:v:{session_key}"


def sessions_index() -> str:
    """Sorted set: every session id, score = creation time (ms)."""
    return f"{SESSIONS}:all"


def sessions_active() -> str:
    """Sorted set: open sessions the completion detector watches, score = next poll (ms)."""
    return f"{SESSIONS}:active"


def sessions_ending() -> str:
    """Sorted set: sessions whose end hook (final offload + merge) is due, score = due time (ms);
    a claimed member's score is its lease expiry."""
    return f"{SESSIONS}:ending"


def session_events() -> str:
    """Pub/sub channel (plain PUBLISH): a JSON message per session change, for the websocket hub."""
    return f"{SESSIONS}:events"


def session_keys(session_key: str) -> tuple[str, str, str, str, str]:
    """The KEYS of lua/session_apply.lua and lua/session_track.lua, in order."""
    return (
        session(session_key),
        session_variables(session_key),
        sessions_index(),
        sessions_active(),
        sessions_ending(),
    )


# --- the Elasticsearch-compatible API ----------------------------------------------------------

ES_INDICES = f"{PREFIX}:es:indices"  # set: the index names that exist (created or written to)


# --- the RedisJSON layout of IUDX readers (LATEST_BACKEND=redisjson) ---------------------------
# One RedisJSON key per resource group, outside the lv: namespace (readers name it), holding one
# member per resource: ``_<sha1>`` → its latest packet. See stores/latest_redisjson.py.


def iudx_group(prefix: str, group: str) -> str:
    """The RedisJSON key of resource group ``group``: ``<prefix><group id>`` (``iudx:…``)."""
    return f"{prefix}{group}"


def iudx_member(digest: str) -> str:
    """The legacy JSON path of a resource's member in its group key: ``._<sha1 hex>``."""
    return f"._{digest}"
