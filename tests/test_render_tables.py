"""docker-like tables, --format templates and the progress display, without the CLI."""

from __future__ import annotations

import io
import time

import pytest
from rich.console import Console

from packcache import render
from packcache.display import TerminalProgress
from packcache.errors import UsageError
from packcache.progress import NO_PROGRESS, CountingReader, counted
from packcache.store.scan import ImageUsage, LayerInfo
from packcache.template import Template, parse_format

A, B = "sha256:" + "a" * 64, "sha256:" + "b" * 64


def layer(images: list[str], digests: list[str], size: int, age: float) -> LayerInfo:
    now = time.time()
    return LayerInfo(A, digests, size, size * 2, "gzip", images, now - age, now - age, 1)


def test_ls_table_truncates_ids_and_names_one_image_per_cell() -> None:
    rows = [
        layer(["app:1", "base:1", "other:2"], [B, "sha256:" + "c" * 64], 1_234_567, 7300),
        layer(["app:1"], [], 999, 5),
    ]
    lines = render.layers_table(rows).splitlines()
    assert lines[0].split() == ["DIFF", "ID", "DIGESTS", "SIZE", "IMAGES", "LAST", "USED"]
    first, second = (line.split() for line in lines[1:])
    assert first[:6] == ["aaaaaaaaaaaa", "bbbbbbbbbbbb", "+1", "1.2", "MB", "app:1"]
    assert first[6:] == ["+2", "2", "hours", "ago"]
    assert second[:5] == ["aaaaaaaaaaaa", "-", "999", "Bytes", "app:1"]
    # Sizes are right-aligned: their units end in one column.
    assert lines[1].index("MB") + 2 == lines[2].index("Bytes") + 5
    full = render.layers_table(rows, no_trunc=True).splitlines()[1]
    assert full.startswith(A) and f"{B},sha256:{'c' * 64}" in full
    assert "app:1,base:1,other:2" in full


def test_du_table_names_one_ref_and_one_image_id() -> None:
    image = ImageUsage(A, [A, B], ["app:1", "app:latest"], 3, 2, 3000, 1000, 2000)
    only_id = ImageUsage(B, [B], [], 1, 1, 10, 0, 10)
    lines = render.images_table([image, only_id]).splitlines()
    assert lines[0].endswith("   UNIQUE SIZE") and lines[1].endswith("     2.0 kB")
    assert lines[1].split()[:5] == ["app:1", "+1", "aaaaaaaaaaaa", "+1", "2/3"]
    assert lines[2].split()[:2] == ["bbbbbbbbbbbb", "bbbbbbbbbbbb"]
    assert (
        render.images_table([image], no_trunc=True)
        .splitlines()[1]
        .startswith("app:1,app:latest   " + A + "," + B)
    )


def test_first_and_count() -> None:
    assert [render.first_and_count(n) for n in ([], ["a"], ["a", "b", "c"])] == ["-", "a", "a +2"]


ROWS = [
    {"diff_id": A, "size": 1200, "images": ["app:1", "base:1"], "ok": True, "none": None},
    {"diff_id": B, "size": 5, "images": [], "ok": False, "none": None},
]


@pytest.mark.parametrize("field", [".DiffID", ".diff_id", ".diffid", ".DIFF_ID"])
def test_a_field_is_named_as_docker_users_or_the_json_spell_it(field: str) -> None:
    assert Template("{{" + field + "}}").render(ROWS) == f"{A}\n{B}"


def test_template_values_print_as_go_prints_them() -> None:
    template = Template('{{.Size}} {{.Images}} {{.Ok}} {{json .Images}} {{join .Images ", "}}')
    assert template.render(ROWS).splitlines() == [
        '1200 [app:1 base:1] true ["app:1", "base:1"] app:1, base:1',
        "5 [] false [] ",
    ]
    assert Template("{{upper .Images}}|{{truncate .DiffID 12}}").render(ROWS[:1]) == (
        "[APP:1 BASE:1]|sha256:aaaaa"
    )
    assert Template("{{json .}}").render(ROWS[1:]).startswith('{"diff_id": "sha256:bbb')


