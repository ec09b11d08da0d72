"""Searches of the Elasticsearch-compatible API (``_search``, ``_msearch``, ``_count``,
``_mapping``, ``_field_caps``): how much one request may cover."""

from __future__ import annotations

from dataclasses import dataclass

from latest_server import setting_values as parse
from latest_server.setting_values import setting


@dataclass(frozen=True)
class SearchSettings:
    es_search_max_variables: int = setting(
        "LATEST_ES_SEARCH_MAX_VARIABLES",
        1000,
        parse.positive_int,
        "Elasticsearch-compatible searches: the most variables one search covers. A search "
        "without a filter on the id lists the index's variables, and one that finds more is a "
        "400 asking for a filter on the id.",
    )
    es_search_max_buckets: int = setting(
        "LATEST_ES_SEARCH_MAX_BUCKETS",
        65536,
        parse.positive_int,
        "Elasticsearch-compatible searches: the most buckets one search's aggregations make "
        "(Elasticsearch's search.max_buckets); more is a 400 too_many_buckets_exception.",
    )
