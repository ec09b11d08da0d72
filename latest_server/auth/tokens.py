"""Static API tokens: a TOML file of ``[[tokens]]`` tables, each a ``name``, the ``sha256`` (hex)
of the secret, its ``scopes`` and, optionally, the variable-id ``prefixes`` and Elasticsearch
``indices`` it is limited to. Only hashes are stored; a presented token is hashed and looked up by
its hash (so the time taken says nothing about a stored secret), then compared in constant
time. ``new_token`` makes a secret and the table that grants it (``latest-server token``)."""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import tomllib
from typing import Any

from latest_server.access import SCOPES, Principal
from latest_server.errors import ConfigError

TOKEN_PREFIX = "lt_"  # a generated token: easy to find in a leaked file, never a JWT


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _strings(entry: dict[str, Any], field: str, where: str) -> tuple[str, ...] | None:
    value = entry.get(field)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{where}: {field} must be a list of non-empty strings")
    return tuple(value)


def parse_tokens(text: str, source: str = "tokens file") -> dict[str, tuple[str, Principal]]:
    """sha256 hex → (the hash as written, the token's Principal)."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source} is not valid TOML: {exc}") from None
    entries = document.get("tokens", [])
    if not isinstance(entries, list):
        raise ConfigError(f"{source}: write each token as a [[tokens]] table")
    unknown = set(document) - {"tokens"}
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {', '.join(sorted(unknown))}")
    found: dict[str, tuple[str, Principal]] = {}
    names: set[str] = set()
    for position, entry in enumerate(entries, 1):
        where = f"{source}, token {position}"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: must be a table")
        extra = set(entry) - {"name", "sha256", "scopes", "prefixes", "indices"}
        if extra:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(extra))}")
        name, hashed = entry.get("name"), entry.get("sha256")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{where}: name must be a non-empty string")
        where = f"{source}, token {name!r}"
        if name in names:
            raise ConfigError(f"{where}: the name is used twice")
        names.add(name)
        if not isinstance(hashed, str) or len(hashed) != 64:
            raise ConfigError(f"{where}: sha256 must be the 64 hex digits of the token's SHA-256")
        try:
            bytes.fromhex(hashed)
        except ValueError:
            raise ConfigError(f"{where}: sha256 must be hex digits") from None
        scopes = _strings(entry, "scopes", where)
        if not scopes or not set(scopes) <= set(SCOPES):
            raise ConfigError(f"{where}: scopes must list some of {', '.join(SCOPES)}")
        principal = Principal(
            name,
            frozenset(scopes),
            prefixes=_strings(entry, "prefixes", where),
            indices=_strings(entry, "indices", where),
        )
        found[hashed.lower()] = (hashed.lower(), principal)
    return found


def load_tokens(path: str) -> dict[str, tuple[str, Principal]]:
    try:
        with open(path, encoding="utf-8") as file:
            text = file.read()
    except OSError as exc:
        raise ConfigError(f"cannot read LATEST_TOKENS_FILE {path}: {exc.strerror}") from None
    return parse_tokens(text, path)


def lookup(tokens: dict[str, tuple[str, Principal]], token: str) -> Principal | None:
    hashed = digest(token)
    found = tokens.get(hashed)
    if found is None or not hmac.compare_digest(found[0], hashed):
        return None
    return found[1]


def new_token(
    name: str,
    scopes: tuple[str, ...],
    prefixes: tuple[str, ...] = (),
    indices: tuple[str, ...] = (),
) -> tuple[str, str]:
    """A new secret, and the TOML table to append to LATEST_TOKENS_FILE for it."""
    bad = set(scopes) - set(SCOPES)
    if not scopes or bad:
        raise ConfigError(f"scopes must be some of {', '.join(SCOPES)}")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    lines = [
        "[[tokens]]",
        f"name = {_toml_string(name)}",
        f'sha256 = "{digest(token)}"',
        f"scopes = [{', '.join(_toml_string(s) for s in scopes)}]",
    ]
    if prefixes:
        lines.append(f"prefixes = [{', '.join(_toml_string(p) for p in prefixes)}]")
    if indices:
        lines.append(f"indices = [{', '.join(_toml_string(i) for i in indices)}]")
    return token, "\n".join(lines) + "\n"


def _toml_string(value: str) -> str:
    return json.dumps(value)  # a JSON string is a TOML basic string
