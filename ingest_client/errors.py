"""The client's errors. Everything it raises on purpose is a ``ClientError``."""

from __future__ import annotations


class ClientError(Exception):
    """Base of the client's errors."""


class TransportError(ClientError):
    """Publishing failed. ``transient`` errors (a lost connection, a 5xx, an unroutable message)
    are retried with backoff; others (a 4xx: the server refused the data) are not."""

    def __init__(self, message: str, *, transient: bool = True) -> None:
        super().__init__(message)
        self.transient = transient


class BufferFull(ClientError):
    """The sample buffer stayed full for the whole block timeout: the transport cannot keep up."""


class FlushFailed(ClientError):
    """Buffered data could not be published (raised at the final flush, never swallowed)."""


class Terminated(BaseException):
    """Raised in the main thread on SIGTERM while a ``Session`` is open: the session ends
    ``truncated``, like on Ctrl+C. A BaseException so that ``except Exception`` does not eat it."""
