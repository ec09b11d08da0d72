"""POST /ingest: a JSON object, a JSON array, or NDJSON (gzip or not), through the same write
path as AMQP."""

from __future__ import annotations

from collections.abc import Iterator

import orjson
from starlette.requests import Request
from starlette.responses import Response

from latest_server.access import principal_of
from latest_server.ingestor import Origins
from latest_server.packets import Packet
from latest_server.resources import Resources
from latest_server.web._request import json_error, read_decoded

NDJSON_TYPES = ("application/x-ndjson", "application/ndjson", "application/jsonl")


async def ingest(request: Request) -> Response:
    resources: Resources = request.app.state.resources
    limit = resources.settings.max_body_bytes
    body = await read_decoded(request, limit)  # gzip is decoded, or refused with a 400
    if body is None:
        return json_error(
            413, "too_large", f"request body is larger than {limit} bytes (LATEST_MAX_BODY_BYTES)"
        )
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    items = resources.parser.iter_message(body, ndjson=content_type in NDJSON_TYPES)
    rejected: list[dict[str, object]] = []
    origins: Origins[int] = Origins()  # the position of each packet among the items
    principal = principal_of(request.scope)
    prefixed = principal.prefixes is not None

    def packets() -> Iterator[Packet]:
        """Parsed as the store takes them: the body's later packets are parsed while Redis
        writes the first ones."""
        for position, item in enumerate(items):
            if isinstance(item, Packet):
                if prefixed and not principal.covers(item.variable_id):
                    rejected.append(forbidden(position, item.variable_id, principal.name))
                    continue
                yield origins.add(position, item)
            else:
                rejected.append({"index": item.index, "error": item.reason, "detail": item.detail})

    result = await resources.ingestor.write_batch(packets())
    count = len(origins.packets) + len(rejected)  # every item, now that the write took them all
    refused = origins.refused(result)  # session documents refused at write time (bad_transition)
    if refused:
        rejected += [
            {"index": position, "error": r.reason, "detail": r.detail} for position, _, r in refused
        ]
        rejected.sort(key=lambda item: int(str(item["index"])))
    answer = {
        "accepted": result.accepted,
        "stale": result.stale,
        "duplicates": result.duplicates,
        "rejected": rejected,
    }
    if rejected and len(rejected) == count:  # nothing was written
        first = rejected[0]
        status = 403 if all(item["error"] == "forbidden" for item in rejected) else 400
        return json_error(status, str(first["error"]), str(first["detail"]), **answer)
    return Response(orjson.dumps(answer), media_type="application/json")


def forbidden(position: int, variable_id: str, name: str) -> dict[str, object]:
    """The rejection of a packet whose variable is outside the token's prefixes."""
    detail = f"token {name!r} may not write variable {variable_id!r} (outside its prefixes)"
    return {"index": position, "error": "forbidden", "detail": detail}
