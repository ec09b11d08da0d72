#!/usr/bin/env python3
"""Plain measures of the code's layout: module count, lines per module, the largest functions and
the import cycles among the project's own modules.

Why a script: the house rules (split a module past ~400 lines, imports form one chain) are easy to
state and easy to drift from; this prints the figures so that a change can say what it did to them.
It reads the source with ``ast`` and ``tokenize`` only and never imports the package, so it runs
on a broken tree, and with any Python 3.10+ (no dependencies)::

    python scripts/layout.py [--top 10] [--limit 400] [--check] [PACKAGE_DIR ...]

What is counted:

* Lines: physical lines of the file (what an editor shows, what ``wc -l`` counts). ``code`` lines
  beside them leave out blank lines, comments and docstrings (via ``tokenize``).
* Functions: every ``def`` / ``async def`` (methods and nested functions too), from the ``def``
  line to its last line, decorators not included; named ``module:Class.method``.
* Imports: every import executed when the module is imported, that is, in the module body and in
  its ``if``/``try``/``with`` blocks, **including** ``if TYPE_CHECKING:`` blocks (a cycle that only
  type checking sees is still two modules that each need the other). Imports inside functions
  are lazy and are not counted; their number is printed. ``from a.b import c`` is an edge to
  ``a.b.c`` when that is a module, else to ``a.b`` (as import-linter's grimp counts it).
* Cycles: the strongly connected components of that graph with more than one module (or a module
  that imports itself); for each, one shortest cycle is printed, with ``[TYPE_CHECKING]`` on
  edges that exist only under TYPE_CHECKING.

``--check`` exits with status 1 when a module is over ``--limit`` lines or there is a cycle.
"""

from __future__ import annotations

import argparse
import ast
import io
import itertools
import statistics
import sys
import tokenize
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("latest_server", "ingest_client")


@dataclass
class Module:
    name: str
    path: Path
    lines: int
    code_lines: int
    tree: ast.Module
    imports: dict[str, bool] = field(default_factory=dict)  # target -> only under TYPE_CHECKING
    lazy_imports: int = 0


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def code_line_count(source: str) -> int:
    """Lines holding a token other than a comment, a newline or a docstring."""
    docstrings: set[int] = set()
    for node in ast.walk(ast.parse(source)):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
            value = body[0].value
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                docstrings.update(range(body[0].lineno, (body[0].end_lineno or 0) + 1))
    lines: set[int] = set()
    skip = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type in skip or token.type == tokenize.ENDMARKER:
            continue
        for line in range(token.start[0], token.end[0] + 1):
            if line not in docstrings:
                lines.add(line)
    return len(lines)


def load(packages: list[str]) -> dict[str, Module]:
    modules: dict[str, Module] = {}
    for package in packages:
        for path in sorted((ROOT / package).rglob("*.py")):
            source = path.read_text(encoding="utf-8")
            name = module_name(path)
            modules[name] = Module(
                name=name,
                path=path,
                lines=len(source.splitlines()),
                code_lines=code_line_count(source),
                tree=ast.parse(source, filename=str(path)),
            )
    return modules


def is_type_checking(test: ast.expr) -> bool:
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    return isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


