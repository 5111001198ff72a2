import random

import humanize

from packcache import render


def test_size_is_exactly_humanize_naturalsize() -> None:
    rng = random.Random(42)
    values = [*list(range(0, 2100)), 999949, 999950, 999999, 10**30, 10**33 * 7]
    values += [rng.randint(0, 10 ** rng.randint(3, 20)) for _ in range(100_000)]
    # Each unit's edges, where the short paths in render.size hand over to the exact one.
    for scale in (10**3, 10**6, 10**9, 10**12):
        for edge in (scale, scale * 1000 - scale // 10, scale * 1000):
            values += range(max(edge - 1100, 0), edge + 1100)
    for value in values:
        assert render.size(value) == humanize.naturalsize(value), value


def test_ago_matches_humanize_at_the_shown_precision() -> None:
    now = 1_000_000_000.0
    for seconds, text in [(5, "5 seconds ago"), (150, "2 minutes ago"), (7300, "2 hours ago")]:
        assert render.ago(now - seconds, now) == text
    assert render.ago(now - 3 * 86400 - 50, now) == humanize.naturaltime(3 * 86400)


def test_table_aligns_columns() -> None:
    assert render.table(["A", "BB"], [["xxx", "y"]]) == "A     BB\nxxx   y"
    assert render.table(["A", "BB", "C"], [["x", "yyy", ""]]) == "A   BB    C\nx   yyy"


def test_iso_is_utc_to_the_second() -> None:
    from datetime import UTC, datetime

    rng = random.Random(1)
    for timestamp in [0.0, 1_700_000_000.999, *(rng.uniform(0, 4e9) for _ in range(1000))]:
        expected = datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")
        assert render.iso(timestamp) == expected.replace("+00:00", "Z")


def test_json_lines_is_one_json_array() -> None:
    import json

    items = [{"a": 1, "b": ["x"]}, {"a": 2, "b": []}]
    text = render.to_json_lines(iter(items))
    assert json.loads(text) == items
    assert text.count("\n") == 3
    assert render.to_json_lines([]) == "[]"


def test_json_with_rows_is_one_json_object() -> None:
    import json

    rows = [{"name": "a:1", "size": 3}, {"name": 'b"2', "size": 0}]
    text = render.to_json_with_rows({"layers": 2, "size": 3}, "images", iter(rows))
    assert json.loads(text) == {"layers": 2, "size": 3, "images": rows}
    assert json.loads(render.to_json_with_rows({"layers": 0}, "images", [])) == {
        "layers": 0,
        "images": [],
    }
