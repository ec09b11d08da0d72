"""JWT bearer tokens through a real server: ES256 against a PEM key, RS256 against a JWKS by
``kid``; accepted, expired, wrong audience, wrong issuer, bad signature, no ``exp``, another
algorithm; scopes and prefixes from claims, including an IUDX-shaped token (``iid``,
``cons.access``, ``role``)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import RSAAlgorithm

from latest_server.settings import Settings
from tests.conftest import ServerThread

AUD, ISS = "latest-server", "https://auth.example"
EC_KEY = ec.generate_private_key(ec.SECP256R1())
OTHER_EC_KEY = ec.generate_private_key(ec.SECP256R1())
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def claims(**extra: Any) -> dict[str, Any]:
    return {"sub": "alice", "aud": AUD, "iss": ISS, "exp": int(time.time()) + 300, **extra}


def es256(payload: dict[str, Any], key: Any = EC_KEY) -> str:
    return jwt.encode(payload, key, algorithm="ES256")


def get(server: ServerThread, token: str, path: str = "/latest?id=a/1") -> httpx.Response:
    return httpx.get(server.url + path, headers={"Authorization": f"Bearer {token}"}, timeout=10)


@pytest.fixture
def pem_server(
    settings: Settings, tmp_path: Path, http_server: Callable[..., ServerThread]
) -> ServerThread:
    pem = tmp_path / "jwt.pem"
    pem.write_bytes(
        EC_KEY.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return http_server(
        settings,
        amqp_url=None,
        jwt_public_key_file=str(pem),
        jwt_audience=AUD,
        jwt_issuer=ISS,
    )


def test_es256_tokens_are_verified(pem_server: ServerThread) -> None:
    ok = get(pem_server, es256(claims(scope="read write", prefixes=["a/"])))
    assert ok.status_code == 200
    assert get(pem_server, es256(claims(scope="read")), "/latest?id=b/1").status_code == 200
    scoped = get(pem_server, es256(claims(scope="read", prefixes=["a/"])), "/latest?id=b/1")
    assert scoped.status_code == 403
    assert get(pem_server, es256(claims(scope="write"))).status_code == 403
    refused = {
        "expired": es256(claims(scope="read", exp=int(time.time()) - 5)),
        "audience": es256(claims(scope="read", aud="someone-else")),
        "issuer": es256(claims(scope="read", iss="https://evil.example")),
        "signature": es256(claims(scope="read"), OTHER_EC_KEY),
        "JWT is not valid": es256({k: v for k, v in claims(scope="read").items() if k != "exp"}),
        "RS256 by an unknown key": jwt.encode(claims(scope="read"), RSA_KEY, algorithm="RS256"),
        "HS256": jwt.encode(claims(scope="read"), "s" * 32, algorithm="HS256"),
    }
    for why, token in refused.items():
        answer = get(pem_server, token)
        assert answer.status_code == 401, why
        assert answer.json()["error"]["type"] == "unauthorized"
    assert "expired" in get(pem_server, refused["expired"]).json()["error"]["reason"]
    assert "audience" in get(pem_server, refused["audience"]).json()["error"]["reason"]
    assert "issuer" in get(pem_server, refused["issuer"]).json()["error"]["reason"]
    assert "signature" in get(pem_server, refused["signature"]).json()["error"]["reason"]


def test_a_cached_token_is_refused_once_it_expires(pem_server: ServerThread) -> None:
    token = es256(claims(scope="read", exp=int(time.time()) + 2))
    assert get(pem_server, token).status_code == 200
    time.sleep(2.5)
    assert get(pem_server, token).status_code == 401


def test_jwks_by_kid_and_an_iudx_token(
    settings: Settings, tmp_path: Path, http_server: Callable[..., ServerThread]
) -> None:
    rsa_jwk = json.loads(RSAAlgorithm.to_jwk(RSA_KEY.public_key()))
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [{**rsa_jwk, "kid": "k1", "alg": "RS256"}]}))
    server = http_server(
        settings,
        amqp_url=None,
        jwks_file=str(jwks),
        jwt_audience="rs.iudx.io",
        jwt_issuer="authvertx.iudx.io",
        jwt_scopes_claim="cons.access",
        jwt_prefixes_claim="iid",
        jwt_role_claim="role",
    )
    resource = "iisc.ac.in/89a36273d77dac4cf38114fca1bbe64392547f86/rs.iudx.io/aqm"

    def iudx(role: str, access: list[str], kid: str = "k1") -> str:
        payload = {
            "sub": "8b95ab80-2aaf-4636-a65e-7f2563d0d371",
            "iss": "authvertx.iudx.io",
            "aud": "rs.iudx.io",
            "exp": int(time.time()) + 300,
            "iid": f"rg:{resource}",
            "role": role,
            "cons": {"access": access},
        }
        return jwt.encode(payload, RSA_KEY, algorithm="RS256", headers={"kid": kid})

    consumer = iudx("consumer", ["api", "sub"])
    inside = f"/latest?id={resource}/sensor-1"
    assert get(server, consumer, inside).status_code == 200
    assert get(server, consumer, "/latest?id=elsewhere/1").status_code == 403
    ingest = httpx.post(
        server.url + "/ingest",
        json={"id": f"{resource}/sensor-1", "ts": 1_700_000_000},
        headers={"Authorization": f"Bearer {consumer}"},
    )
    assert ingest.status_code == 403  # a consumer reads
    provider = iudx("provider", [])
    ingest = httpx.post(
        server.url + "/ingest",
        json={"id": f"{resource}/sensor-1", "ts": 1_700_000_000},
        headers={"Authorization": f"Bearer {provider}"},
    )
    assert ingest.status_code == 200 and ingest.json()["accepted"] == 1
    assert get(server, iudx("consumer", ["api"], kid="k2"), inside).status_code == 401


def test_a_rotated_key_set_is_read_without_restart(
    settings: Settings, tmp_path: Path, http_server: Callable[..., ServerThread]
) -> None:
    def jwk(kid: str) -> dict[str, Any]:
        return {**json.loads(RSAAlgorithm.to_jwk(RSA_KEY.public_key())), "kid": kid}

    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [jwk("old")]}))
    server = http_server(settings, amqp_url=None, jwks_file=str(jwks), jwt_audience=AUD)

    def signed(kid: str) -> str:
        return jwt.encode(claims(scope="read"), RSA_KEY, algorithm="RS256", headers={"kid": kid})

    old, new = signed("old"), signed("new")
    assert get(server, old).status_code == 200
    assert get(server, new).status_code == 401
    jwks.write_text(json.dumps({"keys": [jwk("new")]}))  # the provider rotated its key
    deadline = time.monotonic() + 5
    while get(server, new).status_code != 200:
        assert time.monotonic() < deadline, "the new key set was not read"
        time.sleep(0.1)
    assert get(server, old).status_code == 401  # cached before, refused once the key is gone
