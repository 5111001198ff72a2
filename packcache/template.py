"""`--format '{{.DiffID}} {{.Size}}'`: the part of Go's text/template that docker users write.

Fields are the keys of the command's JSON output, matched as docker users spell them: `.DiffID`,
`.diff_id` and `.diffid` are one field (case and underscores do not count). What is supported:
`{{.Field}}`, `{{.Field.Key}}`, `{{.}}`, `{{json .Field}}`, `{{join .Field ", "}}`,
`{{upper .Field}}`, `{{lower .Field}}`, `{{truncate .Field 12}}`, `\\t` and `\\n`, and a leading
`table ` for aligned columns under a header, as `docker images --format 'table ...'` prints.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from packcache.errors import UsageError

_ACTION = re.compile(r"{{-?\s*(.*?)\s*-?}}", re.DOTALL)
_FUNCTIONS: dict[str, tuple[int, Callable[..., object]]] = {
    "json": (1, lambda value: json.dumps(value)),
    "join": (2, lambda value, sep: sep.join(map(_text, value or []))),
    "upper": (1, lambda value: _text(value).upper()),
    "lower": (1, lambda value: _text(value).lower()),
    "truncate": (2, lambda value, n: _text(value)[: int(n)]),
}


def _key(name: str) -> str:
    return name.replace("_", "").lower()


def _text(value: object) -> str:
    """A value as Go's template prints it: lists in brackets, booleans lower-case."""
    if value is None:
        return "<no value>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + " ".join(map(_text, value)) + "]"
    if isinstance(value, dict):
        return json.dumps(value)
    return str(value)


@dataclass(frozen=True)
class _Field:
    path: tuple[str, ...]  # () is `.`, the whole row

    def header(self, row: object) -> str:
        """The column's name: the JSON key (of `row`) the field names, as "DIFF ID"."""
        if not self.path:
            return "VALUE"
        name = self.path[-1]
        if isinstance(row, Mapping) and len(self.path) == 1:
            name = next((key for key in row if _key(key) == _key(name)), name)
        return name.upper().replace("_", " ")

    def value(self, row: object) -> object:
        for name in self.path:
            if not isinstance(row, Mapping):
                raise UsageError(f"--format: .{'.'.join(self.path)}: {name} is not a field")
            keys = {_key(key): key for key in row}
            if _key(name) not in keys:
                known = ", ".join(f".{key}" for key in row)
                raise UsageError(f"--format: no field .{name}; the fields are {known}")
            row = row[keys[_key(name)]]
        return row


@dataclass(frozen=True)
class _Call:
    function: str
    field: _Field
    args: tuple[str, ...]

    def text(self, row: object) -> str:
        value = self.field.value(row)
        if not self.function:
            return _text(value)
        return _text(_FUNCTIONS[self.function][1](value, *self.args))


def _parse_action(source: str) -> _Call:
    try:
        words = shlex.split(source)
    except ValueError as exc:
        raise UsageError(f"--format: cannot read {{{{{source}}}}}: {exc}") from None
    function = words.pop(0) if words and not words[0].startswith(".") else ""
    if function and function not in _FUNCTIONS:
        raise UsageError(
            f"--format: unknown function {function!r} (known: {', '.join(_FUNCTIONS)})"
        )
    if not words or not words[0].startswith("."):
        raise UsageError(f"--format: {{{{{source}}}}} names no field (write .Field)")
    arity = _FUNCTIONS[function][0] if function else 1
    if len(words) != arity:
        raise UsageError(f"--format: {{{{{source}}}}} takes {arity} argument(s)")
    path = tuple(part for part in words[0].split(".") if part)
    return _Call(function, _Field(path), tuple(words[1:]))


class Template:
    """A parsed --format template; `render` gives the lines for a list of rows."""

    def __init__(self, source: str) -> None:
        self.source = source
        text = source.replace("\\t", "\t").replace("\\n", "\n")
        self.table = text.startswith("table ")
        text = text.removeprefix("table ")
        # Literal text and actions alternate: parts[0], action, parts[1], action, ...
        self._parts = _ACTION.split(text)
        self._calls = [_parse_action(source) for source in self._parts[1::2]]

    def _row(self, row: object) -> str:
        out = []
        for index, part in enumerate(self._parts):
            out.append(self._calls[index // 2].text(row) if index % 2 else part)
        return "".join(out)

    def render(self, rows: Sequence[object]) -> str:
        lines = [self._row(row) for row in rows]
        if not self.table:
            return "\n".join(lines)
        first = rows[0] if rows else None
        headers = "".join(
            self._calls[index // 2].field.header(first) if index % 2 else part
            for index, part in enumerate(self._parts)
        )
        return _aligned([headers, *lines])


def _aligned(lines: Sequence[str]) -> str:
    """Tab-separated cells in columns three spaces apart, as docker's tabwriter sets them."""
    rows = [line.split("\t") for line in lines]
    widths: list[int] = []
    for cells in rows:
        for index, cell in enumerate(cells[:-1]):
            if index == len(widths):
                widths.append(0)
            widths[index] = max(widths[index], len(cell))
    return "\n".join(
        "".join(cell.ljust(widths[i] + 3) for i, cell in enumerate(cells[:-1])) + cells[-1]
        for cells in rows
    ).rstrip("\n")


def parse_format(text: str) -> str | Template:
    """--format's value: "table", "json", or a template (anything with an action in it)."""
    if text in ("table", "json"):
        return text
    if "{{" not in text:
        raise UsageError(
            f"--format {text!r} is not one of table, json, or a template such as '{{{{.DiffID}}}}'"
        )
    return Template(text)
