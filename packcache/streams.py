"""Overlapping the reading of a stream with its sending."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator

_END = object()


def read_ahead(chunks: Iterable[bytes], depth: int = 8) -> Iterator[bytes]:
    """Yield `chunks`, produced by a second thread up to `depth` chunks ahead.

    Reading blobs and hashing them (to catch corruption) and writing to the daemon's socket
    all release the GIL, so on two cores they overlap instead of taking turns. An error in
    the producer is raised here, in order; stopping early stops the producer.
    """
    ahead: queue.Queue[object] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for chunk in chunks:
                while not stop.is_set():
                    try:
                        ahead.put(chunk, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            ahead.put(_END)
        except BaseException as exc:  # handed to the consumer, who raises it
            ahead.put(exc)

    producer = threading.Thread(target=produce, name="packcache-read-ahead", daemon=True)
    producer.start()
    try:
        while True:
            item = ahead.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        producer.join()
