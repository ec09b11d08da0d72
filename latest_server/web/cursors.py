"""The opaque ``next`` cursors: of a history page (``GET /history/{id}?cursor=…``), and of a page
of variables (the last id, ``encode_id_cursor``).

A cursor is the (ts, seq) of the last entry a page returned, as URL-safe base64 of a JSON pair
without padding: the stores resume after a position (``Window.after``, ``Page.next``); how that
position travels in a URL is the web layer's business. A cursor that does not decode is a 400.
"""

from __future__ import annotations

import base64
import binascii

import orjson

from latest_server.errors import BadRequest


def encode_cursor(position: tuple[int, int]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(list(position))).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, int]:
    try:
        ts, seq = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        return int(ts), int(seq)
    except (ValueError, TypeError, binascii.Error, orjson.JSONDecodeError):
        raise BadRequest(f"invalid cursor {cursor!r}") from None


def encode_id_cursor(variable_id: str) -> str:
    """The ``next`` cursor of a page of variables (``GET /variables``, ``GET /latest?prefix=``):
    the page's last id, as URL-safe base64 of its UTF-8 without padding."""
    return base64.urlsafe_b64encode(variable_id.encode()).decode().rstrip("=")


def decode_id_cursor(cursor: str) -> str:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        variable_id = base64.b64decode(padded, altchars=b"-_", validate=True).decode()
    except (ValueError, binascii.Error):  # UnicodeDecodeError is a ValueError
        variable_id = ""
    if not variable_id:
        raise BadRequest(f"invalid cursor {cursor!r}")
    return variable_id
