"""``GET /metrics``: every metric in the Prometheus text format (metrics.py), summed over the
processes that share LATEST_METRICS_DIR.

Open like ``/healthz`` on the main port, with or without tokens: ``OPEN`` in web/guard.py is
the one place that says so (the Elasticsearch-compatible listener does not serve it)."""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import Response

from latest_server import metrics


async def get_metrics(request: Request) -> Response:
    # The files of several processes are read and summed off the event loop.
    if metrics.multiprocess_mode():
        body = await asyncio.to_thread(metrics.exposition)
    else:
        body = metrics.exposition()
    return Response(body, media_type=metrics.CONTENT_TYPE)
