"""The access tests start the Elasticsearch-compatible listener as tests/es/ does."""

from tests.es.conftest import es_server

__all__ = ["es_server"]
