"""Streams: overlapping the reading of a stream with its sending, and gunzipping one."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import BinaryIO

from packcache.digest import GzipMembers

GUNZIP_INPUT = 1 << 20  # compressed bytes read at a time: large pieces out, few calls

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


class GunzipReader:
    """A readable stream of the decompressed bytes of a gzip `raw` stream, read as needed.

    Unlike gzip.GzipFile it tells a stream that ends inside a member (GzipTruncatedError)
    from one with bytes after its last member (GzipTrailingGarbageError); zeros after the
    last member are padding, as gzip(1) takes them. Memory stays bounded by the pieces
    GzipMembers hands out, however far the stream expands.
    """

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self._members = GzipMembers(zero_padding=True)
        self._pieces: Iterator[bytes] = iter(())
        self._piece = b""
        self._offset = 0
        self._ended = False

    def _next_piece(self) -> bool:
        """Move on to the next decompressed piece; False at the end of the stream."""
        while not self._ended:
            piece = next(self._pieces, None)
            if piece is None:
                data = self._raw.read(GUNZIP_INPUT)
                if data:
                    self._pieces = self._members.inflate(data)
                    continue
                self._ended = True
                piece = self._members.finish()
            if piece:
                self._piece, self._offset = piece, 0
                return True
        return False

    def read(self, n: int = -1) -> bytes:
        """Up to `n` bytes (all that is left for n < 0); fewer than asked is not the end."""
        if n is None or n < 0:
            return b"".join(iter(lambda: self.read(GUNZIP_INPUT), b""))
        if self._offset >= len(self._piece) and not self._next_piece():
            return b""
        if self._offset == 0 and n >= len(self._piece):
            data = self._piece  # the whole piece, not copied
        else:
            data = self._piece[self._offset : self._offset + n]
        self._offset += len(data)
        return data

    def drain(self) -> None:
        """Read to the end, dropping the bytes: checks what follows the data a reader used."""
        while self._next_piece():
            self._offset = len(self._piece)
