"""Sessions: GET /sessions (newest first, ?state=…&limit=…), GET /sessions/{id}."""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.responses import Response

from latest_server.access import principal_of
from latest_server.errors import BadRequest, NotFound
from latest_server.resources import Resources
from latest_server.sessions import STATES, SessionStore
from latest_server.web._request import covered

MAX_LIMIT = 1000
PARAMS = ("state", "limit")


def _store(request: Request) -> SessionStore:
    resources: Resources = request.app.state.resources
    assert resources.sessions is not None
    return resources.sessions


async def list_sessions(request: Request) -> Response:
    state = request.query_params.get("state")
    if state is not None and state not in STATES:
        raise BadRequest(f"state must be one of {', '.join(STATES)}")
    raw_limit = request.query_params.get("limit", "100")
    if not raw_limit.isdigit() or not 0 < int(raw_limit) <= MAX_LIMIT:
        raise BadRequest(f"limit must be an integer from 1 to {MAX_LIMIT}")
    sessions = await _store(request).recent(state=state, limit=int(raw_limit))
    principal = principal_of(request.scope)
    if principal.prefixes is not None:  # a session's id is a variable id: the same prefixes
        sessions = [s for s in sessions if principal.covers(s.id)]
    body = {"sessions": [s.to_json(with_variables=False) for s in sessions]}
    return Response(orjson.dumps(body), media_type="application/json")


async def get_session(request: Request) -> Response:
    session_id: str = request.path_params["session_id"]
    covered(request, [session_id])
    session = await _store(request).get(session_id)
    if session is None:
        raise NotFound(f"no session {session_id!r}")
    return Response(orjson.dumps(session.to_json()), media_type="application/json")
