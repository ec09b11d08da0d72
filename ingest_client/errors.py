"""The client's errors. Everything it raises on purpose is a ``ClientError``."""

from __future__ import annotations

from typing import Any


class ClientError(Exception):
    """Base of the client's errors."""


class TransportError(ClientError):
    """Publishing failed. ``transient`` errors (a lost connection, a 5xx, an unroutable message,
    no answer within the transport's timeout) are retried with backoff; others (a 4xx: the
    server refused the data) are not."""

    def __init__(self, message: str, *, transient: bool = True) -> None:
        super().__init__(message)
        self.transient = transient


class BufferFull(ClientError):
    """The sample buffer stayed full for the whole block timeout: the transport cannot keep up."""


class FlushFailed(ClientError):
    """Buffered data could not be published (raised at the final flush, never swallowed).

    ``unsent`` holds every packet that was not confirmed, in the order they were added (samples,
    and the session's own documents), as plain JSON values: the caller can keep them, or send
    them again later. A packet whose message was in flight when the close gave up may have
    reached the server all the same; sending it again is harmless (the server keeps one history
    entry per packet)."""

    def __init__(self, message: str, *, unsent: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.unsent: list[dict[str, Any]] = [] if unsent is None else unsent


class Terminated(BaseException):
    """Raised in the main thread on SIGTERM while a ``Session`` is open: the session ends
    ``truncated``, like on Ctrl+C. A BaseException so that ``except Exception`` does not eat it."""
