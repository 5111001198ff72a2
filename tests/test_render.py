import random

import humanize

from packcache import render


def test_size_is_exactly_humanize_naturalsize() -> None:
    rng = random.Random(42)
    values = [*list(range(0, 2100)), 999949, 999950, 999999, 10**30, 10**33 * 7]
    values += [rng.randint(0, 10 ** rng.randint(3, 20)) for _ in range(100_000)]
    for value in values:
        assert render.size(value) == humanize.naturalsize(value), value


def test_ago_matches_humanize_at_the_shown_precision() -> None:
    now = 1_000_000_000.0
    for seconds, text in [(5, "5 seconds ago"), (150, "2 minutes ago"), (7300, "2 hours ago")]:
        assert render.ago(now - seconds, now) == text
    assert render.ago(now - 3 * 86400 - 50, now) == humanize.naturaltime(3 * 86400)


def test_table_aligns_columns() -> None:
    assert render.table(["A", "BB"], [["xxx", "y"]]) == "A     BB\nxxx   y"
