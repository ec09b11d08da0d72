"""http(s)://[user:token@]host:port[/path]: POST each message to /ingest (or to the URL's own
path); a token in the URL goes as HTTP Basic (httpx), which the server reads as the token.

``timeout`` bounds connecting and each read and write (httpx); the async transport also bounds
the whole request by it, so a server that stops answering is a ``TransportError``, never a
hang. An answer that is not the server's JSON is an error too (not an exception from the
decoder that would stop the flusher)."""

from __future__ import annotations

import asyncio
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


def shown(url: str) -> str:
    """``url`` for messages: a token given as its password (``http://user:<token>@host``, sent
    as HTTP Basic) is never written out."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return parts._replace(netloc=netloc).geturl()


def _check(response: httpx.Response) -> None:
    status = response.status_code
    if status == 200:
        try:
            answer = orjson.loads(response.content)
            rejected = answer.get("rejected") or [] if isinstance(answer, dict) else None
        except orjson.JSONDecodeError:
            rejected = None
        if rejected is None:
            raise TransportError(
                f"POST /ingest answered 200 without its JSON summary: {response.text[:300]!r}",
                transient=False,
            )
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
        self.shown = shown(self.url)
        self.client = httpx.Client(timeout=timeout)

    def publish(self, message: bytes) -> None:
        try:
            response = self.client.post(self.url, content=message, headers=HEADERS)
        except httpx.HTTPError as exc:
            raise TransportError(f"POST {self.shown} failed: {exc!r}") from exc
        _check(response)

    def close(self) -> None:
        self.client.close()


class AsyncHttpTransport:
    def __init__(self, url: str, *, timeout: float = DEFAULT_TIMEOUT, **options: Any) -> None:
        self.url = ingest_url(url)
        self.shown = shown(self.url)
        self.timeout = timeout
        self.client = httpx.AsyncClient(timeout=timeout)

    async def publish(self, message: bytes) -> None:
        try:
            async with asyncio.timeout(self.timeout):
                response = await self.client.post(self.url, content=message, headers=HEADERS)
        except TimeoutError as exc:
            raise TransportError(f"POST {self.shown}: no answer within {self.timeout}s") from exc
        except httpx.HTTPError as exc:
            raise TransportError(f"POST {self.shown} failed: {exc!r}") from exc
        _check(response)

    async def close(self) -> None:
        await self.client.aclose()
