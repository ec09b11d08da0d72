"""The error tree. Every error has a stable ``reason`` code; edges translate them once."""

from __future__ import annotations

from typing import Literal, get_args

RejectReason = Literal[
    "not_json",
    "not_object",
    "missing_id",
    "bad_id",
    "missing_time",
    "bad_time",
    "future_time",  # dated further ahead of the server clock than LATEST_MAX_FUTURE
    "too_large",
    "too_deep",  # nested deeper than a document can be stored (packets.MAX_DEPTH)
    "bad_session",  # a session document ("@session" object) that is malformed
    "bad_transition",  # a session document asking for a state change the session cannot make
    "forbidden",  # a variable outside the prefixes of the request's token
]
REJECT_REASONS: tuple[RejectReason, ...] = get_args(RejectReason)


class LatestError(Exception):
    reason: str = "error"

    def __init__(self, message: str = "", *, reason: str | None = None) -> None:
        super().__init__(message or self.reason)
        if reason is not None:
            self.reason = reason

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else self.reason


class ConfigError(LatestError):
    """A setting has a value we cannot use; the message names the variable."""

    reason = "bad_setting"


class PacketRejected(LatestError):
    """A packet that can never be written. Goes to the dead-letter queue / a 4xx item."""

    def __init__(self, reason: RejectReason, message: str = "") -> None:
        super().__init__(message or reason, reason=reason)
        self.code: RejectReason = reason


class BadRequest(LatestError):
    reason = "bad_request"


class NotFound(LatestError):
    reason = "not_found"


class Unauthorized(LatestError):
    """No credentials where they are needed, or ones that are not valid (unknown, expired, badly
    signed): 401."""

    reason = "unauthorized"


class Forbidden(LatestError):
    """Valid credentials that do not allow this request (a scope, a prefix, an index, an
    Origin): 403."""

    reason = "forbidden"


class StoreUnavailable(LatestError):
    """A store could not be reached; the caller retries (nothing was acknowledged)."""

    reason = "store_unavailable"


class StoreRefused(StoreUnavailable):
    """Redis is reachable but refuses commands for now: out of memory, a read-only replica after a
    failover, a script running, failed persistence, loading (``condition`` is Redis' error code,
    "OOM", "READONLY", ...). It passes by itself or by what the server does (offload frees memory),
    so it is retried as unavailability is: nothing acknowledged, nothing lost."""

    def __init__(self, condition: str, message: str = "") -> None:
        super().__init__(message or f"Redis refused the command ({condition})")
        self.condition = condition


class UnsafeRedisConfig(LatestError):
    """Redis would silently lose data (an evicting maxmemory-policy)."""

    reason = "unsafe_redis_config"


class ObjectMissing(LatestError):
    """A listed object is gone (a merge deleted it): re-list."""

    reason = "object_missing"
