"""Turning plain results into text: aligned tables for people, JSON for programs."""

from __future__ import annotations

import dataclasses
import json
import operator
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from functools import cache, lru_cache
from typing import TYPE_CHECKING

from packcache.refs import short_id

if TYPE_CHECKING:
    from packcache.operations.housekeeping import RemoveReport
    from packcache.operations.importing import DaemonImportReport
    from packcache.operations.run_image_fetch import ImageFetch
    from packcache.store.prune import PruneResult
    from packcache.store.scan import DiskUsage, ImageUsage, LayerInfo
    from packcache.store.store import EvictedLayer
    from packcache.store.verify import VerifyReport


def table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], right: Collection[int] = ()
) -> str:
    """Columns separated by three spaces, like `docker images`: left-aligned, but the columns
    numbered in `right` (sizes) right-aligned so their units line up.

    Column-wise max() and one format string per line: `ls` prints a row per cached layer.
    """
    widths = [max(map(len, column)) for column in zip(headers, *rows, strict=True)]
    # The last column is not padded, so lines carry no trailing spaces.
    line = "   ".join(
        f"{{:{'>' if index in right else '<'}{width}}}" for index, width in enumerate(widths[:-1])
    )
    line += f"   {{:>{widths[-1]}}}" if len(widths) - 1 in right else "   {}"
    return "\n".join(
        line.format(*row) if row[-1] else line.format(*row).rstrip() for row in [headers, *rows]
    )


def first_and_count(names: Sequence[str]) -> str:
    """One name per table cell and how many more, as docker truncates: "app:1 +2"."""
    if not names:
        return "-"
    return names[0] if len(names) == 1 else f"{names[0]} +{len(names) - 1}"


def layers_table(layers: Sequence[LayerInfo], *, no_trunc: bool = False) -> str:
    """`ls`: short IDs, one digest and one image per cell, unless `no_trunc`."""
    now = time.time()
    ident = (lambda digest: digest) if no_trunc else short_id
    names = (lambda items: ",".join(items) or "-") if no_trunc else first_and_count
    return table(
        ["DIFF ID", "DIGESTS", "SIZE", "IMAGES", "LAST USED"],
        [
            (
                ident(layer.diff_id),
                names(list(map(ident, layer.digests))),
                size(layer.size),
                names(layer.images),
                ago(layer.last_used, now),
            )
            for layer in layers
        ],
        right={2},
    )


def images_table(images: Sequence[ImageUsage], *, no_trunc: bool = False) -> str:
    """`du`'s images: one name and one image ID per cell, unless `no_trunc`."""
    ident = (lambda digest: digest) if no_trunc else short_id
    names = (lambda items: ",".join(items) or "-") if no_trunc else first_and_count
    return table(
        ["IMAGE", "IMAGE ID", "LAYERS", "SIZE", "SHARED SIZE", "UNIQUE SIZE"],
        [
            [
                names(image.refs) if image.refs else ident(image.image_ids[0]),
                names(list(map(ident, image.image_ids))),
                f"{image.cached_layers}/{image.layers}",
                size(image.size),
                size(image.shared_size),
                size(image.unique_size),
            ]
            for image in images
        ],
        right={3, 4, 5},
    )


def version_text() -> str:
    """`packcache --version`: ours, Python's, and the engines the tests run against."""
    import platform

    from packcache import __version__
    from packcache.tested import TESTED_ENGINES

    engines = ", ".join(
        f"{engine.version} (API {engine.api_version}; {' and '.join(engine.image_stores)})"
        for engine in TESTED_ENGINES
    )
    return (
        f"packcache {__version__}\n"
        f"Python {platform.python_version()} ({platform.python_implementation()})\n"
        f"Tested with Docker Engine {engines}"
    )


def count(n: int, noun: str) -> str:
    """'1 layer', '3 layers'."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def to_json(data: object) -> str:
    return json.dumps(data, indent=2, sort_keys=False)


def to_json_lines(items: Iterable[object]) -> str:
    """A JSON array with one compact element a line: json's C encoder only runs without
    indent=, and `ls` writes one element per cached layer."""
    body = ",\n".join(map(_encode, items))
    return f"[\n{body}\n]" if body else "[]"


def to_json_with_rows(fields: dict[str, object], rows_key: str, rows: Iterable[object]) -> str:
    """A JSON object of `fields` plus `rows_key`: a list laid out as `to_json_lines` does, so
    the many-row reports (`du` of 10,000 images) also take the C encoder."""
    members = [f"  {_encode(key)}: {_encode(value)}" for key, value in fields.items()]
    members.append(f"  {_encode(rows_key)}: {to_json_lines(rows)}")
    return "{\n" + ",\n".join(members) + "\n}"


_encode = json.JSONEncoder().encode


# -- The reports as JSON ------------------------------------------------------------------------
# A report's JSON is its dataclass: its fields by name, then the properties named. README lists
# the keys as stable, so where a field's name is not the documented key, the key is kept here.


@cache
def _fields_of(cls: type) -> tuple[tuple[str, ...], Callable[[object], tuple]]:
    """A dataclass's field names, and a function of an instance to their values in order."""
    names = tuple(field.name for field in dataclasses.fields(cls))
    values = operator.attrgetter(*names)
    if len(names) == 1:  # attrgetter of one name gives the value, not a tuple
        return names, lambda report: (values(report),)
    return names, values


