"""The tokens file and ``latest-server token``: what a file must hold (each mistake named), the
token the command prints authenticates with the table it prints, and nothing but the hash is
written down."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from latest_server.access import Principal
from latest_server.auth.authenticator import Authenticator
from latest_server.auth.tokens import parse_tokens
from latest_server.errors import ConfigError, Unauthorized
from latest_server.settings import Settings
from tests.auth.helpers import secret, table, write_tokens

HASH = "0" * 64


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[tokens]\n", "not valid TOML"),
        ('tokens = "x"\n', "[[tokens]] table"),
        ('[[tokens]]\nname = "a"\nsha256 = "abc"\nscopes = ["read"]\n', "64 hex digits"),
        (f'[[tokens]]\nname = "a"\nsha256 = "{"z" * 64}"\nscopes = ["read"]\n', "hex digits"),
        (f'[[tokens]]\nname = "a"\nsha256 = "{HASH}"\nscopes = ["root"]\n', "scopes must list"),
        (f'[[tokens]]\nname = "a"\nsha256 = "{HASH}"\nscopes = []\n', "scopes must list"),
        (f'[[tokens]]\nsha256 = "{HASH}"\nscopes = ["read"]\n', "name must be"),
        (
            f'[[tokens]]\nname = "a"\nsha256 = "{HASH}"\nscopes = ["read"]\nsecret = "x"\n',
            "unknown key(s) secret",
        ),
        (
            f'[[tokens]]\nname = "a"\nsha256 = "{HASH}"\nscopes = ["read"]\nprefixes = "a/"\n',
            "prefixes must be a list",
        ),
        (f'[[tokens]]\nname = "a"\nsha256 = "{HASH}"\nscopes = ["read"]\n' * 2, "used twice"),
    ],
)
def test_a_bad_tokens_file_is_named(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as refused:
        parse_tokens(text, "tokens.toml")
    assert message in refused.value.message


def test_a_missing_file_refuses_to_start(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        Authenticator(Settings(tokens_file=str(tmp_path / "nope.toml")))


def test_the_file_holds_hashes_and_gives_principals(tmp_path: Path) -> None:
    path = write_tokens(tmp_path / "tokens.toml")
    assert secret("reader") not in path.read_text()
    assert table("reader") in path.read_text()
    authenticator = Authenticator(Settings(tokens_file=str(path)))
    assert authenticator.enabled
    assert authenticator.authenticate(secret("reader")) == Principal(
        "reader", frozenset({"read"}), prefixes=("a/",)
    )
    assert authenticator.authenticate(secret("logs")).indices == ("logs",)
    with pytest.raises(Unauthorized):
        authenticator.authenticate("lt_test_nobody")
    assert not Authenticator(Settings()).enabled


def test_the_token_command(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "latest_server",
            "token",
            "--name",
            "sensor gateway",
            "--scopes",
            "write",
            "--prefix",
            "iisc.ac.in/",
            "--index",
            "latest",
        ],
        capture_output=True,
        check=True,
        timeout=30,
    )
    token, *rest = done.stdout.decode().splitlines()
    assert token.startswith("lt_") and len(token) > 40
    path = tmp_path / "tokens.toml"
    path.write_text("\n".join(rest) + "\n")
    assert token not in path.read_text()
    principal = Authenticator(Settings(tokens_file=str(path))).authenticate(token)
    assert principal == Principal(
        "sensor gateway", frozenset({"write"}), prefixes=("iisc.ac.in/",), indices=("latest",)
    )
    bad = subprocess.run(
        [sys.executable, "-m", "latest_server", "token", "--name", "x", "--scopes", "root"],
        capture_output=True,
        timeout=30,
    )
    assert bad.returncode == 2 and b"scopes must be some of read, write, admin" in bad.stderr
