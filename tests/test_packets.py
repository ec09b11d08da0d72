from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from latest_server.errors import REJECT_REASONS, PacketRejected
from latest_server.packets import Packet, PacketParser, Rejection, lookup
from latest_server.settings import Settings
from latest_server.times import epoch_to_us

PARSER = PacketParser(Settings())
UNBOUNDED = PacketParser(Settings(max_future=0.0))  # no bound ahead of the clock
T0 = 1_700_000_000  # 2023-11-14T22:13:20Z


def one(body: bytes, parser: PacketParser = PARSER) -> Packet | Rejection:
    items = parser.parse_message(body)
    assert len(items) == 1
    return items[0]


def test_object_becomes_a_packet() -> None:
    body = b'{"id": "s/1", "observationDateTime": "2023-11-14T22:13:20+00:00", "v": 1.5}'
    packet = one(body)
    assert isinstance(packet, Packet)
    assert packet.variable_id == "s/1"
    assert packet.key == hashlib.sha1(b"s/1").hexdigest()
    assert packet.ts_us == T0 * 1_000_000
    assert orjson.loads(packet.raw) == orjson.loads(body)
    canonical = orjson.dumps(orjson.loads(body), option=orjson.OPT_SORT_KEYS)
    assert packet.digest == hashlib.sha1(canonical).hexdigest()


@pytest.mark.parametrize(
    ("value", "expected_us"),
    [
        (T0, T0 * 10**6),
        (T0 + 0.25, T0 * 10**6 + 250_000),
        (T0 * 1000 + 7, T0 * 10**6 + 7000),
        (T0 * 10**6 + 3, T0 * 10**6 + 3),
        (T0 * 10**9 + 4000, T0 * 10**6 + 4),
        (str(T0 * 1000), T0 * 10**6),
        ("2023-11-14T22:13:20Z", T0 * 10**6),
        ("2023-11-15T03:43:20.000001+05:30", T0 * 10**6 + 1),
        ("2023-11-14T22:13:20.123456789+00:00", T0 * 10**6 + 123456),
    ],
)
def test_times_in_every_unit(value: object, expected_us: int) -> None:
    packet = one(orjson.dumps({"id": "x", "observationDateTime": value}))
    assert isinstance(packet, Packet)
    assert packet.ts_us == expected_us


def test_time_field_fallbacks_and_nested_paths() -> None:
    assert isinstance(one(b'{"id": "x", "timestamp": 1700000000}'), Packet)
    assert isinstance(one(b'{"id": "x", "ts": 1700000000}'), Packet)
    parser = PacketParser(Settings(id_field="meta.name", time_fields=("meta.t",)))
    packet = one(b'{"meta": {"name": "n", "t": 1700000000}}', parser)
    assert isinstance(packet, Packet)
    assert packet.variable_id == "n"


def test_fixed_unit_overrides_magnitude() -> None:
    parser = PacketParser(Settings(time_unit="ms"))
    packet = one(b'{"id": "x", "ts": 5}', parser)
    assert isinstance(packet, Packet)
    assert packet.ts_us == 5000


def test_naive_times_need_a_default_zone() -> None:
    body = b'{"id": "x", "ts": "2023-11-14T22:13:20"}'
    rejected = one(body)
    assert isinstance(rejected, Rejection)
    assert rejected.reason == "bad_time"
    assert "LATEST_DEFAULT_TZ" in rejected.detail
    packet = one(body, PacketParser(Settings(default_tz="Asia/Kolkata")))
    assert isinstance(packet, Packet)
    assert packet.ts_us == (T0 - 5 * 3600 - 1800) * 10**6


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{not json", "not_json"),
        (b"", "not_json"),
        (b'"a string"', "not_object"),
        (b"42", "not_object"),
        (b'{"ts": 1700000000}', "missing_id"),
        (b'{"id": null, "ts": 1700000000}', "missing_id"),
        (b'{"id": "", "ts": 1700000000}', "bad_id"),
        (b'{"id": true, "ts": 1700000000}', "bad_id"),
        (b'{"id": {"a": 1}, "ts": 1700000000}', "bad_id"),
        (b'{"id": "x"}', "missing_time"),
        (b'{"id": "x", "ts": "yesterday"}', "bad_time"),
        (b'{"id": "x", "ts": true}', "bad_time"),
        (b'{"id": "x", "ts": [1]}', "bad_time"),
        (b'{"id": "x", "ts": 1e300}', "bad_time"),
        (b'{"id": "x", "ts": 1700000000, "pad": "' + b"a" * 2000 + b'"}', "too_large"),
        (b'{"id": "x", "ts": 1700000000, "d": ' + b"[" * 254 + b"]" * 254 + b"}", "too_deep"),
        (b'{"id": "x", "ts": ' + b'{"a":' * 1000 + b"1" + b"}" * 1000 + b"}", "too_deep"),
        (b'[{"id": "x", "ts": 1, "d": ' + b"[" * 1020 + b"]" * 1020 + b"}]", "too_deep"),
    ],
)
def test_rejections_carry_a_reason(body: bytes, reason: str) -> None:
    parser = PacketParser(Settings(max_packet_bytes=1000))
    rejected = one(body, parser)
    assert isinstance(rejected, Rejection)
    assert rejected.reason == reason
    assert rejected.detail


