"""Packets: turn message bytes into ``Packet`` objects, or into rejections with a reason code.

The timestamp, as integer microseconds since the epoch, is the packet's version. A message may be
one JSON object, a JSON array of objects, or NDJSON (one object per line).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

import orjson

from latest_server.canonical import digest
from latest_server.errors import PacketRejected, RejectReason
from latest_server.keys import key_for
from latest_server.settings import Settings
from latest_server.times import MAX_US, epoch_to_us, iso_to_us

MAX_ID_LENGTH = 1024
# orjson reads JSON nested up to 1024 levels but writes at most 254: a document nested deeper
# could be read but never stored, served or dead-lettered as it is.
MAX_DEPTH = 254
# The reserved field tying packets to a session. A string: the packet is a sample of that
# session. An object: the packet is the session document itself (its id is the session id).
SESSION_FIELD = "@session"
SESSION_STATES = ("waiting", "open", "closed", "truncated", "failed")
MAX_SESSION_INFO_BYTES = 65_536
NO_HORIZON = -MAX_US  # PacketParser.horizon_us before its clock is first read


@dataclass(frozen=True, slots=True)
class SessionDoc:
    """What a session document says: ``{"@session": {"state", "start", "end", "info", "error"}}``.

    ``state`` None means "no change" (an update of the time range or info only)."""

    state: str | None
    start_us: int | None
    end_us: int | None
    info: bytes | None  # JSON object
    error: str | None


@dataclass(slots=True)  # not frozen: a frozen __init__ costs µs on the hot path
class Packet:
    variable_id: str
    key: str  # sha1 hex of variable_id
    ts_us: int  # the version
    raw: bytes  # the document as orjson writes it (keys in the order received): stored, served
    digest: str  # sha1 hex of its canonical form (see ``canonical``): with ts_us, its identity
    session_id: str | None = None  # a sample of this session ("@session": "<id>")
    session_doc: SessionDoc | None = None  # set: this packet is a session document
    # Set by the Elasticsearch-compatible API: the request's ``version`` when it is not ts_us,
    # on the scale every path compares (µs unless LATEST_ES_VERSION_SCALE=raw; the latest
    # compare-and-set uses it, history keeps ts_us), and a per-packet rule instead of the
    # store's LATEST_VERSION_TYPE: "external", "external_gte" or "create" (no document).
    version: int | None = None
    version_type: str | None = None
    # The ``version`` as the request gave it, when that differs from ``version`` (epoch ms, say):
    # kept beside the latest document, so Elasticsearch reads show the client its own number.
    es_version: int | None = None

    @property
    def latest_version(self) -> int:
        return self.ts_us if self.version is None else self.version


@dataclass(frozen=True, slots=True)
class Rejection:
    index: int  # position of the packet in its message
    reason: RejectReason
    detail: str
    raw: bytes  # the offending bytes, for the dead-letter queue


def lookup(document: Any, path: tuple[str, ...]) -> Any:
    """The value at a dotted field's ``path`` (``"a.b"`` → ``("a", "b")``) in a decoded JSON
    document; None when a part is missing or not an object, as when the value is null."""
    for part in path:
        if not isinstance(document, dict):
            return None
        document = document.get(part)
    return document


def _unreadable(index: int, raw: bytes, exc: orjson.JSONDecodeError, what: str) -> Rejection:
    """A body or line orjson cannot read: ``too_deep`` past the nesting it reads (1024 levels),
    else ``not_json``, with where it stopped."""
    if str(exc).startswith("depth limit exceeded"):
        return Rejection(index, "too_deep", f"{what} is nested deeper than JSON readers take", raw)
    return Rejection(index, "not_json", f"{what} is not valid JSON: {exc}", raw)


class PacketParser:
    """Parses messages with the id/time rules of one ``Settings``. Pure: no I/O."""

    def __init__(self, settings: Settings) -> None:
        self.id_path = tuple(settings.id_field.split("."))
        self.time_paths = [tuple(name.split(".")) for name in settings.time_fields]
        self.time_unit = settings.time_unit
        self.default_tz = ZoneInfo(settings.default_tz) if settings.default_tz else None
        self.max_bytes = settings.max_packet_bytes
        self.max_future_us = round(settings.max_future * 1_000_000)  # 0: no bound
        # A time up to here is not too far ahead (check_future); without a bound, every time.
        self.horizon_us = NO_HORIZON if self.max_future_us else MAX_US

    def parse_message(self, body: bytes, *, ndjson: bool = False) -> list[Packet | Rejection]:
        """Every packet of a message, in order, each a ``Packet`` or a ``Rejection``."""
        return list(self.iter_message(body, ndjson=ndjson))

    def iter_message(self, body: bytes, *, ndjson: bool = False) -> Iterator[Packet | Rejection]:
        """``parse_message`` one packet at a time: a writer that sends packets as they come
        parses the rest of the message while the store writes the first ones."""
        if not ndjson:
            try:
                decoded = orjson.loads(body)
            except orjson.JSONDecodeError as exc:
                if b"\n" not in body.strip():
                    yield _unreadable(0, body, exc, "body")
                    return
            else:
                if isinstance(decoded, list):
                    for i, item in enumerate(decoded):
                        yield self.parse_document(i, item, None, body)
                else:
                    yield self.parse_document(0, decoded, body)
                return
        for index, line in enumerate(line for line in body.splitlines() if line.strip()):
            try:
                decoded = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                yield _unreadable(index, line, exc, "line")
                continue
            yield self.parse_document(index, decoded, line)

    def parse_document(
        self, index: int, document: Any, raw: bytes | None = None, message: bytes = b""
    ) -> Packet | Rejection:
        """``raw``: the document's own bytes, when the message has them (a line, a whole body);
        else a rejection carries it written again, or ``message`` when it is too deep for that
        (the array it came in, whose other packets the dead-letter queue's reader finds again
        as duplicates)."""
        try:
            return self.packet(document)
        except PacketRejected as exc:
            if raw is None:
                try:
                    raw = orjson.dumps(document)
                except orjson.JSONEncodeError:
                    raw = message
            return Rejection(index, exc.code, exc.message, raw)

    def packet(self, document: Any) -> Packet:
        """One decoded JSON value → ``Packet``, or raise ``PacketRejected``."""
        if not isinstance(document, dict):
            raise PacketRejected(
                "not_object", f"packet is a JSON {type(document).__name__}, not an object"
            )
        raw = dump(document)  # first: whatever is looked at after it is of bounded depth
        variable_id = self._variable_id(document)
        ts_us = self._timestamp(document)
        if len(raw) > self.max_bytes:
            raise PacketRejected(
                "too_large", f"packet is {len(raw)} bytes, the limit is {self.max_bytes}"
            )
        session = document.get(SESSION_FIELD)
        identity = digest(document, raw)
        if session is None:
            return Packet(variable_id, key_for(variable_id), ts_us, raw, identity)
        if isinstance(session, str) and 0 < len(session) <= MAX_ID_LENGTH:
            return Packet(
                variable_id, key_for(variable_id), ts_us, raw, identity, session_id=session
            )
        return Packet(
            variable_id,
            key_for(variable_id),
            ts_us,
            raw,
            identity,
            session_doc=self._session_doc(session),
        )

    def _session_doc(self, value: Any) -> SessionDoc:
        if not isinstance(value, dict):
            raise PacketRejected(
                "bad_session",
                f"{SESSION_FIELD} must be a session id (string) or a session document (object)",
            )
        state = value.get("state")
        if state is not None and state not in SESSION_STATES:
            raise PacketRejected(
                "bad_session",
                f"{SESSION_FIELD}.state must be one of {', '.join(SESSION_STATES)}",
            )
        bounds = []
        for name in ("start", "end"):
            bound = value.get(name)
            try:
                bound_us = None if bound is None else self._to_us(bound)
            except (ValueError, OverflowError, TypeError) as exc:
                raise PacketRejected(
                    "bad_session", f"{SESSION_FIELD}.{name} is not a time: {exc}"
                ) from None
            if bound_us is not None:
                self.check_future(bound_us, f"{SESSION_FIELD}.{name} {_preview(bound)}")
            bounds.append(bound_us)
        info = value.get("info")
        if info is not None and not isinstance(info, dict):
            raise PacketRejected("bad_session", f"{SESSION_FIELD}.info must be an object")
        info_raw = orjson.dumps(info) if info is not None else None
        if info_raw is not None and len(info_raw) > MAX_SESSION_INFO_BYTES:
            raise PacketRejected(
                "bad_session", f"{SESSION_FIELD}.info is larger than {MAX_SESSION_INFO_BYTES} bytes"
            )
        error = value.get("error")
        return SessionDoc(
            state, bounds[0], bounds[1], info_raw, None if error is None else str(error)[:4096]
        )

    def versioned(
        self,
        document: dict[str, Any],
        raw: bytes,
        variable_id: str,
        key: str,
        sent: int | None,
        version_type: str | None,
        compared: Callable[[int], int],
    ) -> Packet:
        """A packet of a writer that names the variable and the version itself (the
        Elasticsearch-compatible API): ``raw`` is ``dump(document)``, ``variable_id`` and
        ``key`` come from the caller's own id rules, ``sent`` is the version as the request
        gave it (None: none) and ``compared`` maps it to the scale every path compares.

        The history time is the document's time field when it has a usable one (``document_time``),
        else ``sent`` read as an epoch time, else the arrival time: a document is refused for
        its time only when that is past LATEST_MAX_FUTURE (``future_time``; a ``sent`` that far
        ahead, on a scale that allows it, gives the arrival time). ``@session`` is not read:
        such a writer stores documents as they are.
        Raises ``too_large`` before anything of the version is looked at, and ``future_time``
        for a document time past LATEST_MAX_FUTURE (``compared`` bounds the version itself)."""
        if len(raw) > self.max_bytes:
            raise PacketRejected(
                "too_large", f"packet is {len(raw)} bytes, the limit is {self.max_bytes}"
            )
        version = sent if sent is None else compared(sent)
        # Positional: a dataclass __init__ called with keywords costs more, once per document.
        return Packet(
            variable_id,
            key,
            self._stamp(document, sent),
            raw,
            digest(document, raw),
            None,
            None,
            version,
            version_type,
            None if sent == version else sent,
        )

    def id_text(self, document: dict[str, Any]) -> str | None:
        """The id field as text when it is a string or an integer (a boolean is neither), else
        None. Not checked for length: the caller of ``versioned`` has an id of its own to fall
        back on, and decides."""
        value = lookup(document, self.id_path)
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            return None
        return str(value)

    def document_time(self, document: dict[str, Any]) -> int | None:
        """The time of the first time field the document has, in µs; None when it has none or
        that one is unusable (where ingest refuses with ``missing_time`` or ``bad_time``)."""
        value = self._time_value(document)
        if value is None:
            return None
        try:
            return self.time_to_us(value)
        except PacketRejected:
            return None

    def _stamp(self, document: dict[str, Any], sent: int | None) -> int:
        found = self.document_time(document)
        if found is not None:
            self.check_future(found, f"document time {_preview(self._time_value(document))}")
            return found
        now = time.time_ns() // 1000
        if sent is not None:
            ts_us = epoch_to_us(sent, self.time_unit)
            if ts_us < MAX_US and not (self.max_future_us and ts_us > now + self.max_future_us):
                return ts_us
        return now

    def _variable_id(self, document: dict[str, Any]) -> str:
        text = self.id_text(document)
        if text is None:
            if lookup(document, self.id_path) is None:
                raise PacketRejected(
                    "missing_id", f"packet has no {'.'.join(self.id_path)!r} field"
                )
            raise PacketRejected("bad_id", "id must be a string or an integer")
        if not text or len(text) > MAX_ID_LENGTH:
            raise PacketRejected("bad_id", f"id must have 1 to {MAX_ID_LENGTH} characters")
        return text

    def _time_value(self, document: dict[str, Any]) -> Any:
        """The value of the first time field present (not null), or None."""
        for path in self.time_paths:
            value = lookup(document, path)
            if value is not None:
                return value
        return None

    def _timestamp(self, document: dict[str, Any]) -> int:
        value = self._time_value(document)
        if value is None:
            names = ", ".join(".".join(path) for path in self.time_paths)
            raise PacketRejected("missing_time", f"packet has none of the time fields {names}")
        ts_us = self.time_to_us(value)
        if ts_us > self.horizon_us:  # check_future's first line, inlined: once per packet
            self.check_future(ts_us, f"time {_preview(value)}")
        return ts_us

    def time_to_us(self, value: Any) -> int:
        """A time as ingest reads it (ISO-8601 or an epoch number) → µs; else bad_time."""
        try:
            ts_us = self._to_us(value)
        except (ValueError, OverflowError, TypeError) as exc:
            raise PacketRejected("bad_time", f"unusable time {_preview(value)}: {exc}") from None
        if not -MAX_US < ts_us < MAX_US:
            raise PacketRejected("bad_time", f"time {_preview(value)} is out of range")
        return ts_us

    def check_future(self, ts_us: int, what: str) -> None:
        """``future_time`` when ``ts_us`` is further ahead of the server clock than
        LATEST_MAX_FUTURE: one packet dated years ahead would otherwise be the latest value
        for ever (every later packet is older), a poisoning no one can undo.

        The clock is read only for a time past ``horizon_us``, the bound as of the last
        reading (reading it costs more than the rest of the check): an old horizon is
        stricter than the clock, never laxer, and is moved on before anything is refused."""
        if ts_us <= self.horizon_us or not self.max_future_us:
            return
        self.horizon_us = time.time_ns() // 1000 + self.max_future_us
        if ts_us > self.horizon_us:
            raise PacketRejected(
                "future_time",
                f"{what} is more than {self.max_future_us / 1e6:g} s ahead of the server clock "
                "(LATEST_MAX_FUTURE)",
            )

    def _to_us(self, value: Any) -> int:
        if isinstance(value, bool):
            raise ValueError("a boolean is not a time")
        if isinstance(value, (int, float)):
            return epoch_to_us(value, self.time_unit)
        if isinstance(value, str):
            text = value.strip()
            if len(text) > 10 and text[4] == "-":  # the common case, ISO-8601: skip float()
                return iso_to_us(text, self.default_tz)
            try:
                number = float(text)
            except ValueError:
                return iso_to_us(text, self.default_tz)
            return epoch_to_us(int(text) if text.lstrip("-").isdigit() else number, self.time_unit)
        raise ValueError(f"a JSON {type(value).__name__} is not a time")


def dump(document: Any) -> bytes:
    """The document as orjson writes it; ``too_deep`` past MAX_DEPTH levels of nesting."""
    try:
        return orjson.dumps(document)
    except orjson.JSONEncodeError:  # orjson's only failure on what it read: recursion
        raise PacketRejected(
            "too_deep", f"packet is nested deeper than {MAX_DEPTH} levels"
        ) from None


def _preview(value: Any) -> str:
    """A value quoted in a message: a string or number cut short; an array or object named,
    never written out (it may be nested deeper than ``str`` can recurse)."""
    if isinstance(value, (dict, list)):
        return f"(a JSON {'object' if isinstance(value, dict) else 'array'})"
    return repr(str(value)[:64])
