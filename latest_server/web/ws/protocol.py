"""The websocket protocol's shapes (README.md, "Live subscriptions"): close codes, the checks
of a client's ids and ``since``, and entry frames, each encoded once however many sockets get it."""

from __future__ import annotations

from typing import Any

import orjson

from latest_server.stores.ranges import Entry

CLOSE_SLOW = 4008  # "slow: resume with since" (Centrifugo uses 3008)
CLOSE_GOING_AWAY = 1001
CLOSE_TRY_AGAIN = 1013
CLOSE_SERVER_SHUTDOWN = 1012  # "service restart": what uvicorn's shutdown sends
CLOSE_POLICY = 1008  # "policy violation": no auth message in LATEST_WS_AUTH_TIMEOUT
MAX_ID_LENGTH = 1024
FRAME_CACHE = 100_000  # variables whose last entry frame is kept


def ids(message: dict[str, Any], name: str = "ids") -> list[str] | None:
    """The de-duplicated ids of ``message[name]``; None unless it is a non-empty list of ids."""
    found = message.get(name)
    if (
        not isinstance(found, list)
        or not found
        or not all(isinstance(i, str) and 0 < len(i) <= MAX_ID_LENGTH for i in found)
    ):
        return None
    return list(dict.fromkeys(found))


def since(raw: Any) -> dict[str, tuple[int, int]] | str:
    """``since`` as variable id → (epoch, seq), or the message of a ``bad_since`` error."""
    if not isinstance(raw, dict):
        return '"since" maps variable ids to [epoch, seq]'
    positions: dict[str, tuple[int, int]] = {}
    for variable_id, position in raw.items():
        if (
            not isinstance(position, list)
            or len(position) != 2
            or not all(type(n) is int and n >= 0 for n in position)
        ):
            return f"since[{variable_id!r}] must be [epoch, seq]"
        positions[variable_id] = (position[0], position[1])
    return positions


def entry(epoch: int, found: Entry) -> dict[str, Any]:
    """One entry of a backlog frame."""
    return {"epoch": epoch, "seq": found.seq, "ts": found.ts, "doc": orjson.Fragment(found.doc)}


class FrameCache:
    """Live entry frames by variable: a fan-out encodes each entry once for all its sockets."""

    def __init__(self) -> None:
        self._frames: dict[str, tuple[int, int, bytes]] = {}

    def entry(self, variable_id: str, epoch: int, seq: int, ts: int, doc: bytes) -> bytes:
        """The entry frame, encoded once for every socket that gets it."""
        cached = self._frames.get(variable_id)
        if cached is not None and cached[0] == epoch and cached[1] == seq:
            return cached[2]
        frame = orjson.dumps(
            {
                "type": "entry",
                "id": variable_id,
                "epoch": epoch,
                "seq": seq,
                "ts": ts,
                "doc": orjson.Fragment(doc),
            }
        )
        if len(self._frames) > FRAME_CACHE:
            self._frames.clear()
        self._frames[variable_id] = (epoch, seq, frame)
        return frame
