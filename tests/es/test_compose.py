"""docker-compose.yml stays true to the code: every variable given to a latest-server service is
a setting the server reads (settings.describe()) or one boto3 reads for OBJECTS_URL, the
Elasticsearch and Logstash profiles exist, and each Logstash service runs a pipeline file of
logstash/ that uses every variable it is given. (No Docker here: the file is checked, not run.)"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from latest_server.settings import describe

ROOT = Path(__file__).resolve().parents[2]
# Read by boto3 when OBJECTS_URL is s3:// (README, OBJECTS_URL).
BOTO3_VARIABLES = {
    "AWS_ENDPOINT_URL_S3",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_DEFAULT_REGION",
}


def services() -> dict[str, Any]:
    found: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    return found


def test_latest_server_variables_are_settings() -> None:
    settings = {env for _name, env, _default, _help in describe()}
    ours = {name: s for name, s in services().items() if "build" in s}
    assert {"latest-server", "latest-consumer", "latest-server-es"} <= set(ours)
    for name, service in ours.items():
        unknown = set(service.get("environment", {})) - settings - BOTO3_VARIABLES
        assert not unknown, f"{name}: {sorted(unknown)} are not settings the server reads"
        assert service["command"][0] == "latest-server"
        assert service["command"][1] in ("serve", "consume")
    assert ours["latest-server-es"]["environment"]["LATEST_BACKEND"] == "elasticsearch"
    assert ours["latest-server"]["environment"]["OBJECTS_URL"].startswith("s3://")


def test_profiles_and_dependencies() -> None:
    found = services()
    profiles = {name: set(s.get("profiles", [])) for name, s in found.items()}
    assert profiles["elasticsearch"] == {"elasticsearch"}
    assert {"logstash", "logstash-http"} <= {n for n, p in profiles.items() if "logstash" in p}
    assert "minio" in found and not profiles["minio"]  # S3 is part of the default deployment
    for name, service in found.items():
        for dependency in service.get("depends_on", {}):
            assert dependency in found, f"{name} depends on unknown {dependency}"
            # a service may only depend on one that is up whenever it is
            assert not profiles[dependency] or profiles[dependency] & profiles[name], (
                f"{name} depends on {dependency}, which another profile starts"
            )


def test_logstash_services_run_pipeline_files() -> None:
    for name, service in services().items():
        if "logstash" not in service.get("image", "") or "mc" in name:
            continue
        flag, path = service["command"]
        assert flag == "-f"
        pipeline = ROOT / "logstash" / Path(path).name
        assert pipeline.exists(), f"{name} runs {path}, which logstash/ does not have"
        text = pipeline.read_text()
        used = set(re.findall(r"\$\{(\w+)", text))
        unused = set(service.get("environment", {})) - used
        assert not unused, f"{name}: {sorted(unused)} are not used by {pipeline.name}"
    assert {p.name for p in (ROOT / "logstash").glob("*.conf")} == {
        "rabbitmq-to-latest-server.conf",
        "rabbitmq-to-elasticsearch.conf",
        "rabbitmq-to-http-ingest.conf",
    }
