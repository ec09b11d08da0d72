"""The schemas of the history API's aggregation answers (web/http/aggregate.py): buckets of
``agg=``, the entries of ``lastN=``, the values in force ``at=``. Added to the document's
components by schemas.py."""

from __future__ import annotations

from typing import Any

NUMBER_OR_NULL = {"type": ["number", "null"]}
VALUES = {
    "type": "object",
    "description": "per field: per aggregation its value (null where a bucket has no number), "
    "or an object for percentiles and extended_stats",
    "additionalProperties": {"type": "object"},
}

SCHEMAS: dict[str, dict[str, Any]] = {
    "Aggregates": {
        "type": "object",
        "required": ["aggs", "fields", "interval", "tz", "cached", "variables"],
        "properties": {
            "aggs": {"type": "array", "items": {"type": "string"}},
            "fields": {"type": "array", "items": {"type": "string"}},
            "interval": {"type": ["string", "null"]},
            "tz": {"type": "string"},
            "cached": {"type": "boolean", "description": "answered from the result cache"},
            "variables": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["variable", "buckets"],
                    "properties": {
                        "variable": {"type": "string"},
                        "buckets": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["docs", "values"],
                                "properties": {
                                    "start": {"type": "integer", "description": "µs, UTC"},
                                    "key": {"type": "integer", "description": "ms, UTC"},
                                    "iso": {"type": "string", "description": "in `tz`"},
                                    "docs": {"type": "integer"},
                                    "values": VALUES,
                                },
                            },
                        },
                    },
                },
            },
        },
    },
    "LastEntries": {
        "type": "object",
        "required": ["fields", "variables"],
        "properties": {
            "fields": {"type": "array", "items": {"type": "string"}},
            "variables": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["variable", "entries"],
                    "properties": {
                        "variable": {"type": "string"},
                        "entries": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["ts", "seq", "values"],
                                "properties": {
                                    "ts": {"type": "integer"},
                                    "seq": {"type": "integer"},
                                    "values": {
                                        "type": "object",
                                        "additionalProperties": NUMBER_OR_NULL,
                                    },
                                },
                            },
                        },
                    },
                },
            },
        },
    },
    "ValuesAt": {
        "type": "object",
        "required": ["at", "fields", "variables"],
        "properties": {
            "at": {"type": "integer", "description": "µs since the epoch"},
            "fields": {"type": "array", "items": {"type": "string"}},
            "variables": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["variable", "values"],
                    "properties": {
                        "variable": {"type": "string"},
                        "values": {
                            "type": "object",
                            "additionalProperties": {
                                "oneOf": [
                                    {"type": "null"},
                                    {
                                        "type": "object",
                                        "required": ["ts", "seq", "value"],
                                        "properties": {
                                            "ts": {"type": "integer"},
                                            "seq": {"type": "integer"},
                                            "value": NUMBER_OR_NULL,
                                        },
                                    },
                                ]
                            },
                        },
                    },
                },
            },
        },
    },
}
