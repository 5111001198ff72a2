"""Content digests: validation, and readers/writers that hash the bytes passing through them."""

from __future__ import annotations

import gzip
import hashlib
import re
import zlib
from collections.abc import Iterator
from functools import cache
from typing import TYPE_CHECKING, Any, BinaryIO

from packcache.errors import CorruptBlobError, UsageError

# zstandard and python-isal are imported where a compressed stream is read: a warm rebase or
# a re-created builder reads none.
if TYPE_CHECKING:
    import zstandard

SHA256_PREFIX = "sha256:"
_DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
CHUNK = 1 << 20  # 1 MiB: large enough that per-call overhead vanishes, small enough to stream.

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
# The most memory a zstd frame may make decompression hold (zstd's own default limit): a
# frame asking for a larger window does not decompress.
ZSTD_MAX_WINDOW = 1 << 27


class GzipTruncatedError(EOFError):
    """A gzip stream ends inside a member."""


class GzipTrailingGarbageError(gzip.BadGzipFile):
    """Bytes follow the last gzip member that do not start another one."""


@cache
def decompression_errors() -> tuple[type[Exception], ...]:
    """Everything a corrupt compressed stream can raise while it is read."""
    import zstandard
    from isal import isal_zlib

    return (gzip.BadGzipFile, zlib.error, isal_zlib.error, EOFError, zstandard.ZstdError)


def _gzip_inflater() -> Any:  # python-isal's decompressor, whose type it does not export
    # python-isal's zlib: 1.4x the stdlib's MiB/s through gunzip + sha256 of a layer here, and
    # gunzip is what bounds importing from a containerd store.
    from isal import isal_zlib

    return isal_zlib.decompressobj(16 + zlib.MAX_WBITS)


class GzipMembers:
    """Inflates a gzip stream of one or more members (pigz and concatenated writers make
    several), pushed in as it arrives, with bounded output per step: a small, highly
    compressible input never balloons in memory. Tells a stream cut short inside a member
    (truncated) from bytes after its last member that start no other (trailing garbage).
    """

    def __init__(self, *, zero_padding: bool = False, piece: int = CHUNK) -> None:
        self._inflater = _gzip_inflater()
        self._after: bytes | None = None  # past a member's end: what follows it so far
        self._zero_padding = zero_padding  # gzip(1) takes zeros after the last member
        self._piece = piece

    def inflate(self, data: bytes) -> Iterator[bytes]:
        """The decompressed bytes of `data`, in pieces of at most `piece` bytes."""
        while True:
            if self._after is not None:  # between members
                if not data:
                    return
                data = self._next_member(self._after + data)
                continue
            out = self._inflater.decompress(data, self._piece)
            if out:
                yield out
            data = self._inflater.unconsumed_tail
            if self._inflater.eof:
                self._after, data = b"", self._inflater.unused_data
            elif not data and len(out) < self._piece:  # a full piece may leave output pending
                return

    def _next_member(self, after: bytes) -> bytes:
        """Start the next member if `after` begins one; return the bytes left to inflate."""
        if self._zero_padding and not after.strip(b"\0"):
            self._after = b""
            return b""
        if len(after) < len(GZIP_MAGIC) and GZIP_MAGIC.startswith(after):
            self._after = after  # perhaps the start of a member: wait for more
            return b""
        if not after.startswith(GZIP_MAGIC):
            raise GzipTrailingGarbageError("trailing garbage after the gzip stream")
        self._inflater = _gzip_inflater()
        self._after = None
        return after

    def finish(self) -> bytes:
        """The last decompressed bytes; raises if the stream stopped short or had garbage."""
        if self._after is None:
            out = self._inflater.flush()
            if not self._inflater.eof:
                raise GzipTruncatedError("the gzip stream is truncated")
            return out
        if self._after:
            raise GzipTrailingGarbageError("trailing garbage after the gzip stream")
        return b""


def is_digest(text: str) -> bool:
    return bool(_DIGEST_RE.match(text))


def check_digest(text: str) -> str:
    if not is_digest(text):
        raise UsageError(f"not a sha256 digest: {text!r} (expected sha256:<64 hex digits>)")
    return text


def digest_hex(digest: str) -> str:
    return check_digest(digest)[len(SHA256_PREFIX) :]


def sha256_digest(data: bytes) -> str:
    return SHA256_PREFIX + hashlib.sha256(data).hexdigest()


def sniff_compression(head: bytes) -> str:
    """Name the compression of a layer blob from its first bytes: "gzip", "zstd" or "none"."""
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if head.startswith(ZSTD_MAGIC):
        return "zstd"
    return "none"


class _HashSink:
    """A write-only sink that hashes and counts what the zstd decompressor writes to it."""

    def __init__(self) -> None:
        self.hasher = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.hasher.update(data)
        self.size += len(data)
        return len(data)


