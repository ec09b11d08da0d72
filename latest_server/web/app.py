"""The only place the web app is wired: routes, exception handlers, lifespan."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.routing import BaseRoute, Route, WebSocketRoute, request_response
from starlette.routing import Mount as StaticMount

from latest_server.auth.authenticator import Authenticator
from latest_server.resources import Resources
from latest_server.settings import Settings
from latest_server.web import errors
from latest_server.web._request import Mount, param
from latest_server.web.es import routes as es
from latest_server.web.guard import Guard
from latest_server.web.http import health, history, ingest, iudx, latest, variables
from latest_server.web.http import metrics as metrics_route
from latest_server.web.http import sessions as session_routes
from latest_server.web.http.params import strict
from latest_server.web.http_timeouts import BodyTimeout, header_timeout_protocol
from latest_server.web.limits import Gate, Gated, Limits, TokenBuckets
from latest_server.web.observe import Observe
from latest_server.web.openapi import routes as openapi
from latest_server.web.ws import direct as ws_direct
from latest_server.web.ws.endpoint import WebsocketEndpoint
from latest_server.web.ws.hub import Hub


def create_app(
    settings: Settings,
    *,
    resources: Resources | None = None,
    authenticator: Authenticator | None = None,
    buckets: TokenBuckets | None = None,
) -> Starlette:
    """A Starlette app. Given ``resources``, it uses (and does not close) them; otherwise it opens
    its own for its lifespan. Given ``authenticator`` (the runner's, which SIGHUP rereads), it
    checks credentials with it; otherwise with one of its own. ``buckets``: the request rates
    per client, when shared with the Elasticsearch-compatible listener (web/limits.py)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            if resources is None:
                app.state.resources = await Resources.open(settings)
                stack.push_async_callback(app.state.resources.close)
            else:
                app.state.resources = resources
            app.state.hub = Hub(app.state.resources, settings)
            app.state.hub.start()
            stack.push_async_callback(app.state.hub.close)
            yield

    # History queries run a few at once (web/limits.py), each holding its slot to its end.
    gate = Gate.of(settings)
    history_route = Gated(gate, request_response(strict(history.get_history, *history.PARAMS)))
    # Each route names the query parameters it takes; any other is a 400 (web/http/params.py).
    routes: list[BaseRoute] = [
        Route("/ingest", strict(ingest.ingest), methods=["POST"]),
        Route("/latest", strict(latest.list_latest, *latest.LIST_PARAMS), methods=["GET"]),
        Route("/latest/_mget", strict(latest.mget_latest), methods=["POST"]),
        Route("/latest/" + param("variable_id"), strict(latest.get_latest), methods=["GET"]),
        Route("/variables", strict(variables.list_variables, *variables.PARAMS), methods=["GET"]),
        Route("/history", history_route, methods=["GET"]),
        Route("/history/" + param("variable_id"), history_route, methods=["GET"]),
        Route(
            "/sessions",
            strict(session_routes.list_sessions, *session_routes.PARAMS),
            methods=["GET"],
        ),
        Route(
            "/sessions/" + param("session_id"), strict(session_routes.get_session), methods=["GET"]
        ),
        # The IUDX resource server's latest API (web/http/iudx.py), in its envelope.
        Route(
            "/ngsi-ld/v1/entities/" + param("entity_id"),
            iudx.endpoint(iudx.RESOURCE_SERVER),
            methods=["GET"],
        ),
        Route(
            "/ngsi-ld/v2/entities/" + param("entity_id"),
            iudx.endpoint(iudx.DATA_PLANE),
            methods=["GET"],
        ),
        WebSocketRoute("/ws", WebsocketEndpoint()),
        Route("/healthz", strict(health.healthz), methods=["GET"]),
        Route("/readyz", strict(health.readyz), methods=["GET"]),
        Route("/metrics", strict(metrics_route.get_metrics), methods=["GET"]),
        # The REST API's document (web/openapi/operations.py), and Swagger UI on it, offline.
        Route("/openapi.json", strict(openapi.openapi_json), methods=["GET"]),
        Route("/docs", strict(openapi.docs), methods=["GET"]),
        StaticMount(openapi.ASSETS, app=openapi.assets()),
    ]
    if settings.es_prefix:  # the Elasticsearch-compatible API under a path, e.g. /es
        routes.append(Mount(settings.es_prefix, routes=es.ROUTES))
    app = Starlette(
        routes=routes,
        exception_handlers=errors.HANDLERS,  # type: ignore[arg-type]
        lifespan=lifespan,
        middleware=[
            observe(settings),  # first: it counts and logs what the others refuse too
            *cors(settings),
            # The guard before the limits: they count by the token it finds (access.client_key).
            guard(settings, authenticator, settings.es_prefix),
            Middleware(ws_direct.ServerSend),
            Middleware(Limits, settings=settings, es_prefix=settings.es_prefix, buckets=buckets),
            body_timeout(settings),
        ],
    )
    app.state.history_gate = gate
    # "/history/" is not "/history" with a slash too many: no redirects, a JSON 404 instead.
    app.router.redirect_slashes = False
    return app


def create_es_app(
    settings: Settings,
    *,
    resources: Resources | None = None,
    authenticator: Authenticator | None = None,
    buckets: TokenBuckets | None = None,
) -> Starlette:
    """The Elasticsearch-compatible API alone, for its own listener (LATEST_ES_PORT). Given
    ``resources`` (the main app's), it shares them, and ``buckets`` its request rates;
    otherwise it opens its own."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if resources is not None:
            app.state.resources = resources
            yield
            return
        owned = await Resources.open(settings)
        app.state.resources = owned
        try:
            yield
        finally:
            await owned.close()

    return Starlette(
        routes=es.ROUTES,
        lifespan=lifespan,
        middleware=[
            observe(settings),
            guard(settings, authenticator, ""),
            Middleware(Limits, settings=settings, es=True, buckets=buckets),
            body_timeout(settings),
        ],
    )


def guard(
    settings: Settings, authenticator: Authenticator | None, es_root: str | None
) -> Middleware:
    """Origin, credentials and scopes (web/guard.py), before anything else reads the request."""
    return Middleware(
        Guard,
        authenticator=authenticator or Authenticator(settings),
        settings=settings,
        es_root=es_root,
    )


def cors(settings: Settings) -> list[Middleware]:
    """CORS headers for LATEST_CORS_ORIGINS (none by default): preflights are answered here,
    before the guard, as they carry no credentials."""
    if not settings.cors_origins:
        return []
    return [
        Middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "HEAD", "POST"],
            allow_headers=["Authorization", "Content-Type", "Content-Encoding", "If-None-Match"],
            expose_headers=["ETag", "X-Latest-Version"],
            max_age=600,
        )
    ]


def observe(settings: Settings) -> Middleware:
    """Request ids, metrics and the access log (web/observe.py), around every other middleware
    (it hands ``ServerSend`` the server's own ``send``)."""
    return Middleware(Observe, log_requests=settings.access_log)


def body_timeout(settings: Settings) -> Middleware:
    return Middleware(BodyTimeout, timeout=settings.http_body_timeout)


def http_options(settings: Settings) -> dict[str, Any]:
    """uvicorn options of every HTTP listener (LATEST_PORT and LATEST_ES_PORT): the protocol
    that closes a connection whose request headers are late (http_timeouts.py)."""
    return {"http": header_timeout_protocol(settings.http_header_timeout)}


def server_options(settings: Settings) -> dict[str, Any]:
    """uvicorn options the app relies on: websocket frame size, keep-alive pings and compression.
    A frame over LATEST_WS_MAX_FRAME_BYTES gets an error frame; one many times over it (a client
    gone wrong) is refused by the protocol, which closes with 1009.

    Browsers and the websockets library offer permessage-deflate, and uvicorn accepts it unless
    told not to: every entry frame would then be compressed once per socket that receives it,
    with a zlib state kept per socket. On a fan-out that about doubles the server's work per
    frame, so it is refused unless LATEST_WS_COMPRESSION asks for it (Centrifugo and Socket.IO
    make the same choice)."""
    return {
        **http_options(settings),
        "ws_max_size": settings.ws_max_frame_bytes * 16,
        "ws_ping_interval": settings.ws_ping_interval,
        "ws_ping_timeout": settings.ws_ping_interval,
        "ws_per_message_deflate": settings.ws_compression,
    }
