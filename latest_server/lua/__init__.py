"""Lua scripts, one file each, with a KEYS/ARGV/returns header."""

from __future__ import annotations

from importlib import resources

# Scripts built on another's functions: the other's text up to its driver (the line starting with
# DRIVER), then the script's own file, its driver.
BUILT_ON = {"iudx_write": "write"}
DRIVER = "-- driver:"


def source(name: str) -> str:
    text = _read(name)
    base = BUILT_ON.get(name)
    if base is None:
        return text
    functions, found, _ = _read(base).partition(f"\n{DRIVER}")
    if not found:
        raise RuntimeError(f"lua/{base}.lua has no {DRIVER!r} line for lua/{name}.lua")
    return f"{functions}\n{text}"


def _read(name: str) -> str:
    return resources.files(__name__).joinpath(f"{name}.lua").read_text()
