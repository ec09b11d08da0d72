"""What Logstash's elasticsearch output sends, replayed byte for byte with httpx (no Logstash can
be installed here): the start-up probes and a gzip ``_bulk`` (docs/elasticsearch.md, "What the
clients need") with
``Content-Type: application/json``, ``null`` ids and routing, string versions, out-of-order
versions for one id and a bad version. Checks what Logstash needs back (§1.6, §1.8). Then the
pipelines of logstash/ themselves: what rabbitmq-to-latest-server.conf sends for packets timed by
``ts``, ``timestamp`` or ``observationDateTime``, and the Elasticsearch pipeline's version script
against the server's time rule."""

from __future__ import annotations

import gzip
import hashlib
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import httpx
import orjson
import pytest

from latest_server.errors import PacketRejected
from latest_server.packets import PacketParser
from latest_server.settings import Settings
from tests.es.conftest import EsServerThread

HEADERS = {
    "Content-Type": "application/json",
    "User-Agent": "Logstash/8.15.0 (OS=Linux-6.1; JVM=Eclipse Adoptium-21) "
    "logstash-output-elasticsearch/11.22.7",
    "x-elastic-product-origin": "logstash-output-elasticsearch",
    "Authorization": "Basic ZWxhc3RpYzpjaGFuZ2VtZQ==",  # accepted and ignored
}
RESOURCE = "iisc.ac.in/89a36273d77dac4cf38114fca1bbe64392547f86/rs.iudx.io/aqm/sensor-1"
FINGERPRINT = hashlib.sha1(RESOURCE.encode()).hexdigest()  # fingerprint { method => SHA1 }


def action(version: object, doc_id: object = FINGERPRINT, **extra: object) -> bytes:
    meta = {"_id": doc_id, "_index": "latest", "routing": None, **extra}
    if version is not None:
        meta["version"] = version
        meta["version_type"] = "external"
    return orjson.dumps({"index": meta}) + b"\n"


def packet(when: str, value: float) -> bytes:
    event = {
        "id": RESOURCE,
        "observationDateTime": when,
        "pm2p5": value,
        "@timestamp": "2024-05-01T04:31:00.000Z",
        "@version": "1",
    }
    return orjson.dumps(event) + b"\n"


def test_startup_probes_and_gzip_bulk(
    settings: Settings, es_server: Callable[..., EsServerThread]
) -> None:
    server = es_server(settings)
    with httpx.Client(base_url=server.url, headers=HEADERS, timeout=10) as http:
        # 1. healthcheck, 2. product and version check, 3. license, 4. cluster uuid
        head = http.head("/")
        assert head.status_code == 200
        assert head.headers["x-elastic-product"] == "Elasticsearch"
        root = http.get("/")
        assert root.headers["x-elastic-product"] == "Elasticsearch"
        assert root.json()["version"]["number"].split(".")[0] == "8"
        assert root.json()["version"]["build_flavor"] == "default"
        assert root.json()["cluster_uuid"] == http.get("/").json()["cluster_uuid"]
        license_ = http.get("/_license")
        assert license_.status_code == 200
        assert license_.json()["license"]["status"] == "active"
        assert license_.headers["x-elastic-product"] == "Elasticsearch"
        # 5./6. template management (manage_template => true, the default)
        assert http.head("/_index_template/ecs-logstash").status_code == 200
        put = http.put("/_index_template/ecs-logstash", json={"index_patterns": ["x-*"]})
        assert put.json() == {"acknowledged": True}
        assert http.head("/_template/logstash").status_code == 200
        # 7. ILM probes (only with the default index): answered, so a pipeline starts
        assert http.head("/latest").status_code == 200
        assert http.get("/_ilm/policy/logstash-policy").status_code == 200
        assert http.put("/_ilm/policy/logstash-policy", json={}).json() == {"acknowledged": True}

        lines = [
            action("1714537800000"),  # string versions, as sprintf makes them
            packet("2024-05-01T10:00:00+05:30", 10),
            action("1714537920000"),
            packet("2024-05-01T10:02:00+05:30", 12),
            action("1714537860000"),  # arrived late: older than the stored one
            packet("2024-05-01T10:01:00+05:30", 11),
            action("%{[@metadata][version]}"),  # a packet without the time field
            packet("2024-05-01T10:03:00+05:30", 13),
            action(None, doc_id=None),  # no document_id: an id is generated
            b'{"message": "no id"}\n',
        ]
        body = b"".join(lines)
        response = http.post(
            "/_bulk",
            params={"filter_path": "errors,items.*.error,items.*.status"},
            content=gzip.compress(body, compresslevel=1),
            headers={
                "Content-Encoding": "gzip",
                "X-Elastic-Event-Count": "5",
                "X-Elastic-Uncompressed-Request-Length": str(len(body)),
            },
        )
        assert response.status_code == 200
        assert response.headers["x-elastic-product"] == "Elasticsearch"
        assert response.headers["content-type"].startswith("application/json")
        result = response.json()
        assert set(result) == {"errors", "items"}
        assert result["errors"] is True
        items = result["items"]
        assert len(items) == 5  # one per action, in order
        assert [list(item) for item in items] == [["index"]] * 5
        statuses = [item["index"]["status"] for item in items]
        assert statuses == [201, 200, 409, 400, 201]
        assert items[0] == {"index": {"status": 201}}  # filtered: nothing else
        assert items[2]["index"]["error"]["type"] == "version_conflict_engine_exception"
        # Our deviation (§3.9.1): one 400 item (Logstash's DLQ), not a whole-request 400.
        assert items[3]["index"]["error"]["type"] == "illegal_argument_exception"
        assert "Failed to parse long parameter [version]" in items[3]["index"]["error"]["reason"]

        latest = http.get(f"/latest/_doc/{FINGERPRINT}").json()
        assert latest["_version"] == 1714537920000
        assert latest["_source"]["pm2p5"] == 12

        clean = http.post(
            "/_bulk",
            params={"filter_path": "errors,items.*.error,items.*.status"},
            content=action("1714537980000") + packet("2024-05-01T10:03:00+05:30", 13),
        )
        assert clean.json() == {"errors": False, "items": [{"index": {"status": 200}}]}


