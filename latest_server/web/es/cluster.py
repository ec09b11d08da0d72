"""Housekeeping of the Elasticsearch-compatible API: what Logstash and the official client ask
before they write, answered as a one-node cluster that needs nothing set up. ``GET|HEAD /``
(cluster info), ``GET /_license``, index templates, ILM policies, ``GET /_cluster/health``,
``GET /_nodes``, ``GET /_xpack``, ``HEAD|GET|PUT /{index}`` and ``_refresh``."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from latest_server import __version__
from latest_server.web.es.context import Context
from latest_server.web.es.errors import AlreadyExists, IndexNotFound
from latest_server.web.es.indices import check_name
from latest_server.web.es.wire import respond

# The version we report. Logstash 8/9 plugins ship an 8.x index template and accept any 8.x;
# elasticsearch-py 8 and 9 do not read it (docs/elasticsearch.md, "What the clients need").
ES_VERSION = "8.19.0"
SHARDS = {"total": 1, "successful": 1, "failed": 0}


async def info(ctx: Context, request: Request) -> Response:
    return respond(
        request,
        {
            "name": "latest-server",
            "cluster_name": "latest-server",
            "cluster_uuid": ctx.cluster_uuid,
            "version": {
                "number": ES_VERSION,
                "build_flavor": "default",
                "build_type": "docker",
                "build_hash": f"latest-server-{__version__}",
                "build_date": "2025-01-01T00:00:00.000Z",
                "build_snapshot": False,
                "lucene_version": "9.12.0",
                "minimum_wire_compatibility_version": "7.17.0",
                "minimum_index_compatibility_version": "7.0.0",
            },
            "tagline": "You Know, for Search",
        },
    )


async def license_(ctx: Context, request: Request) -> Response:
    """Logstash marks the URL dead unless ``license.status`` is active (§1.2 step 3)."""
    return respond(
        request,
        {
            "license": {
                "status": "active",
                "uid": ctx.cluster_uuid,
                "type": "basic",
                "issue_date": "1970-01-01T00:00:00.000Z",
                "issue_date_in_millis": 0,
                "max_nodes": 1000,
                "max_resource_units": None,
                "issued_to": "latest-server",
                "issuer": "elasticsearch",
                "start_date_in_millis": -1,
            }
        },
    )


async def acknowledged(ctx: Context, request: Request, *_: str) -> Response:
    """``PUT`` of an index template or ILM policy: accepted, and not needed (ids are by key)."""
    return respond(request, {"acknowledged": True})


async def template_exists(ctx: Context, request: Request, name: str) -> Response:
    """``HEAD /_index_template/{name}``: 200, so Logstash does not try to install one."""
    if request.method == "HEAD":
        return respond(request, None)
    return respond(request, {"index_templates": [{"name": name, "index_template": {}}]})


async def ilm_policy(ctx: Context, request: Request, name: str) -> Response:
    return respond(
        request,
        {name: {"version": 1, "modified_date": "1970-01-01T00:00:00.000Z", "policy": {}}},
    )


async def xpack(ctx: Context, request: Request) -> Response:
    """Plugins before 11.0.3 ask this with ``ilm_enabled => auto``: no ILM here."""
    return respond(
        request,
        {
            "build": {},
            "license": {"status": "active", "type": "basic"},
            "features": {"ilm": {"available": False, "enabled": False}},
        },
    )


async def nodes(ctx: Context, request: Request, *_: str) -> Response:
    """Sniffing finds no other node (set ``sniffing => false``; one URL is all there is)."""
    return respond(
        request,
        {
            "_nodes": {"total": 0, "successful": 0, "failed": 0},
            "cluster_name": "latest-server",
            "nodes": {},
        },
    )


async def health(ctx: Context, request: Request, *_: str) -> Response:
    shards = await ctx.indices.count()
    return respond(
        request,
        {
            "cluster_name": "latest-server",
            "status": "green",
            "timed_out": False,
            "number_of_nodes": 1,
            "number_of_data_nodes": 1,
            "active_primary_shards": shards,
            "active_shards": shards,
            "relocating_shards": 0,
            "initializing_shards": 0,
            "unassigned_shards": 0,
            "delayed_unassigned_shards": 0,
            "number_of_pending_tasks": 0,
            "number_of_in_flight_fetch": 0,
            "task_max_waiting_in_queue_millis": 0,
            "active_shards_percent_as_number": 100.0,
        },
    )


async def refresh(ctx: Context, request: Request, *_: str) -> Response:
    """Reads are real time: nothing to refresh."""
    return respond(request, {"_shards": SHARDS})


async def index_exists(ctx: Context, request: Request, index: str) -> Response:
    if not await ctx.indices.exists(index):
        raise IndexNotFound(index)
    if request.method == "HEAD":
        return respond(request, None)
    return respond(
        request,
        {
            index: {
                "aliases": {},
                "mappings": {"dynamic": "false"},
                "settings": {
                    "index": {
                        "number_of_shards": "1",
                        "number_of_replicas": "0",
                        "provided_name": index,
                    }
                },
            }
        },
    )


async def create_index(ctx: Context, request: Request, index: str) -> Response:
    """A no-op create (mappings and settings are accepted and ignored)."""
    check_name(index)
    if not await ctx.indices.create(index):
        raise AlreadyExists(index)
    return respond(request, {"acknowledged": True, "shards_acknowledged": True, "index": index})