class LayerDigester:
    """Computes a layer blob's digest and its diffID (digest of the uncompressed tar) in one pass.

    Bytes are pushed in as they stream by; a compressed blob is decompressed on the fly with
    bounded output per step, so a small, highly compressible chunk never balloons in memory.
    """

    def __init__(self) -> None:
        self._blob = hashlib.sha256()
        self.size = 0
        self.compression: str | None = None
        self._head = b""
        self._gzip: GzipMembers | None = None
        self._zstd_writer: zstandard.ZstdDecompressionWriter | None = None
        self._plain = _HashSink()

    def update(self, chunk: bytes) -> None:
        self._blob.update(chunk)
        self.size += len(chunk)
        if self.compression is None:
            # Need 4 bytes to tell zstd from an uncompressed tar; reads may be shorter.
            self._head += chunk
            if len(self._head) < len(ZSTD_MAGIC):
                return
            chunk, self._head = self._head, b""
            self._start(sniff_compression(chunk))
        self._feed(chunk)

    def _start(self, compression: str) -> None:
        self.compression = compression
        if compression == "gzip":
            self._gzip = GzipMembers()
        elif compression == "zstd":
            import zstandard

            self._zstd_writer = zstandard.ZstdDecompressor(
                max_window_size=ZSTD_MAX_WINDOW
            ).stream_writer(self._plain, write_size=CHUNK, closefd=False)

    def _feed(self, chunk: bytes) -> None:
        try:
            self._feed_unchecked(chunk)
        except decompression_errors() as exc:
            raise CorruptBlobError(f"layer blob does not decompress: {exc}") from exc

    def _feed_unchecked(self, chunk: bytes) -> None:
        if self.compression == "none":
            self._plain.size += len(chunk)  # the blob hash is the diffID: hash once
        elif self.compression == "zstd":
            assert self._zstd_writer is not None
            self._zstd_writer.write(chunk)
        else:
            self._feed_gzip(chunk)

    def _feed_gzip(self, chunk: bytes) -> None:
        assert self._gzip is not None
        for out in self._gzip.inflate(chunk):
            self._plain.write(out)

    def finish(self) -> tuple[str, str, int]:
        """Return (blob digest, diffID, uncompressed size); raises if compression is cut short."""
        if self.compression is None:
            chunk, self._head = self._head, b""
            self._start(sniff_compression(chunk))
            self._feed(chunk)
        if self.compression == "gzip":
            assert self._gzip is not None
            try:
                self._plain.write(self._gzip.finish())
            except decompression_errors() as exc:
                raise CorruptBlobError(f"layer blob does not decompress: {exc}") from exc
        elif self.compression == "zstd":
            assert self._zstd_writer is not None
            self._zstd_writer.flush()
        blob_digest = SHA256_PREFIX + self._blob.hexdigest()
        diff_id = SHA256_PREFIX + self._plain.hasher.hexdigest()
        if self.compression == "none":
            diff_id = blob_digest
        return blob_digest, diff_id, self._plain.size


class VerifyingReader:
    """Wraps a readable stream; at its end, checks the bytes read hash to `digest` (and size).

    The check runs when the stream reports EOF, so a consumer that streams a blob to the daemon
    fails its transfer instead of silently delivering bytes that are not what they claim to be.
    """

    def __init__(
        self, raw: BinaryIO, digest: str, size: int | None = None, on_mismatch=None
    ) -> None:
        self._raw = raw
        self._digest = digest
        self._size = size
        self._hasher = hashlib.sha256()
        self._read = 0
        self._checked = False
        self._on_mismatch = on_mismatch

    def read(self, n: int = -1) -> bytes:
        try:
            data = self._raw.read(n)
        except decompression_errors() as exc:
            # A decompressing `raw` fails before EOF when the compressed bytes were altered.
            self._fail(f"does not decompress ({exc})")
        if data:
            self._hasher.update(data)
            self._read += len(data)
            if self._size is not None and self._read > self._size:
                self._fail(f"is longer than its recorded {self._size} bytes")
        elif not self._checked and (n is None or n != 0):
            self._check()
        return data

    def readinto(self, buffer) -> int:  # used by shutil.copyfileobj on some paths
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def readable(self) -> bool:
        return True

    def _check(self) -> None:
        self._checked = True
        if self._size is not None and self._read != self._size:
            self._fail(f"has {self._read} bytes, expected {self._size}")
        actual = SHA256_PREFIX + self._hasher.hexdigest()
        if actual != self._digest:
            self._fail(f"hashes to {actual}")

    def _fail(self, what: str) -> None:
        self._checked = True
        if self._on_mismatch is not None:
            self._on_mismatch()
        raise CorruptBlobError(f"blob {self._digest} {what}: it is corrupt and was not served")

    def close(self) -> None:
        self._raw.close()

    def __enter__(self) -> VerifyingReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
