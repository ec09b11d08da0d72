"""How the server's log lines look: text (the default) or JSON lines (LATEST_LOG_FORMAT=json),
both through ``redact``, so that no password of a URL is ever printed.

The access log (logger ``latest_server.access``, one line per HTTP request and websocket
connection, written by web/observe.py) passes its fields in the record's ``access``
attribute: the text line is its message, a JSON line has the fields themselves.
"""

from __future__ import annotations

import logging
import time
from contextvars import ContextVar
from typing import Any

import orjson

from latest_server.redact import RedactingFormatter, redact

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
ACCESS_LOGGER = "latest_server.access"
# The id of the request being answered (web/observe.py sets it): a JSON line logged while
# answering it carries it, so that its errors and its access line can be matched.
REQUEST_ID: ContextVar[str | None] = ContextVar("request_id", default=None)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (ISO 8601, UTC), level, logger, message, the access
    log's fields when the record has them, and the traceback as ``exception``."""

    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, Any] = {
            "time": _iso(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "access", None)
        if isinstance(fields, dict):
            body.update(fields)
        elif (request_id := REQUEST_ID.get()) is not None:
            body["request_id"] = request_id
        if record.exc_info:
            body["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            body["exception"] = record.exc_text
        return redact(orjson.dumps(body, default=str).decode())


def _iso(created: float) -> str:
    seconds = int(created)
    millis = int((created - seconds) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


class TextFormatter(RedactingFormatter):
    """``TEXT_FORMAT`` through ``redact``, the time of day formatted once per second (an access
    log line per request would otherwise format it each time)."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)
        self._second = -1
        self._stamp = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        second = int(record.created)
        if second != self._second:
            self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", self.converter(second))
            self._second = second
        return f"{self._stamp},{int(record.msecs):03d}"


def formatter(log_format: str) -> logging.Formatter:
    """The formatter of LATEST_LOG_FORMAT: ``text`` or ``json``."""
    if log_format == "json":
        return JsonFormatter()
    return TextFormatter()


def handler(log_format: str) -> logging.Handler:
    """The server's one handler (standard error, LATEST_LOG_FORMAT). Log records stop looking
    for what no line of ours prints (the caller's file and line, thread and process names:
    Python's logging HOWTO, "Optimization"): a fifth of the cost of an access log line."""
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    stream = logging.StreamHandler()
    stream.setFormatter(formatter(log_format))
    return stream
