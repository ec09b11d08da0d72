"""What a check of ``latest-server doctor`` found: one line of the report."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from latest_server.redact import redact

Level = Literal["ok", "warn", "FAIL"]
TIMEOUT = 5.0  # seconds for each service to answer


@dataclass(frozen=True)
class Finding:
    level: Level
    area: str
    message: str
    fix: str = ""

    def line(self) -> str:
        fix = f" (fix: {self.fix})" if self.fix else ""
        return f"{self.level:<4}  {self.area:<8} {redact(self.message)}{fix}"


def ok(area: str, message: str) -> Finding:
    return Finding("ok", area, message)


def warn(area: str, message: str, fix: str = "") -> Finding:
    return Finding("warn", area, message, fix)


def fail(area: str, message: str, fix: str) -> Finding:
    return Finding("FAIL", area, message, fix)
