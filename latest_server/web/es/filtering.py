"""``_source`` and ``filter_path`` filtering.

``filter_path``: keep the parts of a response named by dotted patterns, as Elasticsearch's
FilterPath does. A pattern is a list of segments split on unescaped dots (``\\.`` is a dot in a
key); a segment is a key, a glob (``*``, ``?``, ``[...]``) matching one key, or ``**``, which
matches one key or more. A value whose path matches a whole pattern is kept whole; lists are
walked through with the filter of the key that holds them; what ends up empty is dropped.

Matching is a simulation of the patterns as one automaton, never a search: where matching
stands below a key is a *set* of positions (pattern, segment), so a position reached along two
ways is one position. The work per key is at most the number of segments, whatever the
patterns (``**.**.**…`` once took exponential time and memory here, a request freezing the
event loop), and filter_path is bounded to MAX_PARTS segments in all, refused with a 400 past
it. Which set each key leads to is remembered per set, since the items of a ``_bulk`` answer
repeat the same keys (Logstash filters every answer with ``errors,items.*.error,items.*.status``).
"""

from __future__ import annotations

import fnmatch
import functools
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from latest_server.web.es.errors import IllegalArgument
from latest_server.web.es.params import text

MAX_SOURCE_PATTERNS = 100  # include and exclude patterns of one _source
MAX_PARTS = 100  # segments over every pattern of one filter_path
MAX_MOVES = 1024  # keys remembered per _Level: a response's keys repeat, a document's may not
MAX_LEVELS = 16  # levels remembered per filter
DOUBLE = "**"
GLOB_CHARS = frozenset("*?[")
_DOT = re.compile(r"(?<!\\)\.")


class _Position:
    """One segment of one pattern: what the next key must match, and whether the segment
    before it was ``**`` (which may go on consuming keys, so the position stays)."""

    __slots__ = ("final", "head", "literal", "stays")

    def __init__(self, head: str, final: bool, stays: bool) -> None:
        self.head = head
        self.final = final  # matching this segment completes the pattern
        self.stays = stays
        self.literal = GLOB_CHARS.isdisjoint(head)

    def matches(self, key: str) -> bool:
        if self.literal:
            return key == self.head
        return self.head in ("*", DOUBLE) or fnmatch.fnmatchcase(key, self.head)


class Filter:
    """A compiled filter_path. ``start`` is the level of the response's top."""

    def __init__(self, patterns: tuple[tuple[str, ...], ...]) -> None:
        self.positions: list[_Position] = []
        starts = []
        for parts in patterns:
            starts.append(len(self.positions))
            for i, head in enumerate(parts):
                stays = i > 0 and parts[i - 1] == DOUBLE
                self.positions.append(_Position(head, i == len(parts) - 1, stays))
        self.levels: dict[frozenset[int], _Level] = {}
        self.start = self.level(frozenset(starts))

    def level(self, states: frozenset[int]) -> _Level:
        found = self.levels.get(states)
        if found is None:
            found = _Level(self, states)
            if len(self.levels) < MAX_LEVELS:
                self.levels[states] = found
        return found


class _Level:
    """Where matching stands: a set of positions (indexes into ``Filter.positions``)."""

    __slots__ = ("filter", "moves", "names", "states")

    def __init__(self, owner: Filter, states: frozenset[int]) -> None:
        self.filter = owner
        self.states = tuple(sorted(states))
        positions = [owner.positions[s] for s in self.states]
        # Literal names only: each is looked up, rather than every key of the value walked.
        literal = all(p.literal and not p.stays for p in positions)
        self.names = tuple(dict.fromkeys(p.head for p in positions)) if literal else None
        self.moves: dict[str, _Level | bool | None] = {}

    def move(self, key: str) -> _Level | bool | None:
        """The level below ``key``; True: the value is kept whole; None: nothing is kept."""
        if key in self.moves:
            return self.moves[key]
        positions = self.filter.positions
        below: set[int] = set()
        found: _Level | bool | None = None
        for state in self.states:
            position = positions[state]
            if position.matches(key):
                if position.final:
                    found = True
                    break
                below.add(state + 1)
            if position.stays:
                below.add(state)
        else:
            found = self.filter.level(frozenset(below)) if below else None
        if len(self.moves) < MAX_MOVES:
            self.moves[key] = found
        return found


def split(pattern: str) -> tuple[str, ...]:
    return tuple(part.replace("\\.", ".") for part in _DOT.split(pattern.strip()))


