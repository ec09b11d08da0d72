"""Request bodies sent with ``Content-Encoding: gzip`` (Logstash compresses every ``_bulk``, the
official client with ``http_compress=True``), decoded for ``POST /ingest`` and the
Elasticsearch-compatible API alike.

A gzip stream may be several members back to back (RFC 1952 §2.2: ``cat a.gz b.gz`` is valid
gzip, and so is what a streaming compressor emits once per flush); every member is decoded, in
order. A stream that stops before its last member's trailer, or has anything but zero padding
after it, is refused: decoding only what came first would acknowledge packets that were never
read. The size limit holds on the decoded bytes, member after member, so a small body cannot
inflate past it (a gzip bomb costs at most ``limit`` bytes of output).
"""

from __future__ import annotations

import zlib

from latest_server.errors import BadRequest

GZIP = ("gzip", "x-gzip")
IDENTITY = ("", "identity")
GZIP_WBITS = 16 + zlib.MAX_WBITS  # a gzip header and trailer around deflate data


class BadEncoding(BadRequest):
    """A body we cannot decode: damaged, truncated, or in an encoding we do not speak."""

    reason = "bad_encoding"


def decode(raw: bytes, content_encoding: str | None, limit: int) -> bytes | None:
    """The body as sent before compression; None once it decodes past ``limit`` bytes."""
    encoding = (content_encoding or "").strip().lower()
    if encoding in IDENTITY:
        return raw
    if encoding in GZIP:
        return gunzip(raw, limit)
    raise BadEncoding(
        f"Content-Encoding [{content_encoding}] is not supported: send gzip or no encoding"
    )


def gunzip(data: bytes, limit: int) -> bytes | None:
    """Every member of a gzip stream, concatenated; None past ``limit`` decoded bytes."""
    if not data:
        return b""
    out: list[bytes] = []
    size = 0
    member = 0
    while True:
        member += 1
        inflater = zlib.decompressobj(GZIP_WBITS)
        try:
            chunk = inflater.decompress(data, limit + 1 - size)
        except zlib.error as exc:
            raise BadEncoding(f"request body is not valid gzip (member {member}): {exc}") from None
        size += len(chunk)
        if size > limit or inflater.unconsumed_tail:
            return None
        if not inflater.eof:
            raise BadEncoding(
                f"request body is truncated gzip: member {member} ends before its trailer"
            )
        out.append(chunk)
        data = inflater.unused_data.lstrip(b"\0")  # zero padding after a member, as gzip(1)
        if not data:
            return b"".join(out)
