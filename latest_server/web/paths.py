"""Path parameters that hold any character. Variable ids and ES ``_id``s are free text:
``\\n``, ``\\t``, ``%``, ``/``, ``?``, ``#``, emoji arrive percent-encoded and are decoded into
the path before routing. Starlette's ``path`` convertor is ``.*``, which stops at a line break,
so an id with ``\\n`` could be written but never read back (and ``$`` matching before a final
newline sent ``a\\n`` to ``a``). ``{name:any}`` matches every character instead, and ``Mount``
here routes what it mounts the same way."""

from __future__ import annotations

from collections.abc import Sequence

from starlette import routing
from starlette.convertors import Convertor, register_url_convertor
from starlette.routing import compile_path


class AnyConvertor(Convertor[str]):
    regex = "(?s:.*)"  # dot matches a newline too

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("any", AnyConvertor())


def param(name: str) -> str:
    """``{name:any}``, for a route's path (importing this module registers ``any``)."""
    return "{" + name + ":any}"


class Mount(routing.Mount):
    """starlette's Mount, handing every remaining path (newlines included) to its routes."""

    def __init__(self, path: str, routes: Sequence[routing.BaseRoute]) -> None:
        super().__init__(path, routes=routes)
        self.path_regex, self.path_format, self.param_convertors = compile_path(
            self.path + "/{path:any}"
        )
