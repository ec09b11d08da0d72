"""The REST API: ingest, latest, history, sessions and health."""
