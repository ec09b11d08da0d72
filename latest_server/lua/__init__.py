"""Lua scripts, one file each, with a KEYS/ARGV/returns header."""

from __future__ import annotations

from importlib import resources


def source(name: str) -> str:
    return resources.files(__name__).joinpath(f"{name}.lua").read_text()
