"""ObjectStore on S3 (``s3://bucket/prefix``) through boto3. Endpoint, region and credentials come
from the standard AWS configuration (``AWS_ENDPOINT_URL_S3``, ``AWS_REGION``, ``AWS_ACCESS_KEY_ID``
…). Create-only puts send ``If-None-Match: *``.

Every request is bounded: LATEST_S3_TIMEOUT to connect and between the bytes of a reply, tried
LATEST_S3_ATTEMPTS times. A store that stays silent, refuses connections or answers 5xx past
that raises ``StoreUnavailable`` (HTTP 503), so an offload job gives its lock up and a reader
gets an answer instead of waiting minutes on botocore's defaults (60 s, for each try)."""

from __future__ import annotations

import builtins
import functools
import io
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Concatenate, ParamSpec, TypeVar
from urllib.parse import urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from latest_server import metrics
from latest_server.errors import ObjectMissing, StoreUnavailable
from latest_server.settings import Settings
from latest_server.stores.base import ObjectInfo

MISSING = ("NoSuchKey", "404", "NotFound")
EXISTS = ("PreconditionFailed", "412", "ConditionalRequestConflict")
UNSATISFIABLE = ("InvalidRange", "416")  # a suffix range of an empty object
# What an opened object fetches first, its size with it: pyarrow begins every Parquet file by
# reading its last 64 KiB (the footer), so that read costs no request of its own.
TAIL_BYTES = 64 * 1024
PREFETCH_HOLE = 256 * 1024  # ranges closer than this are fetched as one
PREFETCH_PART = 4 * 1024 * 1024  # larger ranges are fetched in parts of about this size
PREFETCH_THREADS = 6  # ranged GETs of one object at a time

P = ParamSpec("P")
R = TypeVar("R")


def _bounded(
    method: Callable[Concatenate[S3ObjectStore, P], R],
) -> Callable[Concatenate[S3ObjectStore, P], R]:
    """``method``, with an S3 that cannot be reached (or answers 5xx after every try) raised as
    StoreUnavailable naming the store; its other errors (a missing object, denied access) stay."""

    @functools.wraps(method)
    def call(store: S3ObjectStore, /, *args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(store, *args, **kwargs)
        except (BotoCoreError, ClientError) as exc:  # BotoCoreError: refused, reset, timeouts
            if isinstance(exc, ClientError) and _status(exc) < 500:
                raise
            raise StoreUnavailable(f"the object store {store.url} is unavailable: {exc}") from exc

    return call


class S3ObjectStore:
    def __init__(self, url: str, *, timeout: float, attempts: int, client: Any = None) -> None:
        parts = urlsplit(url)
        self.url = url
        self.bucket = parts.netloc
        self.prefix = parts.path.strip("/")
        if self.prefix:
            self.prefix += "/"
        self.client = client or boto3.client(
            "s3",
            config=Config(
                connect_timeout=timeout,
                read_timeout=timeout,
                retries={"mode": "standard", "total_max_attempts": attempts},
                max_pool_connections=32,  # objects read side by side, each in ranges
            ),
        )
        self.requests = 0
        self.bytes_read = 0

    @classmethod
    def from_url(cls, url: str, *, settings: Settings) -> S3ObjectStore:
        return cls(url, timeout=settings.s3_timeout, attempts=settings.s3_attempts)

    def _key(self, name: str) -> str:
        return self.prefix + name

    @_bounded
    def put(self, name: str, data: bytes) -> bool:
        try:
            self.client.put_object(
                Bucket=self.bucket, Key=self._key(name), Body=data, IfNoneMatch="*"
            )
        except ClientError as exc:
            if _code(exc) in EXISTS:
                return False
            raise
        return True

    def _get(self, name: str, **options: str) -> tuple[Any, bytes]:
        """GET ``name`` (``Range=…`` in ``options``), counted: the reply and its body. A missing
        object raises ObjectMissing; other errors stay as they are."""
        try:
            reply = self.client.get_object(Bucket=self.bucket, Key=self._key(name), **options)
        except ClientError as exc:
            if _code(exc) in MISSING:
                raise ObjectMissing(f"no object {name!r}") from None
            raise
        data: bytes = reply["Body"].read()
        self.requests += 1
        self.bytes_read += len(data)
        metrics.OBJECT_READ_BYTES.inc(len(data))
        return reply, data

    @_bounded
    def get(self, name: str) -> bytes:
        return self._get(name)[1]

    @_bounded
    def get_range(self, name: str, start: int, length: int) -> bytes:
        if length <= 0:
            return b""
        return self._get(name, Range=f"bytes={start}-{start + length - 1}")[1]

    @_bounded
    def tail(self, name: str, length: int) -> tuple[int, bytes]:
        """(size of the object, its last ``length`` bytes) in one request: a suffix range."""
        try:
            reply, data = self._get(name, Range=f"bytes=-{length}")
        except ClientError as exc:
            if _code(exc) in UNSATISFIABLE:
                return self.size(name), b""
            raise
        # "bytes <first>-<last>/<size>"; a server ignoring the range sends the whole object
        content_range = reply.get("ContentRange")
        size = int(content_range.rsplit("/", 1)[1]) if content_range else len(data)
        return size, data[-length:] if length else b""

    @_bounded
    def size(self, name: str) -> int:
        try:
            reply = self.client.head_object(Bucket=self.bucket, Key=self._key(name))
        except ClientError as exc:
            if _code(exc) in MISSING:
                raise ObjectMissing(f"no object {name!r}") from None
            raise
        return int(reply["ContentLength"])

    @_bounded
    def list(self, prefix: str) -> list[ObjectInfo]:
        found = []
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key(prefix)):
            for item in page.get("Contents", []):
                found.append(ObjectInfo(item["Key"][len(self.prefix) :], int(item["Size"])))
        return sorted(found, key=lambda info: info.name)

    @_bounded
    def list_dirs(self, prefix: str) -> builtins.list[str]:
        names = []
        paginator = self.client.get_paginator("list_objects_v2")
        full = self._key(prefix)
        for page in paginator.paginate(Bucket=self.bucket, Prefix=full, Delimiter="/"):
            for item in page.get("CommonPrefixes", []):
                names.append(item["Prefix"][len(full) :].rstrip("/"))
        return sorted(names)

    @_bounded
    def delete(self, name: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(name))

    def open(self, name: str) -> Any:
        """A seekable file over ranged GETs (for pyarrow); raises ObjectMissing."""
        return RangedFile(self, name)


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


