"""The access guard: one pure ASGI middleware in front of every route of both listeners. For
each request or websocket upgrade it

1. checks a browser's ``Origin`` (websocket upgrades and POST/PUT/PATCH/DELETE): the request's
   own host, or one of LATEST_ALLOWED_ORIGINS / LATEST_CORS_ORIGINS, else 403, so that a page of
   another site can neither open a websocket nor send a ``text/plain`` POST;
2. with tokens configured (auth/: LATEST_TOKENS_FILE, a JWT key), resolves the credentials of
   ``Authorization`` (``Bearer <token>``; ``Basic base64(user:token)``, the user ignored;
   ``ApiKey base64(id:token)`` or ``ApiKey <token>``) to a ``Principal``, or answers 401;
3. checks the route's scope (403 if the principal lacks it) and, on the Elasticsearch-compatible
   API, the index the path names (web/es/authz.py), then stores the principal in the scope
   (``access.set_principal``) for the routes, limits, metrics and logs.

Variable prefixes are checked where the ids are known: the REST routes (``_request.covered``,
``/ingest`` per packet), the websocket per subscribed id, the ES writer and reads per document.
A websocket upgrade without credentials is let in as ``NOBODY``: it authenticates with its first
message (``{"type": "auth", "token": ...}``, web/ws/endpoint.py). ``/healthz``, ``/readyz``,
``/openapi.json`` and ``/docs`` (with its assets)
are always open. Without tokens every request is ``ANONYMOUS`` (the runner keeps the server on
loopback then)."""

from __future__ import annotations

import base64
import binascii
from urllib.parse import unquote, urlsplit

import orjson
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket

from latest_server.access import AUTHENTICATE_KEY, NOBODY, READ, SCOPE_KEY, WRITE, Principal
from latest_server.auth.authenticator import Authenticator
from latest_server.errors import Unauthorized
from latest_server.settings import Settings
from latest_server.web._request import json_error
from latest_server.web.es import authz
from latest_server.web.es.errors import (
    CHALLENGE,
    ActionUnauthorized,
    EsError,
    NotAuthenticated,
    SecurityForbidden,
)
from latest_server.web.es.wire import JSON, PRODUCT_HEADER

# Open without a token: the probes, and the API's description with its page and the page's
# assets (a browser loads those without an Authorization header).
OPEN = frozenset(("/healthz", "/readyz", "/openapi.json", "/docs"))
OPEN_PREFIX = "/docs/static/"
CHANGING = frozenset(("POST", "PUT", "PATCH", "DELETE"))
REST_CHALLENGE = 'Bearer realm="latest-server"'


