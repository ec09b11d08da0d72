"""What the Elasticsearch-compatible routes share: built once per app from its Resources."""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass

from latest_server.resources import Resources
from latest_server.settings import Settings
from latest_server.web.es.indices import Indices
from latest_server.web.es.writes import Writer


@dataclass
class Context:
    settings: Settings
    resources: Resources
    indices: Indices
    writer: Writer
    cluster_uuid: str  # stable for every process sharing one Redis (Logstash logs it)

    @classmethod
    def build(cls, resources: Resources) -> Context:
        settings = resources.settings
        indices = Indices(resources.redis, settings.es_index)
        writer = Writer(settings, resources.parser, resources.ingestor, resources.latest, indices)
        seed = f"latest-server {settings.redis_url or ''} {settings.es_index}".encode()
        uuid = base64.urlsafe_b64encode(hashlib.sha1(seed).digest()).decode()[:22]
        return cls(settings, resources, indices, writer, uuid)