def test_request_level_errors_keep_the_product_header(
    settings: Settings, es_server: Callable[..., EsServerThread]
) -> None:
    server = es_server(settings)
    with httpx.Client(base_url=server.url, headers=HEADERS, timeout=10) as http:
        unterminated = http.post("/_bulk", content=action("1") + b'{"a": 1}')
        assert unterminated.status_code == 400
        assert "terminated by a newline" in unterminated.json()["error"]["reason"]
        assert unterminated.headers["x-elastic-product"] == "Elasticsearch"
        unknown = http.post("/_bulk", content=b'{"index": {"_index": "latest", "color": 1}}\n{}\n')
        assert unknown.status_code == 400
        assert unknown.json()["error"]["reason"] == (
            "Action/metadata line [1] contains an unknown parameter [color]"
        )
        no_index = http.post("/_bulk", content=b'{"index": {"_id": "a"}}\n{}\n')
        assert no_index.status_code == 400
        assert no_index.json()["error"]["type"] == "action_request_validation_exception"
        assert "index is missing" in no_index.json()["error"]["reason"]
        # 7.x-era shippers send _type: accepted and ignored
        typed = http.post(
            "/_bulk", content=b'{"index": {"_index": "latest", "_type": "_doc"}}\n{}\n'
        )
        assert typed.json()["errors"] is False
        nowhere = http.get("/_nope")
        assert nowhere.status_code == 400
        assert nowhere.json() == {
            "error": "no handler found for uri [/_nope] and method [GET]",
            "status": 400,
        }
        assert nowhere.headers["x-elastic-product"] == "Elasticsearch"
        assert http.head("/no-such-index").headers["x-elastic-product"] == "Elasticsearch"


# --- the pipelines of logstash/, replayed: what they send for every time field ---

ROOT = Path(__file__).resolve().parents[2]
SPRINTF = re.compile(r"%\{([^}]+)\}")
EMULATED_FILTERS = {"fingerprint", "mutate"}  # what ``emulate`` does, exactly


def pipeline_output(name: str) -> tuple[set[str], dict[str, str]]:
    """The filter plugins of a pipeline, and the string options of its elasticsearch output."""
    text = (ROOT / "logstash" / name).read_text()
    filters = text[text.index("filter {") : text.index("output {")]
    plugins = set(re.findall(r"^  (\w+) \{", filters, flags=re.MULTILINE))
    output = text[text.index("output {") :]
    assert output.count("elasticsearch {") == 1, "one output, used for every event"
    options = dict(re.findall(r"^\s+(\w+) => \"([^\"]*)\"", output, flags=re.MULTILINE))
    return plugins, options


def sprintf(template: str, event: dict[str, object]) -> str:
    """Logstash's sprintf: a reference to a field the event lacks stays in the text as it is."""

    def field(match: re.Match[str]) -> str:
        value: object = event
        for part in re.findall(r"\[([^\]]+)\]", match.group(1)) or [match.group(1)]:
            if not isinstance(value, dict) or part not in value:
                return match.group(0)
            value = value[part]
        return str(value)

    return SPRINTF.sub(field, template)


