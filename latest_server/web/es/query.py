"""The query DSL of ``_search``, ``_msearch`` and ``_count`` → a ``Plan``: a time window and the
variables it covers. The subset is what Grafana's Elasticsearch data source sends (a ``bool``
``filter`` of a ``range`` on the time field and a ``query_string``) plus ``term``/``terms`` on
the id; any other part is a 400 naming it (errors.Unsupported), never ignored.

Every entry of a variable's history is a document of the index: its time is the entry's time
(the field LATEST_TIME_FIELD names, whichever of its names the request uses) and its id the
variable's (LATEST_ID_FIELD, also as ``<id>.keyword``). Dates compare at millisecond precision,
as Elasticsearch's ``date`` type stores them.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

from latest_server.settings import Settings
from latest_server.times import MAX_US, epoch_to_us, iso_to_us
from latest_server.web.es.errors import ParseError, Unsupported

_UTC = ZoneInfo("UTC")
EPOCH_FORMATS = {"epoch_millis": "ms", "epoch_second": "s"}
ISO_FORMATS = {
    "strict_date_optional_time",
    "date_optional_time",
    "strict_date_optional_time_nanos",
    "date_time",
    "strict_date_time",
    "iso8601",
}


@dataclass(frozen=True, slots=True)
class IdTest:
    """One condition on the id: any of ``exact``, or any of the glob ``patterns``."""

    exact: frozenset[str] = frozenset()
    patterns: tuple[str, ...] = ()

    def matches(self, variable: str) -> bool:
        return variable in self.exact or any(
            fnmatch.fnmatchcase(variable, p) for p in self.patterns
        )


@dataclass(slots=True)
class Plan:
    """Entries with ``lo <= ts < hi`` (µs) of the variables passing every ``tests`` entry."""

    lo: int = 0
    hi: int = MAX_US
    tests: list[IdTest] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return self.lo >= self.hi

    def exact_ids(self) -> set[str] | None:
        """The ids the search can only cover, when a test names them all; else None (the
        index's variables must be listed)."""
        named = [set(test.exact) for test in self.tests if not test.patterns]
        if not named:
            return None
        found = set.intersection(*named)
        return {v for v in found if self.matches(v)}

    def matches(self, variable: str) -> bool:
        return all(test.matches(variable) for test in self.tests)

    def prefix(self) -> str:
        """A prefix of every id the plan covers (from its globs' literal beginnings)."""
        longest = ""
        for test in self.tests:
            if test.exact or not test.patterns:
                continue
            heads = [re.split(r"[*?\[]", pattern, maxsplit=1)[0] for pattern in test.patterns]
            common = heads[0]
            for head in heads[1:]:
                while not head.startswith(common):
                    common = common[:-1]
            longest = max(longest, common, key=len)
        return longest


class Fields:
    """The field names a search may use, from the settings."""

    def __init__(self, settings: Settings) -> None:
        self.time = set(settings.time_fields) | {"@timestamp"}
        self.id = {settings.id_field, settings.id_field + ".keyword"}

    def is_time(self, name: str) -> bool:
        return name in self.time

    def is_id(self, name: str) -> bool:
        return name in self.id


def plan(query: Any, fields: Fields) -> Plan:
    """The Plan of a ``query`` (None: every entry)."""
    result = Plan()
    if query is not None:
        _clause(query, fields, result, "query")
    return result


def _one(value: Any, where: str) -> tuple[str, Any]:
    if not isinstance(value, dict) or len(value) != 1:
        raise ParseError(f"[{where}] must be an object with exactly one key")
    ((name, body),) = value.items()
    return str(name), body


def _clause(clause: Any, fields: Fields, result: Plan, where: str) -> None:
    kind, body = _one(clause, where)
    if kind == "match_all":
        return
    if kind == "bool":
        _bool(body, fields, result)
    elif kind == "range":
        _range(body, fields, result)
    elif kind in ("term", "terms", "match", "match_phrase"):
        result.tests.append(_term(kind, body, fields))
    elif kind == "query_string":
        test = _query_string(body, fields)
        if test is not None:
            result.tests.append(test)
    elif kind == "constant_score":
        if not isinstance(body, dict) or "filter" not in body:
            raise ParseError("[constant_score] requires a [filter]")
        _clause(body["filter"], fields, result, "constant_score.filter")
    else:
        raise Unsupported(f"query.{kind}", "queries are bool, range, term, terms, query_string")


def _clauses(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _bool(body: Any, fields: Fields, result: Plan) -> None:
    if not isinstance(body, dict):
        raise ParseError("[bool] must be an object")
    for key, value in body.items():
        if key in ("filter", "must"):
            for clause in _clauses(value):
                _clause(clause, fields, result, f"bool.{key}")
        elif key in ("should", "must_not"):
            if _clauses(value):
                raise Unsupported(f"bool.{key}", "only filter and must clauses are")
        elif key not in ("boost", "minimum_should_match", "_name"):
            raise ParseError(f"[bool] query does not support [{key}]")


def _range(body: Any, fields: Fields, result: Plan) -> None:
    name, spec = _one(body, "range")
    if not fields.is_time(name):
        raise Unsupported(f"range.{name}", "a range is on the time field only")
    if not isinstance(spec, dict):
        raise ParseError(f"[range] query malformed on [{name}]")
    fmt = spec.get("format")
    zone = spec.get("time_zone")
    for key, value in spec.items():
        if key in ("format", "time_zone", "boost", "relation", "_name"):
            continue
        if key not in ("gte", "gt", "lte", "lt"):
            raise Unsupported(f"range.{name}.{key}", "bounds are gte, gt, lte, lt")
        if value is None:
            continue
        ms = to_ms(value, fmt, zone, f"range.{name}.{key}")
        if key == "gte":
            result.lo = max(result.lo, ms * 1000)
        elif key == "gt":
            result.lo = max(result.lo, (ms + 1) * 1000)
        elif key == "lte":
            result.hi = min(result.hi, (ms + 1) * 1000)
        else:
            result.hi = min(result.hi, ms * 1000)


def to_ms(value: Any, fmt: Any, zone: Any, where: str) -> int:
    """A date of a request (a number, or a string in ``fmt``) as epoch milliseconds."""
    if zone not in (None, "UTC", "Z", "+00:00", "utc"):
        raise Unsupported(f"{where}.time_zone", "dates of a range are read in UTC")
    formats = [part for part in str(fmt).split("||") if part] if fmt else []
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ParseError(f"failed to parse date field [{value}] in [{where}]")
    if isinstance(value, str) and ("now" in value or "||" in value):
        raise Unsupported(f"{where}: {value}", "date math")
    numeric = isinstance(value, (int, float)) or re.fullmatch(r"-?\d+(\.\d+)?", value) is not None
    unknown = [f for f in formats if f not in EPOCH_FORMATS and f not in ISO_FORMATS]
    if unknown:
        raise Unsupported(
            f"{where}.format: {unknown[0]}",
            "formats are epoch_millis, epoch_second and ISO-8601 ones",
        )
    if numeric:
        unit = "ms"
        for f in formats:
            if f in EPOCH_FORMATS:
                unit = EPOCH_FORMATS[f]
                break
        number = float(value) if isinstance(value, str) else value
        return epoch_to_us(number, unit) // 1000
    try:
        return iso_to_us(str(value).replace("Z", "+00:00"), _UTC) // 1000
    except ValueError:
        raise ParseError(f"failed to parse date field [{value}] in [{where}]") from None


def _value(body: Any, kind: str) -> Any:
    if isinstance(body, dict):
        if "value" in body:
            return body["value"]
        if "query" in body:
            return body["query"]
        raise ParseError(f"[{kind}] query malformed, no [value]")
    return body


def _term(kind: str, body: Any, fields: Fields) -> IdTest:
    if not isinstance(body, dict):
        raise ParseError(f"[{kind}] query malformed")
    names = [k for k in body if k != "boost"]
    if len(names) != 1:
        raise ParseError(f"[{kind}] query must name exactly one field")
    name = names[0]
    if not fields.is_id(name):
        raise Unsupported(f"{kind}.{name}", "a term is on the id field only")
    value = body[name]
    if kind == "terms":
        if not isinstance(value, list):
            raise ParseError("[terms] query requires an array of values")
        values = value
    else:
        values = [_value(value, kind)]
    return IdTest(exact=frozenset(str(v) for v in values))


_TOKEN = re.compile(r'\s*(?:(\()|(\))|"((?:[^"\\]|\\.)*)"|((?:[^\s()"\\]|\\.)+))')


def _tokens(text: str) -> Iterable[tuple[str, str]]:
    at = 0
    while at < len(text):
        found = _TOKEN.match(text, at)
        if found is None:
            if text[at:].strip():
                raise Unsupported(f"query_string: {text}", "cannot read it")
            return
        at = found.end()
        if found.group(1):
            yield "(", "("
        elif found.group(2):
            yield ")", ")"
        elif found.group(3) is not None:
            yield "quoted", re.sub(r"\\(.)", r"\1", found.group(3))
        else:
            yield "word", found.group(4)


def _query_string(body: Any, fields: Fields) -> IdTest | None:
    """``*``, or ``<id>:<value>`` terms joined by OR (values quoted, escaped, or globs with
    ``*`` and ``?``), optionally in parentheses: ``id:(a OR b)``."""
    if not isinstance(body, dict) or not isinstance(body.get("query"), str):
        raise ParseError("[query_string] requires a [query] string")
    for key in body:
        if key not in ("query", "analyze_wildcard", "default_operator", "boost", "lenient"):
            raise Unsupported(f"query_string.{key}")
    text = body["query"].strip()
    if text in ("", "*", "*:*"):
        return None
    tokens = list(_tokens(text))
    exact: set[str] = set()
    patterns: list[str] = []
    expect_term = True
    for kind, value in _flatten(tokens, text):
        if expect_term:
            name, _, rest = value.partition(":")
            if kind != "word" or not fields.is_id(name):
                raise Unsupported(f"query_string: {text}", "only id:<value> terms joined by OR")
            _add(rest, exact, patterns)
            expect_term = False
        elif kind == "word" and value == "OR":
            expect_term = True
        else:
            raise Unsupported(f"query_string: {text}", "only id:<value> terms joined by OR")
    if expect_term:
        raise Unsupported(f"query_string: {text}", "only id:<value> terms joined by OR")
    return IdTest(frozenset(exact), tuple(patterns))


def _flatten(tokens: list[tuple[str, str]], text: str) -> Iterable[tuple[str, str]]:
    """``id:(a OR b)`` → ``id:a OR id:b``; ``id:"x y"`` → one term; others as they are."""
    i = 0
    while i < len(tokens):
        kind, value = tokens[i]
        if kind == "word" and value.endswith(":") and i + 1 < len(tokens):
            following, inner = tokens[i + 1]
            if following == "quoted":
                yield "word", value + "\0" + inner
                i += 2
                continue
            if following == "(":
                close = next((j for j in range(i + 2, len(tokens)) if tokens[j][0] == ")"), None)
                if close is None:
                    raise ParseError(f"cannot parse query_string [{text}]")
                for n, (k, v) in enumerate(tokens[i + 2 : close]):
                    if n % 2:
                        yield k, v
                    else:
                        quoted = "\0" + v if k == "quoted" else v
                        yield ("word", value + quoted) if k in ("word", "quoted") else (k, v)
                i = close + 1
                continue
        if kind in ("(", ")"):
            raise Unsupported(f"query_string: {text}", "only id:<value> terms joined by OR")
        yield kind, value
        i += 1


def _add(rest: str, exact: set[str], patterns: list[str]) -> None:
    if rest.startswith("\0"):  # quoted: literal
        exact.add(rest[1:])
        return
    if re.search(r"(?<!\\)[*?]", rest):
        patterns.append(re.sub(r"\\(.)", lambda m: f"[{m.group(1)}]", rest))
        return
    exact.add(re.sub(r"\\(.)", r"\1", rest))