def resolve(module: Module, node: ast.Import | ast.ImportFrom, known: set[str]) -> list[str]:
    """The project's modules an import statement makes ``module`` depend on."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            package = module.name.split(".")
            if module.path.name != "__init__.py":
                package.pop()
            package = package[: len(package) - (node.level - 1)]
            base = ".".join([*package, base] if base else package)
        names = []
        for alias in node.names:
            candidate = f"{base}.{alias.name}"
            names.append(candidate if candidate in known else base)
    targets = []
    for name in names:
        while name and name not in known:  # `import a.b.c` of a non-module c: depend on a.b
            name = name.rpartition(".")[0]
        if name:
            targets.append(name)
    return targets


def collect_imports(module: Module, known: set[str]) -> None:
    def visit(statements: list[ast.stmt], type_checking: bool) -> None:
        for node in statements:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target in resolve(module, node, known):
                    previous = module.imports.get(target, True)
                    module.imports[target] = previous and type_checking
            elif isinstance(node, ast.If):
                visit(node.body, type_checking or is_type_checking(node.test))
                visit(node.orelse, type_checking)
            elif isinstance(node, (ast.Try, ast.With, ast.AsyncWith)):
                visit(node.body, type_checking)
                for handler in getattr(node, "handlers", []):
                    visit(handler.body, type_checking)
                visit(getattr(node, "orelse", []), type_checking)
                visit(getattr(node, "finalbody", []), type_checking)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                for inner in ast.walk(node):
                    if isinstance(inner, (ast.Import, ast.ImportFrom)) and resolve(
                        module, inner, known
                    ):
                        module.lazy_imports += 1

    visit(module.tree.body, False)


def functions(module: Module) -> list[tuple[int, str]]:
    found: list[tuple[int, str]] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                qualified = f"{prefix}{child.name}"
                found.append(((child.end_lineno or child.lineno) - child.lineno + 1, qualified))
                visit(child, f"{qualified}.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")
            else:
                visit(child, prefix)

    visit(module.tree, "")
    return [(size, f"{module.name}:{name}") for size, name in found]


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in graph[node]:
                    components.append(sorted(component))
    return components


def shortest_cycle(graph: dict[str, set[str]], members: list[str]) -> list[str]:
    """A shortest path from the component's first module back to itself, within the component."""
    inside = set(members)
    start = members[0]
    previous: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for child in sorted(graph[node] & inside):
            if child == start:
                path = [node]
                while path[-1] != start:
                    path.append(previous[path[-1]])
                return [start, *reversed(path[:-1]), start] if node != start else [start, start]
            if child not in previous:
                previous[child] = node
                queue.append(child)
    return [start]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("packages", nargs="*", default=list(PACKAGES), help="package folders")
    parser.add_argument("--top", type=int, default=10, help="largest functions to list [10]")
    parser.add_argument("--limit", type=int, default=400, help="lines a module may have [400]")
    parser.add_argument("--check", action="store_true", help="exit 1 on a breach or a cycle")
    args = parser.parse_args(argv)

    modules = load(args.packages)
    known = set(modules)
    for module in modules.values():
        collect_imports(module, known)
    sizes = [module.lines for module in modules.values()]
    largest = max(modules.values(), key=lambda module: module.lines)

    print(f"modules: {len(modules)} ({', '.join(args.packages)})")
    folders: dict[str, int] = {}
    for module in modules.values():
        folder = str(module.path.parent.relative_to(ROOT))
        folders[folder] = folders.get(folder, 0) + 1
    for folder, count in sorted(folders.items()):
        print(f"  {folder}/: {count}")
    median = statistics.median(sizes)
    print(f"lines per module: median {median:g}, max {largest.lines} ({largest.name})")
    code = sum(module.code_lines for module in modules.values())
    print(f"code lines (no blanks, comments, docstrings): {code} of {sum(sizes)}")
    over = sorted((m for m in modules.values() if m.lines > args.limit), key=lambda m: -m.lines)
    print(f"modules over {args.limit} lines: {len(over)}")
    for module in over:
        print(f"  {module.lines:5d}  {module.name}")

    print(f"largest functions (lines, top {args.top}):")
    every = [entry for module in modules.values() for entry in functions(module)]
    for size, name in sorted(every, key=lambda entry: (-entry[0], entry[1]))[: args.top]:
        print(f"  {size:5d}  {name}")

    graph = {name: set(module.imports) for name, module in modules.items()}
    edges = sum(len(targets) for targets in graph.values())
    checking = sum(only for module in modules.values() for only in module.imports.values())
    lazy = sum(module.lazy_imports for module in modules.values())
    print(
        f"imports among the modules: {edges} module-level edges ({checking} only under "
        f"TYPE_CHECKING, counted); {lazy} imports inside functions (lazy, not counted)"
    )
    cycles = strongly_connected(graph)
    print(f"import cycles: {len(cycles)}")
    for members in cycles:
        path = shortest_cycle(graph, members)
        hops = []
        for source, target in itertools.pairwise(path):
            mark = " [TYPE_CHECKING]" if modules[source].imports[target] else ""
            hops.append(f"{source} -> {target}{mark}")
        print(f"  {len(members)} modules: {', '.join(members)}")
        print(f"    e.g. {'; '.join(hops)}")

    return 1 if args.check and (over or cycles) else 0


if __name__ == "__main__":
    sys.exit(main())
