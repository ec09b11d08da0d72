"""The tokens of the access tests: a TOML tokens file written as an operator writes it (hashes
only), the secrets kept here to present them."""

from __future__ import annotations

import hashlib
from pathlib import Path

# name → (scopes, prefixes, indices); each secret is "lt_test_<name>"
TOKENS: dict[str, tuple[list[str], list[str] | None, list[str] | None]] = {
    "reader": (["read"], ["a/"], None),
    "writer": (["write"], ["a/"], None),
    "both": (["read", "write"], None, None),
    "admin": (["admin"], None, None),
    "logs": (["read", "write"], None, ["logs"]),
}


def secret(name: str) -> str:
    return f"lt_test_{name}"


def bearer(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret(name)}"}


def table(name: str) -> str:
    scopes, prefixes, indices = TOKENS[name]
    digest = hashlib.sha256(secret(name).encode()).hexdigest()
    lines = ["[[tokens]]", f'name = "{name}"', f'sha256 = "{digest}"', f"scopes = {scopes}"]
    if prefixes is not None:
        lines.append(f"prefixes = {prefixes}")
    if indices is not None:
        lines.append(f"indices = {indices}")
    return "\n".join(lines).replace("'", '"') + "\n"


def write_tokens(path: Path, names: list[str] | None = None) -> Path:
    path.write_text("# API tokens of the test\n" + "\n".join(table(n) for n in names or TOKENS))
    return path
