import threading

import pytest

from packcache.streams import read_ahead


def test_read_ahead_yields_everything_in_order() -> None:
    chunks = [bytes([i]) * 1000 for i in range(100)]
    assert list(read_ahead(iter(chunks), depth=3)) == chunks


def test_read_ahead_raises_the_producer_error_in_order() -> None:
    def chunks():
        yield b"a"
        yield b"b"
        raise ValueError("blob is corrupt")

    got = []
    with pytest.raises(ValueError, match="blob is corrupt"):
        for chunk in read_ahead(chunks()):
            got.append(chunk)
    assert got == [b"a", b"b"]


def test_stopping_early_stops_the_producer() -> None:
    produced = []

    def chunks():
        for i in range(10_000):
            produced.append(i)
            yield b"x"

    stream = read_ahead(chunks(), depth=2)
    next(stream)
    stream.close()
    assert len(produced) < 10
    assert not any(t.name == "packcache-read-ahead" for t in threading.enumerate())
