"""The README is part of the interface: its configuration table and commands must stay true."""

from __future__ import annotations

from pathlib import Path

from latest_server.settings import describe

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_every_setting_is_documented_with_its_default() -> None:
    for _name, env, default, _text in describe():
        row = next((line for line in README.splitlines() if line.startswith(f"| `{env}` |")), None)
        assert row is not None, f"{env} missing from the README table"
        expected = f"`{default}`" if default else "unset"
        assert f"| {expected} |" in row, f"{env}: README default differs from {expected}"


def test_ci_runs_the_readme_test_command() -> None:
    test_command = (
        "python3 -m venv .venv && .venv/bin/pip install -e '.[test]' && .venv/bin/python -m pytest"
    )
    assert test_command in README
    assert test_command in (ROOT / ".ci" / "run").read_text()


def test_compose_file_is_well_formed() -> None:
    import yaml

    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    for name, service in services.items():
        assert "image" in service or "build" in service, name
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown {dependency}"
    environment = services["latest-server"]["environment"]
    assert {"REDIS_URL", "AMQP_URL"} <= set(environment)
