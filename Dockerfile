FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY latest_server ./latest_server
COPY ingest_client ./ingest_client
RUN pip install --no-cache-dir .
ENV LATEST_HOST=0.0.0.0 LATEST_DATA_DIR=/data
EXPOSE 8000
CMD ["latest-server", "serve"]
