"""JWT bearer tokens (PyJWT): ES256 or RS256 only, verified against a PEM public key
(LATEST_JWT_PUBLIC_KEY_FILE) or a JWKS (LATEST_JWKS_FILE, the key named by the token's ``kid``);
``exp`` required, ``aud`` and ``iss`` checked against the settings. The scopes, prefixes and
indices come from configured claims (dotted paths), so that an IUDX token, whose ``cons.access``
lists ``api``, ``sub``, ``file`` and whose ``iid`` names ``ri:<resource>`` or ``rg:<group>``,
maps to ``read`` on that id prefix (README, "JWT")."""

from __future__ import annotations

import json
from typing import Any

import jwt
from jwt import PyJWK, PyJWKSet
from jwt.exceptions import PyJWKError, PyJWKSetError

from latest_server.access import ADMIN, READ, SCOPES, WRITE, Principal
from latest_server.errors import ConfigError, Unauthorized
from latest_server.settings import Settings

ALGORITHMS = ["ES256", "RS256"]
# Access names of other issuers, as scopes here: IUDX's consumer access kinds are all reads.
SCOPE_ALIASES = {"api": READ, "sub": READ, "file": READ}
ROLE_SCOPES = {"provider": (WRITE,), "delegate": (WRITE,), "admin": (ADMIN,)}
ITEM_KINDS = ("ri:", "rg:")  # IUDX item ids: a resource, a resource group (prefixes both)
SERVER_KIND = "rs:"  # IUDX: the whole resource server


Keys = dict[str | None, PyJWK]  # kid (None: the key of a token without one) → a verifying key


def _usable(key: PyJWK, source: str) -> PyJWK:
    if key.algorithm_name not in ALGORITHMS:
        raise ConfigError(f"{source}: a {key.algorithm_name} key; only ES256 and RS256 are taken")
    return key


def load_pem(path: str) -> Keys:
    try:
        with open(path, "rb") as file:
            data = file.read()
        key = _usable(PyJWK.from_dict(_pem_as_jwk(data)), path)
    except OSError as exc:
        raise ConfigError(f"cannot read LATEST_JWT_PUBLIC_KEY_FILE {path}: {exc}") from None
    except (ValueError, PyJWKError) as exc:
        raise ConfigError(f"LATEST_JWT_PUBLIC_KEY_FILE {path}: not a public key ({exc})") from None
    return {None: key}


def _pem_as_jwk(data: bytes) -> dict[str, Any]:
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.hazmat.primitives.serialization import load_pem_public_key
    from jwt.algorithms import ECAlgorithm, RSAAlgorithm

    public = load_pem_public_key(data)
    if isinstance(public, ec.EllipticCurvePublicKey):
        return json.loads(ECAlgorithm.to_jwk(public))  # type: ignore[no-any-return]
    if isinstance(public, rsa.RSAPublicKey):
        return json.loads(RSAAlgorithm.to_jwk(public))  # type: ignore[no-any-return]
    raise ValueError("only EC (P-256) and RSA keys verify ES256 and RS256")


def load_jwks(path: str) -> Keys:
    try:
        with open(path, encoding="utf-8") as file:
            keyset = PyJWKSet.from_dict(json.load(file))
    except OSError as exc:
        raise ConfigError(f"cannot read LATEST_JWKS_FILE {path}: {exc}") from None
    except (ValueError, PyJWKError, PyJWKSetError) as exc:
        raise ConfigError(f"LATEST_JWKS_FILE {path}: not a JWKS ({exc})") from None
    keys: Keys = {key.key_id: _usable(key, path) for key in keyset.keys}
    if len(keyset.keys) == 1:
        keys.setdefault(None, keyset.keys[0])  # a token without a kid may use the only key
    return keys


def claim(claims: dict[str, Any], path: str) -> Any:
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _listed(value: Any) -> list[str]:
    if isinstance(value, str):
        return value.split()
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str)]
    return []


def verify(token: str, keys: Keys, settings: Settings) -> tuple[Principal, float]:
    """The Principal of a valid token and its ``exp``; ``Unauthorized`` saying why not."""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.DecodeError:
        raise Unauthorized("the bearer token is neither a known API token nor a JWT") from None
    kid = header.get("kid")
    key = keys.get(kid if isinstance(kid, str) else None)
    if key is None:
        raise Unauthorized(f"the JWT's key (kid {kid!r}) is not one of the configured keys")
    try:
        claims = jwt.decode(
            token,
            key.key,
            algorithms=[key.algorithm_name],  # the key's own: no algorithm confusion
            audience=settings.jwt_audience,
            issuer=settings.jwt_issuer,
            options={"require": ["exp"]},
        )
    except jwt.ExpiredSignatureError:
        raise Unauthorized("the JWT has expired") from None
    except jwt.InvalidAudienceError:
        raise Unauthorized("the JWT is not for this audience (aud)") from None
    except jwt.InvalidIssuerError:
        raise Unauthorized("the JWT is not from the configured issuer (iss)") from None
    except (jwt.InvalidSignatureError, jwt.InvalidAlgorithmError):
        raise Unauthorized("the JWT's signature does not verify") from None
    except jwt.InvalidTokenError as exc:
        raise Unauthorized(f"the JWT is not valid: {exc}") from None
    return principal_of_claims(claims, settings), float(claims["exp"])


def principal_of_claims(claims: dict[str, Any], settings: Settings) -> Principal:
    scopes = {SCOPE_ALIASES.get(s, s) for s in _listed(claim(claims, settings.jwt_scopes_claim))}
    if settings.jwt_role_claim:
        for role in _listed(claim(claims, settings.jwt_role_claim)):
            scopes.update(ROLE_SCOPES.get(role, ()))
    prefixes: tuple[str, ...] | None = None
    raw = claim(claims, settings.jwt_prefixes_claim)
    if raw is not None:
        items = _listed(raw) if isinstance(raw, list) else [raw] if isinstance(raw, str) else []
        if not any(item.startswith(SERVER_KIND) for item in items):
            prefixes = tuple(_item_prefix(item) for item in items)
    indices_raw = claim(claims, settings.jwt_indices_claim)
    indices = None if indices_raw is None else tuple(_listed(indices_raw))
    subject = claims.get("sub")
    return Principal(
        "jwt:" + (subject if isinstance(subject, str) and subject else "anonymous"),
        frozenset(scopes & set(SCOPES)),
        prefixes=prefixes,
        indices=indices,
    )


def _item_prefix(item: str) -> str:
    for kind in ITEM_KINDS:
        if item.startswith(kind):
            return item[len(kind) :]
    return item
