"""ObjectStore on a local directory (``file:///path``): the embedded default and a fast test
backend. Create-only puts use O_EXCL on a temporary file and an atomic link, so a reader never
sees a partial object."""

from __future__ import annotations

import builtins
import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from latest_server import metrics
from latest_server.errors import ObjectMissing
from latest_server.settings import Settings
from latest_server.stores.base import ObjectInfo


class FileObjectStore:
    def __init__(self, url: str) -> None:
        self.url = url
        self.root = Path(unquote(urlsplit(url).path)).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.requests = 0
        self.bytes_read = 0

    @classmethod
    def from_url(cls, url: str, *, settings: Settings) -> FileObjectStore:
        return cls(url)

    def _path(self, name: str) -> Path:
        path = (self.root / name).resolve()
        if self.root not in path.parents:
            raise ValueError(f"object name escapes the store: {name!r}")
        return path

    def put(self, name: str, data: bytes) -> bool:
        path = self._path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            try:
                os.link(tmp, path)  # atomic, and fails if the name exists: create-only
            except FileExistsError:
                return False
            return True
        finally:
            os.unlink(tmp)

    def get(self, name: str) -> bytes:
        try:
            data = self._path(name).read_bytes()
        except FileNotFoundError:
            raise ObjectMissing(f"no object {name!r}") from None
        self.requests += 1
        self.bytes_read += len(data)
        metrics.OBJECT_READ_BYTES.inc(len(data))
        return data

    def get_range(self, name: str, start: int, length: int) -> bytes:
        try:
            with self._path(name).open("rb") as handle:
                handle.seek(start)
                data = handle.read(length)
        except FileNotFoundError:
            raise ObjectMissing(f"no object {name!r}") from None
        self.requests += 1
        self.bytes_read += len(data)
        metrics.OBJECT_READ_BYTES.inc(len(data))
        return data

    def size(self, name: str) -> int:
        try:
            return self._path(name).stat().st_size
        except FileNotFoundError:
            raise ObjectMissing(f"no object {name!r}") from None

    def list(self, prefix: str) -> list[ObjectInfo]:
        base = self._path(prefix.rsplit("/", 1)[0]) if "/" in prefix else self.root
        if not base.is_dir():
            return []
        found = []
        for path in base.rglob("*"):
            if path.name.startswith(".tmp-") or not path.is_file():
                continue
            name = path.relative_to(self.root).as_posix()
            if name.startswith(prefix):
                with contextlib.suppress(FileNotFoundError):
                    found.append(ObjectInfo(name, path.stat().st_size))
        return sorted(found, key=lambda info: info.name)

    def list_dirs(self, prefix: str) -> builtins.list[str]:
        base = self._path(prefix) if prefix else self.root
        if not base.is_dir():
            return []
        return sorted(path.name for path in base.iterdir() if path.is_dir())

    def open(self, name: str) -> Any:
        """The object as a seekable file (for pyarrow); raises ObjectMissing."""
        try:
            return CountingFile(self, self._path(name).open("rb"))
        except FileNotFoundError:
            raise ObjectMissing(f"no object {name!r}") from None

    def delete(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(name).unlink()


class CountingFile:
    """A local file that counts reads like the S3 store does, so benchmarks compare alike."""

    def __init__(self, store: FileObjectStore, handle: Any) -> None:
        self.store = store
        self.handle = handle
        self.closed = False

    def read(self, size: int = -1) -> bytes:
        data: bytes = self.handle.read(size)
        self.store.requests += 1
        self.store.bytes_read += len(data)
        metrics.OBJECT_READ_BYTES.inc(len(data))
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        return int(self.handle.seek(offset, whence))

    def tell(self) -> int:
        return int(self.handle.tell())

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return False

    def close(self) -> None:
        self.closed = True
        self.handle.close()

    def __enter__(self) -> CountingFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
