"""Where each key of a TOML document is written: the line of every key, table and array entry.

tomllib gives values but no positions; errors about a builder.toml must name the line. This
scanner follows only what decides positions (table headers, `key =` at the start of a
statement, strings and brackets that may span lines); tomllib has already checked the syntax.
"""

from __future__ import annotations

import re

# A key path: names, with the index of the entry for arrays of tables ("order", 1, "group", 0).
KeyPath = tuple[str | int, ...]

_BARE = r"[A-Za-z0-9_-]+"
_QUOTED = r'"(?:[^"\\]|\\.)*"|\'[^\']*\''
_KEY = rf"(?:{_BARE}|{_QUOTED})(?:\s*\.\s*(?:{_BARE}|{_QUOTED}))*"
_ARRAY_TABLE = re.compile(rf"^\s*\[\[\s*({_KEY})\s*\]\]")
_TABLE = re.compile(rf"^\s*\[\s*({_KEY})\s*\]")
_KEY_VALUE = re.compile(rf"^\s*({_KEY})\s*=")
_PART = re.compile(rf"{_BARE}|{_QUOTED}")


def _parts(dotted: str) -> list[str]:
    names = []
    for match in _PART.finditer(dotted):
        text = match.group(0)
        if text[0] == '"':
            text = text[1:-1].encode().decode("unicode_escape")
        elif text[0] == "'":
            text = text[1:-1]
        names.append(text)
    return names


class _Scanner:
    """Tracks strings and brackets that continue past the end of a line."""

    def __init__(self) -> None:
        self.multiline: str | None = None  # '"""' or "'''" while inside one
        self.depth = 0  # open [ and { of a value

    @property
    def at_statement(self) -> bool:
        return self.multiline is None and self.depth == 0

    def feed(self, text: str) -> None:
        i = 0
        while i < len(text):
            if self.multiline is not None:
                end = text.find(self.multiline, i)
                if end < 0:
                    return
                i = end + 3
                self.multiline = None
                continue
            char = text[i]
            if char == "#":
                return
            if text.startswith('"""', i) or text.startswith("'''", i):
                self.multiline = text[i : i + 3]
                i += 3
                continue
            if char in "\"'":
                i = self._skip_string(text, i)
                continue
            if char in "[{":
                self.depth += 1
            elif char in "]}":
                self.depth = max(0, self.depth - 1)
            i += 1

    @staticmethod
    def _skip_string(text: str, start: int) -> int:
        quote = text[start]
        i = start + 1
        while i < len(text):
            if quote == '"' and text[i] == "\\":
                i += 2
                continue
            if text[i] == quote:
                return i + 1
            i += 1
        return i


def key_lines(text: str) -> dict[KeyPath, int]:
    """Line number (1-based) of every key, table header and array-of-tables entry."""
    lines: dict[KeyPath, int] = {}
    entries: dict[KeyPath, int] = {}  # array of tables -> index of its current entry
    current: KeyPath = ()
    scanner = _Scanner()

    def resolve(names: list[str]) -> KeyPath:
        path: KeyPath = ()
        for name in names:
            path += (name,)
            if path in entries:
                path += (entries[path],)
        return path

    for number, line in enumerate(text.splitlines(), start=1):
        if scanner.at_statement:
            if match := _ARRAY_TABLE.match(line):
                names = _parts(match.group(1))
                parent = resolve(names[:-1])
                array = (*parent, names[-1])
                entries[array] = entries.get(array, -1) + 1
                current = (*array, entries[array])
                lines.setdefault(array, number)
                lines[current] = number
                continue
            if match := _TABLE.match(line):
                current = resolve(_parts(match.group(1)))
                lines.setdefault(current, number)
                continue
            if match := _KEY_VALUE.match(line):
                path = current
                for name in _parts(match.group(1)):
                    path += (name,)
                    lines.setdefault(path, number)
                scanner.feed(line[match.end() :])
                continue
        scanner.feed(line)
    return lines


def dotted(path: KeyPath) -> str:
    """buildpacks[0].uri for ("buildpacks", 0, "uri")."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text
