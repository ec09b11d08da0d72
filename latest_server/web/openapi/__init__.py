"""The REST API's OpenAPI document (``GET /openapi.json``) and its interactive page (``GET
/docs``, Swagger UI served from the package: no CDN)."""
