"""The Elasticsearch-compatible API: routes, documents, _bulk, writes, indices, errors."""