def secret_of(authorization: bytes) -> str | None:
    """The token an ``Authorization`` header carries, or None if it carries none we read."""
    if authorization.startswith(b"Bearer "):  # the common case, first
        return authorization[7:].strip().decode("latin-1") or None
    scheme, _, value = authorization.decode("latin-1").strip().partition(" ")
    scheme = scheme.lower()
    value = value.strip()
    if not value:
        return None
    if scheme == "bearer":
        return value
    if scheme in ("basic", "apikey"):
        try:
            decoded = base64.b64decode(value, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return value if scheme == "apikey" else None  # api_key="<token>" as it is
        _user, colon, secret = decoded.partition(":")
        if colon:
            return secret
        return value if scheme == "apikey" else None
    return None


class Guard:
    """``es_root``: where the Elasticsearch-compatible API is (``""``: every path, on its own
    listener; ``"/es"``: below LATEST_ES_PREFIX; None: nowhere): its answers take ES's shape."""

    def __init__(
        self, app: ASGIApp, *, authenticator: Authenticator, settings: Settings, es_root: str | None
    ) -> None:
        self.app = app
        self.authenticator = authenticator
        self.enabled = authenticator.enabled
        self.origins = frozenset(
            o.rstrip("/") for o in (*settings.allowed_origins, *settings.cors_origins)
        )
        self.any_origin = "*" in self.origins
        self.es_root = es_root

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http" and kind != "websocket":
            await self.app(scope, receive, send)
            return
        authorization = origin = host = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value
            elif name == b"origin":
                origin = value
            elif name == b"host":
                host = value
        method = scope.get("method", "GET")
        if origin is not None and (kind == "websocket" or method in CHANGING):
            refused = self._origin_refused(origin, host)
            if refused:
                await self._refuse(scope, receive, send, self._es_parts(scope), 403, refused)
                return
        if not self.enabled:
            await self.app(scope, receive, send)
            return
        es = self._es_parts(scope)
        if es is None and (scope["path"] in OPEN or scope["path"].startswith(OPEN_PREFIX)):
            await self.app(scope, receive, send)
            return
        secret = None if authorization is None else secret_of(authorization)
        if secret is None:
            if kind == "websocket" and authorization is None:
                scope[SCOPE_KEY] = NOBODY
                scope[AUTHENTICATE_KEY] = self.authenticator.authenticate
                await self.app(scope, receive, send)
                return
            why = "credentials are needed: Authorization: Bearer <token>"
            if es is not None:
                why = "missing authentication credentials for REST request [" + scope["path"] + "]"
            await self._refuse(scope, receive, send, es, 401, why)
            return
        try:
            principal = self.authenticator.authenticate(secret)
        except Unauthorized as exc:
            await self._refuse(scope, receive, send, es, 401, exc.message)
            return
        refused_by = self._not_allowed(principal, kind, method, scope["path"], es)
        if refused_by is not None:
            await self._refuse(scope, receive, send, es, 403, refused_by)
            return
        scope[SCOPE_KEY] = principal
        await self.app(scope, receive, send)

    def _es_parts(self, scope: Scope) -> list[str] | None:
        """The decoded segments of an Elasticsearch-compatible API path; None for another path."""
        root = self.es_root
        if root is None:
            return None
        path: str = scope["path"]
        if root and path != root and not path.startswith(root + "/"):
            return None
        raw = scope.get("raw_path")
        text = raw.decode("latin-1").split("?", 1)[0] if raw else path
        text = text[len(root) :] if root and text.startswith(root) else text
        stripped = text.strip("/")
        return [unquote(part) for part in stripped.split("/")] if stripped else []

    def _origin_refused(self, origin: bytes, host: bytes | None) -> str | None:
        text = origin.decode("latin-1").rstrip("/")
        if self.any_origin or text in self.origins:
            return None
        if host is not None and urlsplit(text).netloc.lower() == host.decode("latin-1").lower():
            return None  # the same origin
        return (
            f"Origin {text[:200]} may not send this request "
            "(LATEST_ALLOWED_ORIGINS; the default is the server's own origin only)"
        )

    @staticmethod
    def _not_allowed(
        principal: Principal, kind: str, method: str, path: str, es: list[str] | None
    ) -> str | EsError | None:
        if es is not None:
            needed, action = authz.required(method, es)
            index = authz.index_of(es)
            if needed is not None and not principal.can(needed):
                return ActionUnauthorized(action, principal.name)
            if index is not None and not principal.covers_index(index):
                return ActionUnauthorized(action, principal.name, f" on index [{index}]")
            return None
        needed = WRITE if kind == "http" and method == "POST" and path == "/ingest" else READ
        if principal.can(needed):
            return None
        return f"token {principal.name!r} lacks the {needed!r} scope this request needs"

    @staticmethod
    async def _refuse(
        scope: Scope,
        receive: Receive,
        send: Send,
        es: list[str] | None,
        status: int,
        why: str | EsError,
    ) -> None:
        if es is not None:
            if isinstance(why, EsError):
                error = why
            else:
                error = NotAuthenticated(why) if status == 401 else SecurityForbidden(why)
            headers = dict(PRODUCT_HEADER)
            if status == 401:
                headers["WWW-Authenticate"] = CHALLENGE
            body = None if scope.get("method") == "HEAD" else orjson.dumps(error.body())
            response = Response(body, error.status, headers=headers, media_type=JSON)
        else:
            kind = "unauthorized" if status == 401 else "forbidden"
            response = json_error(status, kind, str(why))
            if status == 401:
                response.headers["WWW-Authenticate"] = REST_CHALLENGE
        if scope["type"] == "websocket":
            ws = WebSocket(scope, receive, send)
            if "websocket.http.response" in scope.get("extensions", {}):
                await ws.send_denial_response(response)
            else:
                await ws.close(1008)  # before the accept: the server answers 403
            return
        await response(scope, receive, send)
