"""The building blocks of settings/: ``setting()`` declares one (its environment variable, its
default, its parser and its help, from which the CLI flag and the README's table follow), and the
parsers turn the environment's text into a value or raise ValueError saying what it must be
(settings/__init__.py names the variable in the ConfigError)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import field
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError


def text(value: str) -> str:
    return value


def optional_url(value: str) -> str | None:
    return value or None


def port(value: str) -> int:
    number = int(value)
    if not 0 <= number <= 65535:
        raise ValueError("must be between 0 and 65535")
    return number


def positive_int(value: str) -> int:
    number = int(value)
    if number <= 0:
        raise ValueError("must be a positive integer")
    return number


def positive_float(value: str) -> float:
    number = float(value)
    if not number > 0:
        raise ValueError("must be a positive number")
    return number


def ratio(value: str) -> float:
    number = float(value)
    if not 0 < number <= 1:
        raise ValueError("must be a number in (0, 1]")
    return number


def non_negative_int(value: str) -> int:
    number = int(value)
    if number < 0:
        raise ValueError("must be 0 or a positive integer")
    return number


def non_negative_float(value: str) -> float:
    number = float(value)
    if not number >= 0:
        raise ValueError("must be 0 or a positive number")
    return number


DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def duration(value: str) -> float:
    """Seconds, plain or with a unit: ``300``, ``300s``, ``15m``, ``6h``, ``1d``; 0 or more."""
    text = value.strip().lower()
    factor = DURATION_UNITS.get(text[-1:], 0)
    number = float(text[:-1] if factor else text) * (factor or 1)
    if not number >= 0 or number == float("inf"):
        raise ValueError("must be a duration such as 300 (seconds), 300s, 15m, 6h or 1d")
    return number


def boolean(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("must be true or false")


def names(value: str) -> tuple[str, ...]:
    names = tuple(part.strip() for part in value.split(",") if part.strip())
    if not names:
        raise ValueError("must name at least one value (comma-separated)")
    return names


def optional_names(value: str) -> tuple[str, ...]:
    """A comma-separated list that may be empty."""
    return tuple(part.strip() for part in value.split(",") if part.strip())


def optional_text(value: str) -> str | None:
    return value or None


def choice(*choices: str) -> Callable[[str], str]:
    def parse(value: str) -> str:
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return value

    return parse


def zone(value: str) -> str | None:
    if not value:
        return None
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError("must be an IANA time zone such as UTC or Europe/Paris") from exc
    return value


def path_prefix(value: str) -> str | None:
    if not value:
        return None
    if not value.startswith("/") or value == "/" or value.endswith("/"):
        raise ValueError("must be a path such as /es (a leading /, no trailing /)")
    return value


def setting(env: str, default: Any, parse: Callable[[str], Any], help: str) -> Any:
    return field(default=default, metadata={"env": env, "parse": parse, "help": help})
