"""Passwords out of everything we print: ``redact`` masks the password of every URL in a text
(``redis://:secret@host`` → ``redis://:***@host``, and ``?password=``), and ``RedactingFormatter``
applies it to every log line, tracebacks included. REDIS_URL, AMQP_URL, ELASTICSEARCH_URL and
OBJECTS_URL may carry credentials, and any of them can end up in a message (an error naming the
store it could not reach, a library logging its connection)."""

from __future__ import annotations

import logging
import re

_USERINFO = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://[^/@\s:]*:)[^@\s]*@")
_QUERY = re.compile(r"(?P<head>[?&](?:password|pass|pwd)=)[^&\s]*", re.IGNORECASE)
MASK = "***"


def redact(text: str) -> str:
    """``text`` with the password of every URL in it masked; the rest (user, host) stays, to
    say which server was meant."""
    # Each pattern only where it can match: a log line without a URL (an access log line has
    # "=" but no "?" or "&") costs two substring tests, not two regex scans.
    if "://" in text:
        text = _USERINFO.sub(rf"\g<head>{MASK}@", text)
    if "=" in text and ("?" in text or "&" in text):
        text = _QUERY.sub(rf"\g<head>{MASK}", text)
    return text


class RedactingFormatter(logging.Formatter):
    """A Formatter whose lines (message and traceback alike) pass through ``redact``."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))