def record(
    report: object,
    *,
    renamed: Mapping[str, str] | None = None,
    omitted: Collection[str] = (),
    properties: Sequence[str] = (),
) -> dict[str, object]:
    """Dataclass `report` as a dict for json: each field not `omitted`, under its name or the key
    `renamed` gives it, then the `properties`. Values are taken as they are: a caller makes
    records of nested dataclasses itself."""
    names, values = _fields_of(type(report))
    data = dict(zip(names, values(report), strict=True))
    for name in omitted:
        del data[name]
    for name, key in (renamed or {}).items():
        data[key] = data.pop(name)
    for name in properties:
        data[name] = getattr(report, name)
    return data


def records(rows: Iterable[object]) -> Iterator[dict[str, object]]:
    """`record` of each of many rows of one dataclass, as `ls` and `du` print them."""
    names: tuple[str, ...] = ()
    for row in rows:
        if not names:
            names, values = _fields_of(type(row))
        yield dict(zip(names, values(row), strict=True))


def layers_json(layers: Iterable[LayerInfo]) -> str:
    """`ls`: one layer a line, times as ISO 8601 UTC."""

    def with_times(data: dict[str, object]) -> dict[str, object]:
        data["first_seen"], data["last_used"] = iso(data["first_seen"]), iso(data["last_used"])
        return data

    return to_json_lines(map(with_times, records(layers)))


def disk_usage_json(usage: DiskUsage) -> str:
    """`du`: the totals, then one image a line."""
    return to_json_with_rows(record(usage, omitted={"images"}), "images", records(usage.images))


def _evicted(layer: EvictedLayer) -> dict[str, object]:
    return record(layer, renamed={"blob_digest": "digest", "blob_size": "size"})


def prune_json(result: PruneResult) -> str:
    data = record(result, properties=("reclaimed", "size_after"))
    data["removed"] = list(map(_evicted, result.removed))
    return to_json(data)


def remove_json(report: RemoveReport) -> str:
    data = record(report, properties=("reclaimed",))
    data["removed"] = list(map(_evicted, report.removed))
    return to_json(data)


def verify_json(report: VerifyReport) -> str:
    return to_json(record(report, properties=("ok",)))


def import_json(report: DaemonImportReport) -> str:
    """`import`: the archive's counts and images (digests, refs and diffIDs, not the config and
    manifest bytes), then the refs that were cached already (`saved` is not documented)."""
    data = record(report.archive)
    data["images"] = [
        record(image, omitted={"blob_digests", "config", "manifest"})
        for image in report.archive.images
    ]
    data.update(record(report, omitted={"archive", "saved"}))
    return to_json(data)


def report_json(report: object) -> str:
    """load, rebase, create-builder: every field as it is named, nested reports too."""
    return to_json(dataclasses.asdict(report))


def size(n: int) -> str:
    """humanize.naturalsize(n) (powers of 1000, as docker prints sizes), with the kB, MB and GB
    texts formatted directly because `ls` formats one size per layer and humanize's translation
    layer costs more than the rest of the row; tests/test_render.py checks both agree. Bytes
    too: a warm command prints its "0 Bytes" sent, and importing humanize costs more than that.
    """
    if 0 <= n < 1000:
        return "1 Byte" if n == 1 else f"{n} Bytes"
    if 1000 <= n < 999_900:  # from 999.9 kB on, the text may round up into the next unit
        return f"{n / 1000:.1f} kB"
    if 1_000_000 <= n < 999_900_000:
        return f"{n / 1_000_000:.1f} MB"
    if 1_000_000_000 <= n < 999_900_000_000:
        return f"{n / 1_000_000_000:.1f} GB"
    import humanize

    return humanize.naturalsize(n)


def ago(timestamp: float, now: float | None = None) -> str:
    return _ago(_coarse((now or time.time()) - timestamp))


def _coarse(seconds: float) -> int:
    """Round an age to the unit it is shown in, so equal texts are computed once."""
    for unit in (86400, 3600, 60):
        if seconds >= unit:
            return int(seconds // unit * unit)
    return int(seconds)


@lru_cache(maxsize=4096)
def _ago(seconds: int) -> str:
    import humanize

    return humanize.naturaltime(seconds)


def iso(timestamp: float) -> str:
    """2026-11-28T11:05:22Z (seconds truncated)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))


def run_image_fetch(fetch: ImageFetch) -> str:
    """rebase's line on how its pull policy got the run image (or the app image)."""
    pulled, loaded = fetch.pulled, fetch.loaded
    if fetch.fell_back:
        return f"pull policy {fetch.policy}: not in its registry, the daemon's copy used"
    if pulled is None:
        held = "the cache's copy" if fetch.cached else "the daemon's copy"
        return f"pull policy {fetch.policy}: {held} used"
    text = (
        f"pull policy {fetch.policy}: {count(len(pulled.downloaded), 'layer')} downloaded "
        f"({size(pulled.bytes_downloaded)}), {len(pulled.already_cached)} already cached; "
    )
    if fetch.cached:
        return text + "kept in the cache (named by digest), its layers sent with the result"
    if loaded is None:
        return text + "already in the daemon"
    return text + f"{count(loaded.layers_sent, 'layer')} sent to the daemon"
