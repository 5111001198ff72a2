"""pack's create-builder flag values as its flag library (spf13/pflag) reads them: --tag and
--target are string slices (each value may hold several, comma-separated, CSV-quoted);
--label is a string-to-string map (`k=v`, or several pairs `k=v,k2=v2` in one value)."""

from __future__ import annotations

import csv
from collections.abc import Iterable
from dataclasses import dataclass, field

from packcache.builder.flatten import parse_flatten
from packcache.builder.targets import parse_target
from packcache.errors import UsageError
from packcache.refs import normalize


@dataclass
class BuilderOptions:
    """pack's flags beyond builder.toml: --tag, --flatten, --target, --append-image-name-suffix
    (--label is create_builder's extra_labels)."""

    tags: list[str] = field(default_factory=list)
    flatten: list[list[str]] = field(default_factory=list)  # groups of id@version
    targets: list[str] = field(default_factory=list)  # --target values, checked
    append_image_name_suffix: bool = False


def builder_options(
    tags: Iterable[str], flatten: Iterable[str], targets: Iterable[str], append_suffix: bool
) -> BuilderOptions:
    """The flags checked as pack checks them, before anything else is read."""
    options = BuilderOptions(
        tags=string_slice(tags, "--tag"),
        flatten=parse_flatten(flatten),
        targets=string_slice(targets, "--target"),
        append_image_name_suffix=append_suffix,
    )
    for tag in options.tags:
        normalize(tag)
    for target in options.targets:
        parse_target(target)
    return options


def _csv_fields(value: str, flag: str) -> list[str]:
    try:
        return next(csv.reader([value], strict=True))
    except (csv.Error, StopIteration) as exc:
        raise UsageError(f"{flag} {value!r}: {exc}") from None


def string_slice(values: Iterable[str], flag: str) -> list[str]:
    """pflag's StringSlice: every value split as one CSV record ('' gives nothing)."""
    out: list[str] = []
    for value in values:
        if value:
            out.extend(_csv_fields(value, flag))
    return out


def string_to_string(values: Iterable[str], flag: str) -> dict[str, str]:
    """pflag's StringToString: one '=' makes one pair (surrounding quotes trimmed); more
    make a CSV record of pairs. An empty key is refused (no image can carry it)."""
    out: dict[str, str] = {}
    for value in values:
        count = value.count("=")
        if count == 0:
            raise UsageError(f"{flag} {value!r}: expected KEY=VALUE")
        pairs = [value.strip('"')] if count == 1 else _csv_fields(value, flag)
        for pair in pairs:
            key, equals, text = pair.partition("=")
            if not equals or not key:
                raise UsageError(f"{flag} {value!r}: expected KEY=VALUE")
            out[key] = text
    return out