def emulate(packet: dict[str, object], options: dict[str, str]) -> bytes:
    """What rabbitmq-to-latest-server.conf sends for one packet: fingerprint (SHA-1 of the id)
    into [@metadata][fingerprint], the mutate's removals, then the output's action line."""
    event: dict[str, object] = {**packet, "@timestamp": "2024-05-01T04:31:00.000Z"}
    event["@metadata"] = {"fingerprint": hashlib.sha1(str(packet["id"]).encode()).hexdigest()}
    meta: dict[str, object] = {"_id": sprintf(options["document_id"], event), "routing": None}
    meta["_index"] = options["index"]
    for option in ("version", "version_type"):
        if option in options:
            meta[option] = sprintf(options[option], event)
    source = {k: v for k, v in event.items() if k not in ("@metadata", "@timestamp")}
    return orjson.dumps({options["action"]: meta}) + b"\n" + orjson.dumps(source) + b"\n"


def test_the_latest_server_pipeline_orders_packets_by_any_time_field(
    settings: Settings, es_server: Callable[..., EsServerThread]
) -> None:
    plugins, options = pipeline_output("rabbitmq-to-latest-server.conf")
    assert plugins <= EMULATED_FILTERS, f"filters this replay does not know: {plugins}"
    server = es_server(settings)
    packets = [  # one resource; ts (epoch s, then ms) and timestamp (ISO-8601), one of them late
        {"id": RESOURCE, "ts": 1714537800.5, "pm2p5": 1},
        {"id": RESOURCE, "timestamp": "2024-05-01T04:32:00Z", "pm2p5": 2},
        {"id": RESOURCE, "ts": 1714537860000, "pm2p5": 3},
        {"id": RESOURCE, "ts": 1714537980250, "pm2p5": 4},
        {"id": RESOURCE, "observationDateTime": "2024-05-01T10:03:30+05:30", "pm2p5": 5},
    ]
    body = b"".join(emulate(p, options) for p in packets)
    assert b"%{" not in body, "a field reference the packet cannot fill"
    with httpx.Client(base_url=server.url, headers=HEADERS, timeout=10) as http:
        answer = http.post("/_bulk", content=body).json()
        statuses = [item["index"]["status"] for item in answer["items"]]
        assert statuses == [201, 200, 409, 200, 200], answer
        latest = http.get(f"/latest/_doc/{FINGERPRINT}").json()
        assert latest["_source"]["pm2p5"] == 5
        assert latest["_version"] == 1714538010000000  # the packet time, µs: as on every path


def test_packet_version_script_reads_every_time_field_as_the_server_does(
    settings: Settings,
) -> None:
    """logstash/packet_version.rb (the Elasticsearch pipeline's version), run by Ruby with the
    script's own tests, against the server's own time rule for the same values."""
    ruby = shutil.which("ruby")
    if ruby is None:
        pytest.skip("no ruby interpreter to run logstash/packet_version.rb")
    text = (ROOT / "logstash" / "rabbitmq-to-elasticsearch.conf").read_text()
    assert "packet_version.rb" in text
    assert re.search(r"if \[@metadata\]\[version\] \{\s+elasticsearch \{", text)
    parser = PacketParser(settings)
    values: list[object] = [
        "2024-05-01T10:00:00+05:30",
        "2024-05-01T10:00:00.123456+05:30",
        "2024-05-01T04:30:00Z",
        "2024-05-01 04:30:00.5+00:00",
        1714537800,
        1714537800.123457,
        1714537800123,
        1714537800123456,
        1714537800123456789,
        "1714537800",
        "1714537800.5",
        "1714537800123",
    ]
    events = [{"ts": v} for v in values] + [{"timestamp": v} for v in values[:3]]
    events += [{"observationDateTime": values[0], "ts": 1}, {"id": "no time"}, {"ts": "soon"}]
    events.append({"ts": "2024-05-01T10:00:00"})  # no UTC offset: refused by the server too
    result = subprocess.run(
        [ruby, str(ROOT / "tests/es/logstash_ruby.rb"), str(ROOT / "logstash/packet_version.rb")],
        input="".join(orjson.dumps(e).decode() + "\n" for e in events),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "script tests passed" in result.stderr
    for event, line in zip(events, result.stdout.splitlines(), strict=True):
        (out,) = orjson.loads(line)
        try:
            expected: int | None = parser.time_to_us(
                next(event[f] for f in settings.time_fields if f in event)
            )
        except (StopIteration, PacketRejected):
            expected = None
        version = out.get("@metadata", {}).get("version")
        assert version == expected, (event, version, expected)
        assert (version is None) == ("_no_packet_time" in out.get("tags", [])), out
