"""What the access guard (web/guard.py) costs one request, in process, without the noise of a
server and a load generator: the guard in front of an ASGI app that answers nothing, called
``--requests`` times with an HTTP scope like a ``GET /latest/{id}`` with its headers.

* Ours: the guard with a tokens file of 1 000 tokens, each request carrying a bearer token (the
  cached lookup, the file's once-a-second look), and the same with a JWT (ES256, cached until its
  ``exp``).
* Reference: the same guard with no tokens configured (what every request paid before tokens:
  a look at its headers).

Prints µs per request for each, then their difference against the ~200 µs of CPU a
``GET /latest/{id}`` costs the server (bench/latest_http.py), and last ``ratio ours/bare``:
the rate with a token over the rate without, for the whole request.

    .venv/bin/python bench/auth_cost.py [--requests 200000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from latest_server.auth.authenticator import Authenticator
from latest_server.auth.tokens import new_token
from latest_server.settings import Settings
from latest_server.web.guard import Guard

REQUEST_CPU_US = 200.0  # a GET /latest/{id}'s server CPU, measured by bench/latest_http.py


async def app(scope: Any, receive: Any, send: Any) -> None:
    return None


async def nothing() -> dict[str, Any]:
    return {"type": "http.request"}


async def ignore(message: Any) -> None:
    return None


def scope(authorization: str | None) -> dict[str, Any]:
    headers = [
        (b"host", b"127.0.0.1:8000"),
        (b"user-agent", b"wrk"),
        (b"accept", b"*/*"),
    ]
    if authorization:
        headers.append((b"authorization", authorization.encode()))
    return {
        "type": "http",
        "method": "GET",
        "path": "/latest/bench/aqm sensor-00042",
        "raw_path": b"/latest/bench%2Faqm%20sensor-00042",
        "headers": headers,
    }


async def per_request(guard: Guard, authorization: str | None, count: int) -> float:
    base = scope(authorization)
    started = time.perf_counter()
    for _ in range(count):
        await guard(dict(base), nothing, ignore)
    return (time.perf_counter() - started) / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        tables, secret = [], ""
        for n in range(1000):
            secret, table = new_token(f"client-{n}", ("read",), (f"bench/{n}",))
            tables.append(table)
        tokens = Path(folder) / "tokens.toml"
        tokens.write_text("\n".join(tables))
        key = ec.generate_private_key(ec.SECP256R1())
        pem = Path(folder) / "jwt.pem"
        pem.write_bytes(
            key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        claims = {"sub": "bench", "scope": "read", "exp": int(time.time()) + 3600}
        token_jwt = jwt.encode(claims, key, algorithm="ES256")
        secured = Settings(tokens_file=str(tokens), jwt_public_key_file=str(pem))
        open_settings = Settings()
        guards = {
            "bare": (
                Guard(
                    app,
                    authenticator=Authenticator(open_settings),
                    settings=open_settings,
                    es_root=None,
                ),
                None,
            ),
            "token": (
                Guard(app, authenticator=Authenticator(secured), settings=secured, es_root=None),
                f"Bearer {secret}",
            ),
            "jwt": (
                Guard(app, authenticator=Authenticator(secured), settings=secured, es_root=None),
                f"Bearer {token_jwt}",
            ),
        }
        costs: dict[str, list[float]] = {name: [] for name in guards}
        for _ in range(args.rounds):
            for name, (guard, authorization) in guards.items():
                costs[name].append(asyncio.run(per_request(guard, authorization, args.requests)))
    median = {name: statistics.median(values) for name, values in costs.items()}
    for name, value in median.items():
        print(f"guard, {name}: {value:.2f} µs/request (median of {args.rounds})")
    for name in ("token", "jwt"):
        extra = median[name] - median["bare"]
        print(f"{name}: +{extra:.2f} µs per request, {extra / REQUEST_CPU_US:.1%} of a GET /latest")
    worst = max(median["token"], median["jwt"]) - median["bare"]
    print(f"ratio ours/bare: {REQUEST_CPU_US / (REQUEST_CPU_US + worst):.3f}")


if __name__ == "__main__":
    main()
