"""A logging handler that turns log records carrying a variable and a value into samples::

    log.addHandler(IngestHandler(session))
    log.info("sample", extra={"variable": "speed", "value": 3.2})

Records without both ``variable`` and ``value`` are ignored. Optional ``ts`` and ``fields``
(a dict of extra packet fields) in ``extra`` are passed on; the time defaults to the record's.
"""

from __future__ import annotations

import logging
from typing import Any

from ingest_client.async_session import AsyncSession
from ingest_client.session import Session


class IngestHandler(logging.Handler):
    def __init__(self, session: Session | AsyncSession, level: int = logging.NOTSET) -> None:
        super().__init__(level)
        self.session = session

    def emit(self, record: logging.LogRecord) -> None:
        attributes = record.__dict__
        if "variable" not in attributes or "value" not in attributes:
            return
        fields: dict[str, Any] = attributes.get("fields") or {}
        ts = attributes.get("ts", record.created)
        try:
            if isinstance(self.session, Session):
                self.session.sample(attributes["variable"], attributes["value"], ts, **fields)
            else:  # inside the event loop: never block it
                self.session.sample_nowait(
                    attributes["variable"], attributes["value"], ts, **fields
                )
        except Exception:
            self.handleError(record)
