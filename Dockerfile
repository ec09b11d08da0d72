FROM python:3.11.11-slim-bookworm
# tini as pid 1: it forwards SIGTERM to latest-server and reaps the processes it leaves behind
# (without REDIS_URL, latest-server runs an embedded Valkey as its child, stopped after it).
RUN apt-get update && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY latest_server ./latest_server
COPY ingest_client ./ingest_client
RUN pip install --no-cache-dir .
# Every interface, to be reached from outside the container: the server then refuses to start
# without tokens (LATEST_TOKENS_FILE, or a JWT key) unless LATEST_INSECURE=true says it is meant
# (README "Running it on a network").
ENV LATEST_HOST=0.0.0.0 LATEST_DATA_DIR=/data
# the HTTP API, and the Elasticsearch-compatible API (LATEST_ES_PORT)
EXPOSE 8000 9200
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["latest-server", "serve"]
