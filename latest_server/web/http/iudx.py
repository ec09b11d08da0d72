"""The IUDX resource server's latest API, so that its clients can point at this server:
``GET /ngsi-ld/v1/entities/{id}`` (the resource server, ``urn:dx:rs:*``) and
``GET /ngsi-ld/v2/entities/{id}`` (the newer data plane, ``dx:dataplane:*``, paginated).

Both answer the IUDX envelope: ``{"type", "title", "results": [<latest packet>, ...]}`` on
success, ``{"type", "title", "detail"}`` with the status the IUDX documentation gives on an
error. ``id`` is a resource's id (its latest packet), or, with ``LATEST_BACKEND=redisjson``, a
resource group's id (every resource of the group, from its RedisJSON key). See the README,
"IUDX readers"."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from latest_server.errors import StoreUnavailable
from latest_server.resources import Resources
from latest_server.stores.latest_redisjson import RedisJsonLatestStore
from latest_server.web._request import covered

MAX_ID_CHARS = 512  # the IUDX resource server's limit on an id (its API documentation)
DEFAULT_SIZE = 10  # the data plane's page size when none is given
MAX_SIZE = 5000


@dataclass(frozen=True)
class Flavor:
    """The words of one IUDX API: its URN prefix, titles and details, whether it paginates."""

    success: str
    not_found: tuple[str, str, str]  # type, title, detail
    bad_request: tuple[str, str]  # type, title
    unavailable: tuple[str, str]
    paginated: bool
    params: frozenset[str]


RESOURCE_SERVER = Flavor(  # iudx-resource-server docs/openapi.yaml: /ngsi-ld/v1/entities/{id}
    success="urn:dx:rs:success",
    not_found=("urn:dx:rs:resourceNotFound", "Not Found", "Resource Not Found"),
    bad_request=("urn:dx:rs:badRequest", "Bad Request Data"),
    unavailable=("urn:dx:rs:backend", "Service Unavailable"),
    paginated=False,
    params=frozenset(),
)
DATA_PLANE = Flavor(  # dx-dataplane-rs docs/dataplane-openapi: /ngsi-ld/v2/entities/{id}
    success="dx:dataplane:success",
    not_found=("dx:dataplane:resourceNotFound", "Not Found", "Not Found"),
    bad_request=("dx:dataplane:badrequest", "Bad Request"),
    unavailable=("dx:dataplane:backend", "Service Unavailable"),
    paginated=True,
    params=frozenset({"page", "size"}),
)


class Refused(Exception):
    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


def envelope(status: int, type_: str, title: str, detail: str) -> Response:
    headers = {"Retry-After": "1"} if status == 503 else None
    body = orjson.dumps({"type": type_, "title": title, "detail": detail})
    return Response(body, status, headers=headers, media_type="application/json")


def endpoint(flavor: Flavor) -> Any:
    async def latest_entity(request: Request) -> Response:
        try:
            return await _answer(request, flavor)
        except Refused as exc:
            return envelope(400, *flavor.bad_request, exc.detail)
        except StoreUnavailable as exc:
            return envelope(503, *flavor.unavailable, exc.message)

    latest_entity.__doc__ = __doc__
    return latest_entity


async def _answer(request: Request, flavor: Flavor) -> Response:
    resources: Resources = request.app.state.resources
    entity_id: str = request.path_params["entity_id"]
    unknown = sorted(set(request.query_params) - flavor.params)
    if unknown:
        takes = ", ".join(sorted(flavor.params)) or "none"
        raise Refused(f"unknown query parameter {', '.join(unknown)} (takes: {takes})")
    if not entity_id:
        raise Refused("name a resource: /entities/{id}")
    if len(entity_id) > MAX_ID_CHARS:
        raise Refused(f"an id has at most {MAX_ID_CHARS} characters")
    covered(request, [entity_id])  # a token limited to prefixes reads only under them: 403
    page, size = _page(request, flavor)
    [found] = await resources.latest.mget([entity_id])
    docs: list[bytes] | None = [found.doc] if found is not None else None
    if docs is None and isinstance(resources.latest, RedisJsonLatestStore):
        docs = await resources.latest.group_docs(entity_id)
        if docs == []:  # a group whose every resource was deleted
            return Response(status_code=204)
    if docs is None:
        return envelope(404, *flavor.not_found)
    body: dict[str, Any] = {"type": flavor.success, "title": "Success"}
    if flavor.paginated:
        total = len(docs)
        pages = -(-total // size)
        body["results"] = [orjson.Fragment(d) for d in docs[(page - 1) * size : page * size]]
        body["paginationInfo"] = {
            "page": page,
            "size": size,
            "totalCount": total,
            "totalPages": pages,
            "hasNext": page < pages,
            "hasPrevious": page > 1,
        }
    else:
        body["results"] = [orjson.Fragment(d) for d in docs]
    return Response(orjson.dumps(body), media_type="application/json")


def _page(request: Request, flavor: Flavor) -> tuple[int, int]:
    if not flavor.paginated:
        return 1, MAX_SIZE
    page = _integer(request, "page", 1, 1, 49_999)
    size = _integer(request, "size", DEFAULT_SIZE, 1, MAX_SIZE)
    return page, size


def _integer(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise Refused(f"{name} must be an integer, got {raw!r}") from None
    if not low <= value <= high:
        raise Refused(f"{name} must be from {low} to {high}, got {value}")
    return value
