"""``Authenticator``: a presented secret → the ``Principal`` it acts as, from the API tokens file
and the JWT keys together, each reread when it changes (looked at, at most once a second, when
used) and on SIGHUP (runner.py, ``reload``). Results are cached: an API token by its secret until
the file changes, a JWT until its ``exp`` (or a key file changes), so a request pays a dict
lookup. A token removed from the file is refused from the reread on."""

from __future__ import annotations

import logging
import time

from latest_server.access import Principal
from latest_server.auth import jwts, tokens
from latest_server.auth.watched import Watched
from latest_server.errors import Unauthorized
from latest_server.settings import Settings

log = logging.getLogger("latest_server.auth")

CACHE_SIZE = 4096  # secrets remembered; past it the cache starts again
FOREVER = float("inf")  # an API token is valid until the file changes


class Authenticator:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._cache: dict[str, tuple[Principal, float]] = {}  # secret → (principal, valid until)
        self._tokens: Watched[dict[str, tuple[str, Principal]]] | None = None
        self._keys: Watched[jwts.Keys] | None = None
        if settings.tokens_file:
            self._tokens = Watched(
                settings.tokens_file, tokens.load_tokens, "LATEST_TOKENS_FILE", self._cache.clear
            )
        if settings.jwks_file:
            self._keys = Watched(
                settings.jwks_file, jwts.load_jwks, "LATEST_JWKS_FILE", self._cache.clear
            )
        elif settings.jwt_public_key_file:
            self._keys = Watched(
                settings.jwt_public_key_file,
                jwts.load_pem,
                "LATEST_JWT_PUBLIC_KEY_FILE",
                self._cache.clear,
            )

    @property
    def enabled(self) -> bool:
        """Whether credentials are needed: a tokens file or a JWT key is configured."""
        return self._tokens is not None or self._keys is not None

    def describe(self) -> str:
        parts = []
        if self._tokens is not None:
            parts.append(f"{len(self._tokens.value)} API token(s) from {self._tokens.path}")
        if self._keys is not None:
            parts.append(f"JWTs verified with {self._keys.path}")
        return " and ".join(parts) or "no tokens"

    def reload(self) -> None:
        """Reread every file now (SIGHUP)."""
        for watched in (self._tokens, self._keys):
            if watched is not None:
                watched.reload()
        self._cache.clear()

    def authenticate(self, secret: str) -> Principal:
        """The Principal of ``secret`` (an API token or a JWT), or ``Unauthorized``."""
        if self._tokens is not None:
            self._tokens.check()
        if self._keys is not None:
            self._keys.check()
        cached = self._cache.get(secret)
        if cached is not None:
            principal, until = cached
            if until == FOREVER or until > time.time():
                return principal
            del self._cache[secret]
        principal, until = self._resolve(secret)
        if len(self._cache) >= CACHE_SIZE:
            self._cache.clear()
        self._cache[secret] = (principal, until)
        return principal

    def _resolve(self, secret: str) -> tuple[Principal, float]:
        if self._tokens is not None:
            found = tokens.lookup(self._tokens.value, secret)
            if found is not None:
                return found, FOREVER
        if self._keys is not None and secret.count(".") == 2:
            return jwts.verify(secret, self._keys.value, self.settings)
        raise Unauthorized("the token is not valid")
