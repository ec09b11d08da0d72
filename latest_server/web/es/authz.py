"""Who may do what on the Elasticsearch-compatible API. The guard (web/guard.py) checks each
request's route here before it runs (``required``: a scope and the action's name); writes,
deletes and reads then check each document's index and variable id (``check_op``, ``denied``):
an operation of a ``_bulk`` or ``_mget`` that is not allowed fails alone, with a 403 item.

Scopes: reads (``_doc`` GET, ``_source``, ``_mget``, and the searches: ``_search``, ``_msearch``,
``_count``, ``_mapping``, ``_field_caps``, answered over the indices and variables the principal
covers only) need ``read``; index, create, update and
``_bulk`` need ``write`` (a ``delete`` line of a ``_bulk`` needs ``admin``); ``DELETE`` of a
document and creating an index need ``admin``. Housekeeping that reads or changes nothing
(``/``, ``_license``, ``_nodes``, health, index and template existence, ``_refresh``) needs only
valid credentials, and template and ILM puts (acknowledged, kept nowhere) ``write``, so that
Logstash starts with a write-only token."""

from __future__ import annotations

from latest_server.access import ADMIN, READ, WRITE, Principal
from latest_server.web.es.errors import ActionUnauthorized
from latest_server.web.es.ops import WriteOp

OP_SCOPES = {"index": WRITE, "create": WRITE, "update": WRITE, "delete": ADMIN}
OP_ACTIONS = {
    "index": "indices:data/write/index",
    "create": "indices:data/write/index",
    "update": "indices:data/write/update",
    "delete": "indices:data/write/delete",
}
MANAGED = ("_index_template", "_template", "_ilm")
SEARCHES = {  # read-only, whatever the method: searches send their bodies by POST
    "_search": "indices:data/read/search",
    "_msearch": "indices:data/read/msearch",
    "_count": "indices:data/read/search",
    "_mapping": "indices:admin/mappings/get",
    "_field_caps": "indices:data/read/field_caps",
}


def required(method: str, parts: list[str]) -> tuple[str | None, str]:
    """The scope a request needs (None: valid credentials only) and its action's name."""
    reading = method in ("GET", "HEAD")
    if not parts or parts[0] in ("_license", "_nodes", "_xpack", "_cluster", "_refresh"):
        return None, "cluster:monitor/main"
    if parts[0] in MANAGED:
        return (
            (None, "indices:admin/template/get")
            if reading
            else (WRITE, "indices:admin/template/put")
        )
    last = parts[-1] if len(parts) <= 2 else parts[1]
    if last == "_refresh":
        return None, "indices:admin/refresh"
    if last == "_bulk":
        return WRITE, "indices:data/write/bulk"
    if last == "_mget":
        return READ, "indices:data/read/mget"
    if last in SEARCHES:
        return READ, SEARCHES[last]
    if len(parts) == 1:  # an index
        return (None, "indices:admin/get") if reading else (ADMIN, "indices:admin/create")
    if reading:
        return READ, "indices:data/read/get"
    if method == "DELETE":
        return ADMIN, "indices:data/write/delete"
    if last == "_update":
        return WRITE, "indices:data/write/update"
    return WRITE, "indices:data/write/index"


def index_of(parts: list[str]) -> str | None:
    """The index a request's path names, if any."""
    return parts[0] if parts and not parts[0].startswith("_") else None


def denied(
    principal: Principal, action: str, index: str, doc_id: str | None
) -> ActionUnauthorized | None:
    """Why ``principal`` may not touch document ``doc_id`` of ``index``, if it may not."""
    if not principal.covers_index(index):
        return ActionUnauthorized(action, principal.name, f" on index [{index}]")
    if doc_id is not None and not principal.covers(doc_id):
        return ActionUnauthorized(action, principal.name, f" on document [{doc_id}]")
    return None


def check_op(principal: Principal, op: WriteOp) -> None:
    """Mark ``op`` failed (403) if ``principal`` may not run it. The variable id of an index or
    create is known only once its source is read: ``Writer`` checks it then (``covers``)."""
    if op.error is not None or not principal.authenticated:
        return
    action = OP_ACTIONS.get(op.op, "indices:data/write/bulk")
    if not principal.can(OP_SCOPES.get(op.op, WRITE)):
        op.error = ActionUnauthorized(action, principal.name)
        return
    op.error = denied(
        principal, action, op.index, op.doc_id if op.op in ("update", "delete") else None
    )