class RangedFile(io.RawIOBase):
    """A read-only, seekable file over ranged GETs, so pyarrow fetches only the row groups (and
    the footer) it needs instead of the whole object. Opening it fetches the object's size and
    last TAIL_BYTES (the footer) in one request; reads there are served from memory, and so
    are reads of what ``prefetch`` fetched."""

    def __init__(self, store: S3ObjectStore, name: str) -> None:
        super().__init__()
        self.store = store
        self.name_ = name
        self.length, self.tail = store.tail(name, TAIL_BYTES)
        self.tail_start = self.length - len(self.tail)
        self.position = 0
        self.pieces: list[tuple[int, bytes]] = []  # (start, data), from prefetch

    def prefetch(self, ranges: list[tuple[int, int]]) -> None:
        """Fetch the (start, length) ranges a reader is about to read, side by side: close
        ones as one request, long ones in parts. Column chunks of a few columns (a time range's
        keys and one number) are many small ranges, one request each when read in turn."""
        spans: list[list[int]] = []
        for start, length in sorted(ranges):
            end = min(start + length, self.tail_start)
            if end <= start:
                continue
            if spans and start - spans[-1][1] <= PREFETCH_HOLE:
                spans[-1][1] = max(spans[-1][1], end)
            else:
                spans.append([start, end])
        parts = [
            (at, min(at + PREFETCH_PART, end))
            for start, end in spans
            for at in range(start, end, PREFETCH_PART)
        ]
        if len(parts) < 2:
            self.pieces = [(a, self.store.get_range(self.name_, a, b - a)) for a, b in parts]
            return
        with ThreadPoolExecutor(min(len(parts), PREFETCH_THREADS)) as pool:
            data = list(
                pool.map(lambda p: self.store.get_range(self.name_, p[0], p[1] - p[0]), parts)
            )
        self.pieces = [(a, piece) for (a, _), piece in zip(parts, data, strict=True)]

    def _fetch(self, start: int, size: int) -> bytes:
        end = start + size
        found = self._from_pieces(start, end)
        if found is not None:
            return found
        if end <= self.tail_start:
            return self.store.get_range(self.name_, start, size)
        cut = max(start, self.tail_start)
        head = self.store.get_range(self.name_, start, cut - start) if start < cut else b""
        piece = self.tail[cut - self.tail_start : end - self.tail_start]
        return head + piece if head else piece

    def _from_pieces(self, start: int, end: int) -> bytes | None:
        """[start, end) from one prefetched part or adjacent ones, or None if they do not cover
        it."""
        out = []
        at = start
        for piece_start, piece in self.pieces:
            piece_end = piece_start + len(piece)
            if piece_start <= at < piece_end:
                take = piece[at - piece_start : min(end, piece_end) - piece_start]
                out.append(take)
                at += len(take)
                if at >= end:
                    return b"".join(out)
        return None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.length}[whence]
        self.position = max(0, base + offset)
        return self.position

    def readinto(self, buffer: Any) -> int:
        wanted = min(len(buffer), self.length - self.position)
        if wanted <= 0:
            return 0
        data = self._fetch(self.position, wanted)
        buffer[: len(data)] = data
        self.position += len(data)
        return len(data)

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            size = self.length - self.position
        size = min(size, self.length - self.position)
        if size <= 0:
            return b""
        data = self._fetch(self.position, size)
        self.position += len(data)
        return data
