"""Who may do what: API tokens, JWT verification, the loopback rule, Origin and CORS. Declared
with ``setting()`` (setting_values.py); composed into ``Settings`` by
``latest_server/settings/__init__.py``; used by ``latest_server/auth`` and ``web/guard.py``."""

from __future__ import annotations

from dataclasses import dataclass

from latest_server import setting_values as parse
from latest_server.setting_values import setting


@dataclass(frozen=True)
class AccessSettings:
    tokens_file: str | None = setting(
        "LATEST_TOKENS_FILE",
        None,
        parse.optional_text,
        "TOML file of API tokens ([[tokens]] name, sha256, scopes, prefixes, indices), reread "
        "when it changes and on SIGHUP. Unset (and no JWT key): every request is anonymous.",
    )
    jwt_public_key_file: str | None = setting(
        "LATEST_JWT_PUBLIC_KEY_FILE",
        None,
        parse.optional_text,
        "PEM public key (EC P-256 or RSA) that verifies JWT bearer tokens (ES256, RS256).",
    )
    jwks_file: str | None = setting(
        "LATEST_JWKS_FILE",
        None,
        parse.optional_text,
        "JWKS file of the keys that verify JWT bearer tokens, chosen by the token's kid.",
    )
    jwt_audience: str | None = setting(
        "LATEST_JWT_AUDIENCE",
        None,
        parse.optional_text,
        "The aud a JWT must carry. Unset: a JWT that carries an aud is refused.",
    )
    jwt_issuer: str | None = setting(
        "LATEST_JWT_ISSUER", None, parse.optional_text, "The iss a JWT must carry. Unset: any."
    )
    jwt_scopes_claim: str = setting(
        "LATEST_JWT_SCOPES_CLAIM",
        "scope",
        parse.text,
        "Dotted path of the JWT claim giving the scopes (space-separated or a list): read, "
        "write, admin; IUDX's api, sub and file mean read (e.g. cons.access).",
    )
    jwt_prefixes_claim: str = setting(
        "LATEST_JWT_PREFIXES_CLAIM",
        "prefixes",
        parse.text,
        "Dotted path of the JWT claim giving the variable-id prefixes (a string or a list; "
        "ri:/rg: taken off, rs: means every variable; e.g. iid). Absent: every variable.",
    )
    jwt_indices_claim: str = setting(
        "LATEST_JWT_INDICES_CLAIM",
        "indices",
        parse.text,
        "Dotted path of the JWT claim naming the Elasticsearch indices. Absent: every index.",
    )
    jwt_role_claim: str | None = setting(
        "LATEST_JWT_ROLE_CLAIM",
        None,
        parse.optional_text,
        "Dotted path of a role claim that adds scopes (IUDX's role: provider and delegate add "
        "write, admin adds admin). Unset: none.",
    )
    ws_auth_timeout: float = setting(
        "LATEST_WS_AUTH_TIMEOUT",
        10.0,
        parse.positive_float,
        "Seconds a websocket upgraded without credentials (where tokens are needed) has to send "
        "its auth message; later it is closed with 1008.",
    )
    insecure: bool = setting(
        "LATEST_INSECURE",
        False,
        parse.boolean,
        "Serve a non-loopback LATEST_HOST with no token configured (everyone may do "
        "everything); logged as a warning at every start.",
    )
    allowed_origins: tuple[str, ...] = setting(
        "LATEST_ALLOWED_ORIGINS",
        (),
        parse.optional_names,
        "Origins (scheme://host[:port], comma-separated, or *) whose pages may open websockets "
        "and send POST/PUT/DELETE. Unset: the request's own host only.",
    )
    cors_origins: tuple[str, ...] = setting(
        "LATEST_CORS_ORIGINS",
        (),
        parse.optional_names,
        "Origins (comma-separated, or *) the REST API answers with CORS headers. Unset: none.",
    )