def test_arrays_and_ndjson_keep_order_and_index() -> None:
    body = b'[{"id": "a", "ts": 1700000000}, 7, {"id": "b", "ts": 1700000001}]'
    items = PARSER.parse_message(body)
    assert [type(i).__name__ for i in items] == ["Packet", "Rejection", "Packet"]
    assert isinstance(items[1], Rejection)
    assert items[1].index == 1
    assert items[1].reason == "not_object"

    ndjson = b'{"id": "a", "ts": 1700000000}\n\n{oops\n{"id": "b", "ts": 1700000001}\n'
    items = PARSER.parse_message(ndjson)
    assert [type(i).__name__ for i in items] == ["Packet", "Rejection", "Packet"]
    assert isinstance(items[1], Rejection)
    assert (items[1].index, items[1].reason, items[1].raw) == (1, "not_json", b"{oops")


def test_same_document_any_whitespace_same_identity() -> None:
    a = one(b'{"id":"x","ts":1700000000,"v":1}')
    b = one(b'{ "id" : "x",\n "ts" : 1700000000, "v" : 1 }')
    assert isinstance(a, Packet)
    assert isinstance(b, Packet)
    assert (a.raw, a.digest) == (b.raw, b.digest)


# Unit detection by magnitude is exact from 1973-03-03 (1e14 µs; earlier µs look like ms) on.
@given(st.datetimes(min_value=datetime(1973, 3, 4), max_value=datetime(2200, 1, 1)))
def test_iso_and_epoch_agree(moment: datetime) -> None:
    aware = moment.replace(tzinfo=UTC)
    from_iso = one(orjson.dumps({"id": "x", "ts": aware.isoformat()}), UNBOUNDED)
    assert isinstance(from_iso, Packet)
    micros = from_iso.ts_us
    assert epoch_to_us(micros) == micros
    assert epoch_to_us(micros * 1000) == micros
    assert epoch_to_us(micros // 1000) == micros // 1000 * 1000
    assert epoch_to_us(micros // 1_000_000) == micros // 1_000_000 * 1_000_000


def test_one_document_re_serialised_has_one_identity() -> None:
    """Sorted keys, 7 and 7.0, 1E2 and 100, escapes: the digest is of the canonical form; the
    stored document keeps the order it came in."""
    bodies = [
        b'{"id":"x","ts":1700000000,"v":7,"o":{"b":1,"a":[1.0,100]}}',
        b'{"o":{"a":[1,1E2],"b":1.0},"v":7.0,"ts":1700000000,"id":"x"}',
        b'{ "v" : 7e0 , "ts": 1.7E9, "id": "\\u0078", "o": {"a": [1, 100], "b": 1} }',
    ]
    items = [one(body) for body in bodies]
    assert all(isinstance(item, Packet) for item in items)
    assert len({item.digest for item in items if isinstance(item, Packet)}) == 1
    assert isinstance(items[1], Packet)
    assert list(orjson.loads(items[1].raw)) == ["o", "v", "ts", "id"]


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (b"9007199254740993", b"9007199254740992.0"),  # 2**53 + 1 is no float
        (b"18446744073709551615", b"1.8446744073709552e19"),  # 2**64 - 1 and 2**64
        (b"true", b"1"),
        (b'"7"', b"7"),
        (b"1.5", b"1"),
        (b"[1, 2]", b"[2, 1]"),
        (b'{"a.0": 1}', b'{"a": 1}'),
    ],
)
def test_documents_that_differ_keep_their_own_identity(a: bytes, b: bytes) -> None:
    first = one(b'{"id": "x", "ts": 1700000000, "v": ' + a + b"}")
    second = one(b'{"id": "x", "ts": 1700000000, "v": ' + b + b"}")
    assert isinstance(first, Packet) and isinstance(second, Packet)
    assert first.digest != second.digest


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (b"9007199254740992", b"9007199254740992.0"),
        (b"0", b"-0.0"),
        (b"100000000000000000000", b"1e20"),  # beyond 64 bits orjson reads both as floats
        (b"10000000000000000", b"1e16"),
        (b'"a.0,b"', b'"a\\u002e0,b"'),  # a string that looks like a float's end
    ],
)
def test_equal_numbers_written_differently_are_one(a: bytes, b: bytes) -> None:
    first = one(b'{"id": "x", "ts": 1700000000, "v": [' + a + b"]}")
    second = one(b'{"id": "x", "ts": 1700000000, "v": [' + b + b"]}")
    assert isinstance(first, Packet) and isinstance(second, Packet)
    assert first.digest == second.digest


def test_a_deep_packet_in_an_array_is_dead_lettered_with_its_message() -> None:
    """Too deep to be written again on its own, it carries the array it came in."""
    body = b'[{"id": "a", "ts": 1}, {"id": "b", "ts": 1, "d": ' + b"[" * 600 + b"]" * 600 + b"}]"
    first, second = PARSER.parse_message(body)
    assert isinstance(first, Packet)
    assert isinstance(second, Rejection)
    assert (second.index, second.reason, second.raw) == (1, "too_deep", body)


