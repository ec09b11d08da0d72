"""Who is asking: the ``Principal`` a request or a websocket acts as, and what it may touch.

The web layer's guard (``web/guard.py``, with ``auth/``) resolves each request's credentials to a
``Principal`` and stores it in the ASGI scope; every other piece (routes, limits, metrics, the
access log) reads it with ``principal_of``. With no tokens configured every request is
``ANONYMOUS``, which may do everything (the server then keeps to loopback).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

READ = "read"
WRITE = "write"
ADMIN = "admin"
SCOPES = (READ, WRITE, ADMIN)

SCOPE_KEY = "latest.principal"  # the key in the ASGI scope
# In a websocket's scope: a callable, secret → Principal (raising errors.Unauthorized), for a
# client that sends its token in its first message rather than in the upgrade's headers.
AUTHENTICATE_KEY = "latest.authenticate"


@dataclass(frozen=True)
class Principal:
    name: str  # the token's name (never the secret): logs, metrics, limits
    scopes: frozenset[str]
    prefixes: tuple[str, ...] | None = None  # variable-id prefixes; None: every variable
    indices: tuple[str, ...] | None = None  # Elasticsearch index names; None: every index
    authenticated: bool = True

    def can(self, scope: str) -> bool:
        return scope in self.scopes or ADMIN in self.scopes

    def covers(self, variable_id: str) -> bool:
        return self.prefixes is None or variable_id.startswith(self.prefixes)

    def covers_index(self, index: str) -> bool:
        return self.indices is None or index in self.indices


ANONYMOUS = Principal("anonymous", frozenset(SCOPES), authenticated=False)
# A websocket that has not authenticated yet, where tokens are needed: may do nothing.
NOBODY = Principal("nobody", frozenset(), authenticated=False)


def principal_of(scope: Mapping[str, Any]) -> Principal:
    """The principal of an ASGI scope; ``ANONYMOUS`` if none was set."""
    principal = scope.get(SCOPE_KEY)
    return principal if isinstance(principal, Principal) else ANONYMOUS


def set_principal(scope: MutableMapping[str, Any], principal: Principal) -> None:
    scope[SCOPE_KEY] = principal


def client_key(scope: Mapping[str, Any]) -> str:
    """What per-client limits count by: the token's name when authenticated, else the client's
    address."""
    principal = principal_of(scope)
    if principal.authenticated:
        return "token:" + principal.name
    client = scope.get("client")
    return "addr:" + (client[0] if client else "unknown")


def is_loopback(host: str) -> bool:
    """Whether a bind address reaches only this machine: what may be served without tokens."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name other than localhost: it may resolve anywhere
