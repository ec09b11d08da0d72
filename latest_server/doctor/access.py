"""The checks of who may reach the server: the tokens file and the bind address."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from latest_server.access import is_loopback
from latest_server.doctor.findings import Finding, fail, ok, warn
from latest_server.settings import Settings

SCOPES = frozenset({"read", "write", "admin"})
KEYS = frozenset({"name", "sha256", "scopes", "prefixes", "indices"})
KNOWN = ", ".join(sorted(KEYS))
# The settings that configure tokens (LATEST_TOKENS_FILE, LATEST_JWT_PUBLIC_KEY_FILE,
# LATEST_JWKS_FILE), read with getattr: a build without them has no tokens.
TOKEN_SOURCES = ("tokens_file", "jwt_public_key_file", "jwks_file")


# --- tokens and the bind address -------------------------------------------------------------


def check_tokens(settings: Settings) -> list[Finding]:
    path = getattr(settings, "tokens_file", None)
    if not path:
        return [ok("tokens", "no tokens file configured")]
    file = Path(path)
    if not file.is_file():
        return [fail("tokens", f"{file} does not exist", "create it or fix LATEST_TOKENS_FILE")]
    try:
        entries = token_entries(file.read_text())
    except ValueError as exc:
        return [fail("tokens", f"{file} does not parse: {exc}", "fix its syntax")]
    problems = token_problems(entries)
    if problems:
        return [fail("tokens", f"{file}: {problem}", fix) for problem, fix in problems]
    return [ok("tokens", f"{file}: {len(entries)} tokens, names unique, stored hashed")]


def token_entries(text: str) -> list[dict[str, Any]]:
    """The ``[[tokens]]`` tables of a tokens file (TOML)."""
    try:
        parsed = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"not valid TOML ({exc})") from None
    entries = parsed.get("tokens", [])
    if set(parsed) - {"tokens"} or not isinstance(entries, list):
        raise ValueError("write each token as a [[tokens]] table, and nothing else")
    if not all(isinstance(entry, dict) for entry in entries):
        raise ValueError("write each token as a [[tokens]] table")
    return entries


def token_problems(entries: list[dict[str, Any]]) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    seen: set[str] = set()
    for number, entry in enumerate(entries, 1):
        name = entry.get("name")
        if not isinstance(name, str) or not name:
            problems.append((f"token {number} has no name", "give every token a `name`"))
            continue
        if name in seen:
            problems.append((f"token name {name!r} is used twice", "make every name unique"))
        seen.add(name)
        digest = str(entry.get("sha256", ""))
        if "token" in entry or "secret" in entry:
            problems.append(
                (f"token {name!r} is stored in clear", "keep only its sha256 in the file")
            )
        elif len(digest) != 64 or not all(c in "0123456789abcdef" for c in digest.lower()):
            problems.append(
                (f"token {name!r} has no sha256 hash", "store the hex SHA-256 of the token")
            )
        scopes = entry.get("scopes")
        if not isinstance(scopes, list) or not scopes:
            problems.append((f"token {name!r} has no scopes", "list some of read, write, admin"))
        elif set(scopes) - SCOPES:
            unknown = sorted(set(scopes) - SCOPES)
            problems.append(
                (f"token {name!r} has unknown scopes {unknown}", "use read, write, admin")
            )
        extra = sorted(set(entry) - KEYS)
        if extra:
            problems.append((f"token {name!r} has unknown keys {extra}", f"keep to {KNOWN}"))
    return problems


def check_bind(settings: Settings) -> list[Finding]:
    host = settings.host
    listeners = f"{host}:{settings.port}" + (
        f" and :{settings.es_port}" if settings.es_port else ""
    )
    if is_loopback(host):
        return [ok("bind", f"{listeners}: loopback only")]
    tokens = any(getattr(settings, name, None) for name in TOKEN_SOURCES)
    if tokens:
        return [ok("bind", f"{listeners}: reachable from the network, tokens required")]
    if getattr(settings, "insecure", False):
        return [warn("bind", f"{listeners}: open to the network without tokens (--insecure)")]
    return [
        fail(
            "bind",
            f"{listeners}: reachable from the network and no tokens are configured: anyone "
            "who reaches the port can write, delete and read everything",
            "configure LATEST_TOKENS_FILE, or bind LATEST_HOST=127.0.0.1 behind a proxy",
        )
    ]