@functools.lru_cache(maxsize=32)
def compile_filter(value: str) -> Filter:
    """The filter of a ``filter_path`` parameter (comma-separated patterns); 400 past
    MAX_PARTS segments in all."""
    patterns = tuple(dict.fromkeys(split(p) for p in value.split(",") if p.strip()))
    parts = sum(len(p) for p in patterns)
    if parts > MAX_PARTS:
        raise IllegalArgument(
            f"filter_path has {parts} segments, more than the {MAX_PARTS} latest-server takes"
        )
    return Filter(patterns)


def filter_path(content: Any, patterns: Iterable[str] | str) -> Any:
    """Keep the parts of ``content`` named by the patterns. Empty results become ``{}``."""
    value = patterns if isinstance(patterns, str) else ",".join(patterns)
    kept = _keep(content, compile_filter(value).start)
    return {} if kept is _NOTHING else kept


_NOTHING = object()


def _keep(value: Any, level: _Level) -> Any:
    if isinstance(value, list):
        items = [_keep(item, level) for item in value]
        items = [item for item in items if item is not _NOTHING]
        return items if items else _NOTHING
    if not isinstance(value, dict):
        return _NOTHING
    out = {}
    for key in value if level.names is None else level.names:
        if key in value:
            child = level.move(key)
            if child is True:
                out[key] = value[key]
            elif child is not None and child is not False:
                kept = _keep(value[key], child)
                if kept is not _NOTHING:
                    out[key] = kept
    return out if out else _NOTHING


# --- _source ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SourceFilter:
    enabled: bool = True
    includes: tuple[str, ...] = ()
    excludes: tuple[str, ...] = ()

    @property
    def whole(self) -> bool:
        return self.enabled and not self.includes and not self.excludes

    def apply(self, source: dict[str, Any]) -> dict[str, Any]:
        return _filter_source(source, self.includes, self.excludes, "")


def _names(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    if isinstance(value, list):
        return tuple(text(part) for part in value)
    return ()


def source_filter(
    params: Mapping[str, Any], spec: Any = None, base: SourceFilter | None = None
) -> SourceFilter:
    """From query parameters (``_source``, ``_source_includes``, ``_source_excludes``) or an
    mget doc's ``_source`` (bool, list or {"includes", "excludes"}), over ``base`` defaults."""
    result = base or SourceFilter()
    if spec is None:
        spec = params.get("_source")
        if isinstance(spec, str) and spec.lower() in ("true", "false"):
            spec = spec.lower() == "true"
    if isinstance(spec, bool):
        result = SourceFilter(spec, result.includes, result.excludes)
    elif isinstance(spec, (str, list)):
        result = SourceFilter(True, _names(spec), result.excludes)
    elif isinstance(spec, dict):
        result = SourceFilter(
            True, _names(spec.get("includes", [])), _names(spec.get("excludes", []))
        )
    includes = _names(params.get("_source_includes"))
    excludes = _names(params.get("_source_excludes"))
    if includes or excludes:
        result = SourceFilter(True, includes or result.includes, excludes or result.excludes)
    count = len(result.includes) + len(result.excludes)
    if count > MAX_SOURCE_PATTERNS:  # each is tried on every path of the document
        raise IllegalArgument(
            f"_source has {count} include and exclude patterns, more than the "
            f"{MAX_SOURCE_PATTERNS} latest-server takes"
        )
    return result


def _filter_source(
    source: dict[str, Any], includes: tuple[str, ...], excludes: tuple[str, ...], prefix: str
) -> dict[str, Any]:
    included, excluded = _globs(includes), _globs(excludes)
    deeper = any("*" in pattern for pattern in includes)
    out: dict[str, Any] = {}
    for key, value in source.items():
        path = prefix + key
        if excluded(path):
            continue
        if not includes or included(path):
            if isinstance(value, dict) and excludes:
                value = _filter_source(value, (), excludes, path + ".")
            out[key] = value
        elif isinstance(value, dict) and (
            deeper or any(pattern.startswith(path + ".") for pattern in includes)
        ):
            inner = _filter_source(value, includes, excludes, path + ".")
            if inner:
                out[key] = inner
    return out


@functools.lru_cache(maxsize=256)
def _globs(patterns: tuple[str, ...]) -> Callable[[str], bool]:
    """Whether a path matches any of ``patterns``: one regular expression for them all, so a
    path costs one match in C rather than a Python call per pattern."""
    if not patterns:
        return lambda path: False
    regex = re.compile("|".join(fnmatch.translate(pattern) for pattern in patterns))
    return lambda path: regex.match(path) is not None
