"""Elasticsearch-shaped errors: small classes, each rendered in one place (``EsError.body``).

A request-level error answers ``{"error": {"root_cause": [<cause>], **<cause>}, "status": N}``;
a ``_bulk`` or ``_mget`` item carries the bare cause (no ``root_cause``), as Elasticsearch does.
"""

from __future__ import annotations

import base64
import functools
import hashlib
from typing import Any, ClassVar

from latest_server.errors import BadRequest, LatestError, PacketRejected, StoreUnavailable

# Elasticsearch reports an index's uuid next to write conflicts; ours is fixed per index name.
SHARD = "0"


class EsError(Exception):
    """An error with its HTTP status and ES ``type``, both given as class keywords
    (``class TooLarge(EsError, status=413, type="content_too_long_exception")``)."""

    status: ClassVar[int] = 500
    type: ClassVar[str] = "exception"

    def __init_subclass__(cls, status: int | None = None, type: str | None = None) -> None:
        super().__init_subclass__()
        if status is not None:
            cls.status = status
        if type is not None:
            cls.type = type

    def __init__(self, reason: str, **extra: Any) -> None:
        super().__init__(reason)
        self.reason = reason
        self.extra = extra

    def cause(self) -> dict[str, Any]:
        """The bare error object (a bulk or mget item's ``error``)."""
        return {"type": self.type, "reason": self.reason, **self.extra}

    def body(self) -> dict[str, Any]:
        cause = self.cause()
        return {"error": {"root_cause": [cause], **cause}, "status": self.status}


def _on_index(index: str, *, known: bool, shard: bool = False) -> dict[str, str]:
    """The ``index_uuid``/``shard``/``index`` fields ES puts next to an index's errors
    (``_na_`` as the uuid of an index that does not exist)."""
    extra = {"index_uuid": index_uuid(index) if known else "_na_"}
    if shard:
        extra["shard"] = SHARD
    extra["index"] = index
    return extra


class IllegalArgument(EsError, status=400, type="illegal_argument_exception"):
    pass


class Unsupported(EsError, status=400, type="illegal_argument_exception"):
    """A part of the search DSL outside the subset latest-server answers (docs/elasticsearch.md,
    "Searches"): named in the reason, never ignored, so no answer is silently wrong."""

    def __init__(self, part: str, detail: str = "") -> None:
        super().__init__(
            f"[{part}] is not supported by latest-server" + (f": {detail}" if detail else "")
        )


class TooManyBuckets(EsError, status=400, type="too_many_buckets_exception"):
    def __init__(self, limit: int) -> None:
        super().__init__(
            "Trying to create too many buckets. Must be less than or equal to: "
            f"[{limit}] but was [{limit + 1}]. This limit can be set by changing the "
            "[LATEST_ES_SEARCH_MAX_BUCKETS] setting.",
            max_buckets=limit,
        )


class ValidationFailed(EsError, status=400, type="action_request_validation_exception"):
    """``Validation Failed: 1: <a>;2: <b>;`` from the list of problems."""

    def __init__(self, *problems: str) -> None:
        numbered = "".join(f"{i}: {p};" for i, p in enumerate(problems, 1))
        super().__init__(f"Validation Failed: {numbered}")


class ParseError(EsError, status=400, type="parse_exception"):
    pass


class DocumentParsing(EsError, status=400, type="document_parsing_exception"):
    """A source that is not a JSON object (ES ≥ 8.8; ``mapper_parsing_exception`` before)."""


class InvalidIndexName(EsError, status=400, type="invalid_index_name_exception"):
    def __init__(self, index: str, why: str) -> None:
        super().__init__(f"Invalid index name [{index}], {why}", **_on_index(index, known=False))


class AlreadyExists(EsError, status=400, type="resource_already_exists_exception"):
    def __init__(self, index: str) -> None:
        super().__init__(
            f"index [{index}/{index_uuid(index)}] already exists", **_on_index(index, known=True)
        )


class IndexNotFound(EsError, status=404, type="index_not_found_exception"):
    def __init__(self, index: str) -> None:
        super().__init__(
            f"no such index [{index}]",
            **{"resource.type": "index_expression", "resource.id": index},
            **_on_index(index, known=False),
        )


class DocumentMissing(EsError, status=404, type="document_missing_exception"):
    def __init__(self, index: str, doc_id: str) -> None:
        super().__init__(
            f"[{doc_id}]: document missing", **_on_index(index, known=True, shard=True)
        )


class ResourceNotFound(EsError, status=404, type="resource_not_found_exception"):
    pass


class VersionConflict(EsError, status=409, type="version_conflict_engine_exception"):
    def __init__(self, index: str, doc_id: str, detail: str) -> None:
        super().__init__(
            f"[{doc_id}]: version conflict, {detail}", **_on_index(index, known=True, shard=True)
        )


class TooLarge(EsError, status=413, type="content_too_long_exception"):
    pass


CHALLENGE = 'Basic realm="latest-server", ApiKey, Bearer'


class NotAuthenticated(EsError, status=401, type="security_exception"):
    """No credentials, or ones that are not valid; the response carries ``WWW-Authenticate``."""

    def __init__(self, reason: str) -> None:
        challenges = ['Basic realm="latest-server"', "ApiKey", "Bearer"]
        super().__init__(reason, header={"WWW-Authenticate": challenges})


class SecurityForbidden(EsError, status=403, type="security_exception"):
    """Valid credentials (or none needed) that do not allow the request."""


class ActionUnauthorized(SecurityForbidden):
    def __init__(self, action: str, user: str, why: str = "") -> None:
        super().__init__(f"action [{action}] is unauthorized for user [{user}]{why}")


class Unavailable(EsError, status=503, type="unavailable_shards_exception"):
    """The store is unreachable: clients and Logstash retry a 503."""


class NoHandler(EsError, status=400):
    """Unknown route: ES answers a plain string error."""

    def __init__(self, method: str, path: str) -> None:
        super().__init__(f"no handler found for uri [{path}] and method [{method}]")

    def body(self) -> dict[str, Any]:
        return {"error": self.reason, "status": self.status}


class MethodNotAllowed(NoHandler, status=405):
    def __init__(self, method: str, path: str, allowed: list[str]) -> None:
        EsError.__init__(
            self,
            f"Incorrect HTTP method for uri [{path}] and method [{method}], "
            f"allowed: [{', '.join(allowed)}]",
        )


def from_latest_error(exc: LatestError) -> EsError:
    """Errors of the core (errors.py) as Elasticsearch would say them."""
    if isinstance(exc, StoreUnavailable):
        return Unavailable(exc.message)
    if isinstance(exc, PacketRejected):
        return DocumentParsing(exc.message)
    if isinstance(exc, BadRequest):
        return IllegalArgument(exc.message)
    return EsError(exc.message)


@functools.lru_cache(maxsize=1024)  # on every stale _bulk item
def index_uuid(index: str) -> str:
    """A stable 22-character uuid for an index name (ES shows one next to write conflicts)."""
    return base64.urlsafe_b64encode(hashlib.sha1(index.encode()).digest()).decode()[:22]