def test_a_table_template_has_a_header_and_aligned_columns() -> None:
    assert Template("table {{.Size}}\\t{{.DiffID}}").render(ROWS).splitlines() == [
        "SIZE   DIFF ID",
        f"1200   {A}",
        f"5      {B}",
    ]


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("{{.Nope}}", "no field .Nope; the fields are .diff_id, .size, .images, .ok, .none"),
        ("{{.DiffID.x}}", "x is not a field"),
        ("{{shout .Size}}", "unknown function 'shout'"),
        ("{{json}}", "names no field"),
        ("{{join .Images}}", "takes 2 argument(s)"),
        ("{{join .Images '}}", "cannot read"),
    ],
)
def test_a_bad_template_is_one_clear_error(source: str, message: str) -> None:
    with pytest.raises(UsageError, match=r"^--format: ") as raised:
        Template(source).render(ROWS)
    assert message in str(raised.value)


def test_only_table_json_and_templates_are_formats() -> None:
    assert parse_format("table") == "table" and parse_format("json") == "json"
    assert isinstance(parse_format("{{.Size}}"), Template)
    with pytest.raises(UsageError, match="'yaml' is not one of table, json, or a template"):
        parse_format("yaml")


def test_the_version_names_the_tested_engines() -> None:
    from packcache import __version__
    from packcache.tested import TESTED_ENGINES

    text = render.version_text()
    assert text.startswith(f"packcache {__version__}\nPython 3.")
    for engine in TESTED_ENGINES:
        assert f"{engine.version} (API {engine.api_version};" in text


def test_counting_readers_and_chunks_advance_their_task() -> None:
    seen: list[tuple[str, object]] = []

    class Recorder:
        def task(self, name, total=None, *, unit="bytes"):
            seen.append(("task", name))
            return self

        def advance(self, n=1):
            seen.append(("advance", n))

        def describe(self, name):
            pass

        def done(self):
            seen.append(("done", None))

        def __enter__(self):
            return self

        def __exit__(self, *exc_info):
            self.done()

    with CountingReader(io.BytesIO(b"x" * 10), Recorder().task("r")) as reader:
        assert reader.read(4) == b"xxxx" and reader.read() == b"x" * 6 and reader.read() == b""
    assert list(counted([b"ab", b"c"], Recorder().task("c"))) == [b"ab", b"c"]
    assert seen == [
        ("task", "r"), ("advance", 4), ("advance", 6), ("advance", 0), ("done", None),
        ("task", "c"), ("advance", 2), ("advance", 1), ("done", None),
    ]  # fmt: skip
    with NO_PROGRESS.task("nothing", 5) as task:  # the default shows nothing, and fails never
        task.advance(5)
        task.describe("still nothing")


def test_the_terminal_display_shows_bytes_speed_and_steps_then_leaves() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=100, no_color=True)
    with TerminalProgress(console) as shown:
        layer_task = shown.task("3f2a9c1b7d4e", 2_000_000)
        layer_task.advance(1_000_000)
        steps = shown.task("my-builder", 6, unit="steps")
        steps.advance()
        steps.describe("reading the buildpacks")
        shown.bar.refresh()
        drawn = out.getvalue()
        layer_task.done()
        layer_task.done()  # a second end is harmless
        assert [task.description for task in shown.bar.tasks] == [
            "my-builder: reading the buildpacks"
        ]
    assert "3f2a9c1b7d4e" in drawn and "1.0 MB / 2.0 MB" in drawn
    assert "my-builder: reading the buildpacks" in drawn and "1/6" in drawn
    assert "\x1b[3" not in drawn  # no colour with no_color (NO_COLOR sets it)
