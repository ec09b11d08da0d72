"""Subscribe to variables over the server's websocket, resuming by itself after a disconnect.

    async for item in subscribe("ws://localhost:8000/ws", ["city/aqm-1"]):
        if isinstance(item, Entry):
            print(item.id, item.seq, item.doc)

The helper remembers, per variable, the last ``(epoch, seq)`` it yielded (or that the server
said it is live at) and reconnects with ``since`` those positions, with exponential backoff and
jitter, so a dropped connection or a server restart costs neither a gap nor a duplicate.
A ``Reset`` says the server's history of a variable started a new epoch (Redis lost its data)
or that a range of it is lost; entries of the new epoch follow.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import websockets
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

RECONNECT_MAX = 10.0


@dataclass(frozen=True, slots=True)
class Entry:
    id: str
    epoch: int
    seq: int
    ts: int  # µs since the epoch
    doc: Any


@dataclass(frozen=True, slots=True)
class Reset:
    id: str
    epoch: int
    lost: tuple[int, int] | None  # an inclusive seq range that is gone; None: a new epoch


class SubscriptionError(Exception):
    """The server refused a request (an ``error`` frame)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason


async def subscribe(
    url: str,
    ids: Sequence[str],
    *,
    since: dict[str, tuple[int, int]] | None = None,
    from_time: str | int | None = None,
    latest: bool = False,
    reconnect: bool = True,
    max_reconnects: int | None = None,
    token: str | None = None,
) -> AsyncIterator[Entry | Reset]:
    """Entries of ``ids`` in seq order per variable: history (everything, or ``since``
    positions, or ``from_time`` on, or only the ``latest`` document), then live ones.

    With ``reconnect`` (the default) a lost connection is retried forever, or ``max_reconnects``
    times in a row, resuming from the positions seen; otherwise the iterator ends with it.
    ``token``: the server's API token (or JWT), sent in the upgrade's ``Authorization``."""
    extra = {"Authorization": f"Bearer {token}"} if token else None
    positions: dict[str, tuple[int, int]] = dict(since or {})
    attempts = 0
    while True:
        try:
            async with websockets.connect(url, max_size=None, additional_headers=extra) as ws:
                await _subscribe(ws, ids, positions, from_time, latest)
                attempts = 0
                async for raw in ws:
                    for item in _items(orjson.loads(raw), positions):
                        yield item
            # The connection ended without an error (a server restarting closes with 1001 or
            # 1012): resume all the same.
            if not reconnect:
                return
        except InvalidStatus as exc:
            if exc.response.status_code in (401, 403):  # the token: retrying will not help
                raise
            if not reconnect or (max_reconnects is not None and attempts >= max_reconnects):
                raise
        except (ConnectionClosed, InvalidHandshake, OSError, TimeoutError):
            if not reconnect or (max_reconnects is not None and attempts >= max_reconnects):
                raise
        attempts += 1
        delay = min(RECONNECT_MAX, 0.1 * 2 ** min(attempts, 10))
        await asyncio.sleep(delay * random.uniform(0.5, 1.0))


async def _subscribe(
    ws: Any,
    ids: Sequence[str],
    positions: dict[str, tuple[int, int]],
    from_time: str | int | None,
    latest: bool,
) -> None:
    resume = [i for i in ids if i in positions]
    fresh = [i for i in ids if i not in positions]
    if resume:
        since = {i: list(positions[i]) for i in resume}
        await ws.send(orjson.dumps({"op": "subscribe", "ids": resume, "since": since}).decode())
    if fresh:
        request: dict[str, Any] = {"op": "subscribe", "ids": fresh}
        if from_time is not None:
            request["from"] = from_time
        elif latest:
            request["latest"] = True
        await ws.send(orjson.dumps(request).decode())


def _items(frame: dict[str, Any], positions: dict[str, tuple[int, int]]) -> list[Entry | Reset]:
    kind = frame.get("type")
    if kind == "entry":
        return _entries(frame["id"], [frame], positions)
    if kind == "backlog":
        return _entries(frame["id"], frame["entries"], positions)
    if kind == "live" and frame.get("epoch") is not None:
        positions[frame["id"]] = (frame["epoch"], frame["seq"])
        return []
    if kind == "reset":
        lost = tuple(frame["lost"]) if frame.get("lost") else None
        if lost is not None:  # history goes on after lost, or after "seq" when it went back
            positions[frame["id"]] = (frame["epoch"], frame.get("seq", lost[1]))
        else:
            positions.pop(frame["id"], None)
        return [Reset(frame["id"], frame["epoch"], lost)]  # type: ignore[arg-type]
    if kind == "error":
        raise SubscriptionError(frame.get("reason", "error"), frame.get("message", ""))
    return []


def _entries(
    variable_id: str, entries: list[dict[str, Any]], positions: dict[str, tuple[int, int]]
) -> list[Entry | Reset]:
    out: list[Entry | Reset] = []
    for e in entries:
        known = positions.get(variable_id)
        if known is not None and known[0] == e["epoch"] and e["seq"] <= known[1]:
            continue  # already yielded (a "latest" document repeated by a resume)
        positions[variable_id] = (e["epoch"], e["seq"])
        out.append(Entry(variable_id, e["epoch"], e["seq"], e["ts"], e["doc"]))
    return out
