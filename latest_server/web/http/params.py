"""Query parameters a route does not know are refused, naming them: a misspelt ``form=`` that
was silently ignored answered the whole history as if it were the range asked for. The routes
of the REST API declare what they take in web/app.py; the Elasticsearch-compatible API checks
its own (web/es/routes.py), in Elasticsearch's words."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection

from starlette.requests import Request
from starlette.responses import Response

from latest_server.errors import BadRequest
from latest_server.web._request import suggestion, unknown

Endpoint = Callable[[Request], Awaitable[Response]]


def strict(endpoint: Endpoint, *allowed: str) -> Endpoint:
    """``endpoint``, refusing any query parameter but ``allowed`` with a 400 ``bad_parameter``."""
    known = frozenset(allowed)

    async def checked(request: Request) -> Response:
        names = unknown(request, known)
        if names:
            takes = f"takes [{', '.join(sorted(known))}]" if known else "takes no parameters"
            listed = ", ".join(f"[{name}]{_hint(name, known)}" for name in names)
            plural = "s" if len(names) > 1 else ""
            raise BadRequest(
                f"unknown parameter{plural} {listed}: {request.method} {request.url.path} {takes}",
                reason="bad_parameter",
            )
        return await endpoint(request)

    checked.__name__ = checked.__qualname__ = getattr(endpoint, "__name__", "endpoint")
    checked.__doc__ = endpoint.__doc__
    return checked


def _hint(name: str, known: Collection[str]) -> str:
    close = suggestion(name, known)
    return f" (did you mean [{'], ['.join(close)}]?)" if close else ""
