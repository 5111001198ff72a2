import pytest

from packcache.errors import UsageError
from packcache.units import parse_duration, parse_size


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("20G", 20 * 10**9),
        ("20GB", 20 * 10**9),
        ("20gb", 20 * 10**9),
        ("20GiB", 20 * 2**30),
        ("500M", 500 * 10**6),
        ("1.5T", 1_500_000_000_000),
        ("1.5TiB", int(1.5 * 2**40)),
        ("1048576", 1048576),
        ("0", 0),
        ("10 KiB", 10240),
        ("3b", 3),
    ],
)
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "G",
        "-1G",
        "20X",
        "1.2.3G",
        "twenty",
        "20 G B",
        # Digits of other scripts: fullwidth, Arabic-Indic, Devanagari, and one mixed in.
        "\uff11\uff12",
        "\u0661\u0662M",
        "\u0967\u0968G",
        "1\uff12K",
        "1.\u0665G",
        "20\uff27",  # a fullwidth G
    ],
)
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(UsageError, match="invalid size"):
        parse_size(text)


@pytest.mark.parametrize("text", ["1" + "0" * 400, "9223372036854775808", "9300P"])
def test_parse_size_rejects_what_no_index_can_hold(text: str) -> None:
    with pytest.raises(UsageError, match="too large"):
        parse_size(text)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90m", 5400),
        ("12h", 43200),
        ("7d", 604800),
        ("2w", 1209600),
        ("1d12h", 129600),
        ("30s", 30),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "text",
    [
        "",
        "7",
        "d",
        "7y",
        "-1d",
        "7d x",
        "1.d",
        "\uff17d",
        "1d\u0661\u0662h",
        "\u0967.5h",
        "7\uff44",
    ],
)
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(UsageError, match="invalid duration"):
        parse_duration(text)
