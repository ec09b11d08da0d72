"""http(s)://host:port[/path]: POST each message to /ingest (or to the URL's own path)."""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson

from ingest_client.errors import TransportError
from ingest_client.transports.base import DEFAULT_TIMEOUT

log = logging.getLogger(__name__)

HEADERS = {"content-type": "application/json"}
TRANSIENT_STATUS = {408, 425, 429}


def ingest_url(url: str) -> str:
    path = urlsplit(url).path
    return url.rstrip("/") + "/ingest" if path in ("", "/") else url


def _check(response: httpx.Response) -> None:
    status = response.status_code
    if status == 200:
        rejected = orjson.loads(response.content).get("rejected") or []
        if rejected:
            log.warning("the server refused %d packet(s): %s", len(rejected), rejected[:3])
        return
    transient = status >= 500 or status in TRANSIENT_STATUS
    raise TransportError(
        f"POST /ingest answered {status}: {response.text[:300]}", transient=transient
    )


class HttpTransport:
    def __init__(self, url: str, *, timeout: float = DEFAULT_TIMEOUT, **options: Any) -> None:
        self.url = ingest_url(url)
        self.client = httpx.Client(timeout=timeout)

    def publish(self, message: bytes) -> None:
        try:
            response = self.client.post(self.url, content=message, headers=HEADERS)
        except httpx.HTTPError as exc:
            raise TransportError(f"POST {self.url} failed: {exc!r}") from exc
        _check(response)

    def close(self) -> None:
        self.client.close()


class AsyncHttpTransport:
    def __init__(self, url: str, *, timeout: float = DEFAULT_TIMEOUT, **options: Any) -> None:
        self.url = ingest_url(url)
        self.client = httpx.AsyncClient(timeout=timeout)

    async def publish(self, message: bytes) -> None:
        try:
            response = await self.client.post(self.url, content=message, headers=HEADERS)
        except httpx.HTTPError as exc:
            raise TransportError(f"POST {self.url} failed: {exc!r}") from exc
        _check(response)

    async def close(self) -> None:
        await self.client.aclose()