def test_time_values_are_quoted_short_however_deep() -> None:
    nested = b'{"a":' * 200 + b"1" + b"}" * 200
    rejected = one(b'{"id": "x", "ts": ' + nested + b"}")
    assert isinstance(rejected, Rejection)
    assert rejected.reason == "bad_time"
    assert "(a JSON object)" in rejected.detail


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
fields = st.sampled_from(["id", "ts", "observationDateTime", "@session", "x"])
session_docs = st.dictionaries(
    st.sampled_from(["state", "start", "end", "info", "error"]),
    st.sampled_from(["open", "closed", "waiting"]) | json_values,
    max_size=5,
)


@hypothesis_settings(max_examples=300, deadline=None)
@given(st.dictionaries(fields, json_values | session_docs, max_size=6), st.integers(0, 1100))
def test_parsing_never_raises_and_every_refusal_has_a_reason(
    doc: dict[str, Any], depth: int
) -> None:
    body = orjson.dumps(doc)
    if depth:  # the same document nested inside `depth` arrays, as one field
        body = body[:-1] + (b"," if doc else b"") + b'"d":' + b"[" * depth + b"]" * depth + b"}"
    for message in (body, b"[" + body + b"," + body + b"]", body + b"\n" + body):
        for item in PARSER.parse_message(message, ndjson=b"\n" in message):
            assert isinstance(item, (Packet, Rejection))
            if isinstance(item, Rejection):
                assert item.reason in REJECT_REASONS and item.detail and item.raw


@hypothesis_settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64))
def test_any_bytes_parse_to_packets_or_reasons(body: bytes) -> None:
    for ndjson in (False, True):
        for item in PARSER.parse_message(body, ndjson=ndjson):
            assert isinstance(item, Packet) or item.reason in REJECT_REASONS


@pytest.mark.parametrize(
    ("document", "path", "expected"),
    [
        ({"a": {"b": 1}}, ("a", "b"), 1),
        ({"a": {"b": None}}, ("a", "b"), None),
        ({"a": {"c": 1}}, ("a", "b"), None),
        ({"a": [{"b": 1}]}, ("a", "b"), None),
        ({"a": "b"}, ("a", "b"), None),
        ("not an object", ("a",), None),
        ({"a": 0}, (), {"a": 0}),
    ],
)
def test_lookup_follows_a_dotted_path_through_objects_only(
    document: Any, path: tuple[str, ...], expected: Any
) -> None:
    assert lookup(document, path) == expected


def versioned(
    document: dict[str, Any],
    sent: int | None = None,
    parser: PacketParser = PARSER,
    compared: Any = lambda version: version * 1000,
) -> Packet:
    raw = orjson.dumps(document)
    return parser.versioned(document, raw, "v", "k", sent, "external", compared)


def test_versioned_packet_is_timed_by_its_time_field_else_the_version_else_arrival() -> None:
    timed = versioned({"observationDateTime": "2023-11-14T22:13:20Z"}, T0 * 1000)
    assert timed.ts_us == T0 * 1_000_000
    # An unusable time is no refusal here: the version, read as an epoch time, stands in.
    by_version = versioned({"observationDateTime": "soon"}, (T0 + 5) * 1000)
    assert by_version.ts_us == (T0 + 5) * 1_000_000
    before = datetime.now(UTC).timestamp() * 1_000_000
    arrived = versioned({"x": 1})
    assert before - 1 <= arrived.ts_us <= datetime.now(UTC).timestamp() * 1_000_000 + 1
    assert arrived.version is None and arrived.latest_version == arrived.ts_us


def test_versioned_packet_keeps_the_version_sent_when_its_scale_differs() -> None:
    packet = versioned({"x": 1}, 7)
    assert (packet.version, packet.version_type, packet.es_version) == (7000, "external", 7)
    same = versioned({"x": 1}, 7, compared=lambda version: version)
    assert (same.version, same.es_version) == (7, None)
    assert (packet.variable_id, packet.key, packet.session_doc) == ("v", "k", None)
    assert packet.digest == versioned({"x": 1.0}).digest


def test_versioned_packet_too_large_is_refused_before_its_version_is_read() -> None:
    small = PacketParser(Settings(max_packet_bytes=16))

    def compared(version: int) -> int:
        raise AssertionError("the version of a refused document is not read")

    with pytest.raises(PacketRejected) as refused:
        versioned({"x": "a long enough value"}, 1, small, compared)
    assert refused.value.code == "too_large"


def test_id_text_and_document_time_answer_none_where_ingest_refuses() -> None:
    assert PARSER.id_text({"id": 12}) == "12"
    assert PARSER.id_text({"id": True}) is None
    assert PARSER.id_text({"id": {"a": 1}}) is None
    assert PARSER.id_text({}) is None
    assert PARSER.document_time({"observationDateTime": T0}) == T0 * 1_000_000
    assert PARSER.document_time({"observationDateTime": "soon"}) is None
    assert PARSER.document_time({}) is None
