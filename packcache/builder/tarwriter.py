"""Layer tars written the way pack's Go `archive/tar` writer writes them, as a stream of chunks.

pack writes every builder layer with Go's tar.Writer: USTAR headers when the fields fit (names
as given, leading "/" kept, no trailing "/" on directories, long names split into prefix/name),
PAX records only for what USTAR cannot hold, and two zero blocks at the end with no padding to
a record size. Python's tarfile differs on each of those points, so headers are encoded here.
The same entries always give the same bytes, hence the same diffID.
"""

from __future__ import annotations

import io
import posixpath
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from packcache.digest import CHUNK
from packcache.image.cnb import NORMALIZED_EPOCH

BLOCK = 512
NORMALIZED_MTIME = NORMALIZED_EPOCH  # pack's archive.NormalizedDateTime

REGULAR = b"0"
HARDLINK = b"1"
SYMLINK = b"2"
DIRECTORY = b"5"
PAX_HEADER = b"x"

_NAME_SIZE = 100
_PREFIX_SIZE = 155
_USER_SIZE = 32


@dataclass(frozen=True)
class TarEntry:
    """One member: its header fields and, for a regular file, where its bytes come from."""

    name: str
    kind: bytes = REGULAR
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    size: int = 0
    mtime: int = NORMALIZED_MTIME
    linkname: str = ""
    uname: str = ""
    gname: str = ""
    data: bytes | None = None  # small contents held in memory
    source: Callable[[], BinaryIO] | None = None  # or opened when written: `size` bytes


def _octal(value: int, width: int) -> bytes:
    """Go's formatOctal: zero-padded digits and a NUL; 0 when it does not fit."""
    if value < 0 or value >= 8 ** (width - 1):
        value = 0
    return format(value, "o").rjust(width - 1, "0").encode() + b"\0"


def _field(text: str, width: int) -> bytes:
    """Go's formatString: the bytes, truncated to the field, NUL-padded."""
    raw = text.encode()[:width]
    return raw + b"\0" * (width - len(raw))


def _fits_octal(value: int, width: int) -> bool:
    return 0 <= value < 8 ** (width - 1)


def _split_ustar_path(name: str) -> tuple[str, str] | None:
    """Go's splitUSTARPath: a long ASCII name cut at a "/" into prefix (<=155) and name (<=100)."""
    length = len(name)
    if length <= _NAME_SIZE or not name.isascii():
        return None
    if length > _PREFIX_SIZE + 1:
        length = _PREFIX_SIZE + 1
    elif name[length - 1] == "/":
        length -= 1
    cut = name.rfind("/", 0, length)
    suffix_length = len(name) - cut - 1
    if cut <= 0 or suffix_length > _NAME_SIZE or suffix_length == 0 or cut > _PREFIX_SIZE:
        return None
    return name[:cut], name[cut + 1 :]


def _block(
    *,
    name: str,
    kind: bytes,
    mode: int,
    uid: int,
    gid: int,
    size: int,
    mtime: int,
    linkname: str = "",
    uname: str = "",
    gname: str = "",
    prefix: str = "",
) -> bytes:
    header = bytearray(BLOCK)
    header[0:100] = _field(name, 100)
    header[100:108] = _octal(mode, 8)
    header[108:116] = _octal(uid, 8)
    header[116:124] = _octal(gid, 8)
    header[124:136] = _octal(size, 12)
    header[136:148] = _octal(mtime, 12)
    header[156:157] = kind
    header[157:257] = _field(linkname, 100)
    header[257:265] = b"ustar\x0000"
    header[265:297] = _field(uname, 32)
    header[297:329] = _field(gname, 32)
    header[329:337] = _octal(0, 8)  # devmajor
    header[337:345] = _octal(0, 8)  # devminor
    header[345:500] = _field(prefix, 155)
    # The checksum counts its own field as spaces; written as 6 digits, NUL, space.
    checksum = sum(header[:148]) + 8 * ord(" ") + sum(header[156:])
    header[148:156] = format(checksum, "o").rjust(6, "0").encode() + b"\0 "
    return bytes(header)


def _pax_record(key: str, value: str) -> bytes:
    """One "<length> key=value\\n" record; the length counts its own digits."""
    body = f" {key}={value}\n".encode()
    length = len(body)
    while len(str(length)) + len(body) != length:
        length = len(str(length)) + len(body)
    return str(length).encode() + body


def header(entry: TarEntry) -> bytes:
    """The header block(s) Go's tar.Writer writes for this entry."""
    fits = {
        "mode": _fits_octal(entry.mode, 8),
        "uid": _fits_octal(entry.uid, 8),
        "gid": _fits_octal(entry.gid, 8),
        "size": _fits_octal(entry.size, 12),
        "mtime": _fits_octal(entry.mtime, 12),
    }
    split = _split_ustar_path(entry.name)
    name_fits = (len(entry.name) <= _NAME_SIZE and entry.name.isascii()) or split is not None
    link_fits = len(entry.linkname) <= _NAME_SIZE and entry.linkname.isascii()
    users_fit = all(len(u) <= _USER_SIZE and u.isascii() for u in (entry.uname, entry.gname))
    common = {
        "kind": entry.kind,
        "mode": entry.mode,
        "uid": entry.uid,
        "gid": entry.gid,
        "size": entry.size,
        "mtime": entry.mtime,
    }
    if name_fits and link_fits and users_fit and all(fits.values()):
        prefix, name = split if split is not None else ("", entry.name)
        return _block(
            name=name,
            prefix=prefix,
            linkname=entry.linkname,
            uname=entry.uname,
            gname=entry.gname,
            **common,
        )
    records: dict[str, str] = {}
    if not (len(entry.name) <= _NAME_SIZE and entry.name.isascii()):
        records["path"] = entry.name
    if not link_fits:
        records["linkpath"] = entry.linkname
    for key, text in (("uname", entry.uname), ("gname", entry.gname)):
        if len(text) > _USER_SIZE or not text.isascii():
            records[key] = text
    for key in ("uid", "gid", "size", "mtime"):
        if not fits[key]:
            records[key] = str(getattr(entry, key))
    data = b"".join(_pax_record(key, records[key]) for key in sorted(records))
    directory, base = posixpath.split(entry.name)
    pax_name = posixpath.join(directory, "PaxHeaders.0", base)
    pax_name = pax_name.encode("ascii", "replace").decode()[:_NAME_SIZE].rstrip("/")
    extended = (
        _block(name=pax_name, kind=PAX_HEADER, mode=0, uid=0, gid=0, size=len(data), mtime=0)
        + data
        + b"\0" * (-len(data) % BLOCK)
    )

    def ascii_only(text: str) -> str:
        return text.encode("ascii", "replace").decode()

    return extended + _block(
        name=ascii_only(entry.name),
        linkname=ascii_only(entry.linkname),
        uname=ascii_only(entry.uname),
        gname=ascii_only(entry.gname),
        **common,
    )


def tar_chunks(entries: Iterable[TarEntry]) -> Iterator[bytes]:
    """The whole tar as chunks: headers, contents (streamed), padding, two zero blocks."""
    for entry in entries:
        yield header(entry)
        if entry.kind != REGULAR or entry.size == 0:
            continue
        if entry.data is not None:
            yield entry.data
        else:
            assert entry.source is not None, entry.name
            left = entry.size
            with entry.source() as reader:
                while left:
                    chunk = reader.read(min(CHUNK, left))
                    if not chunk:
                        raise OSError(f"{entry.name} ended {left} bytes early while being read")
                    left -= len(chunk)
                    yield chunk
        yield b"\0" * (-entry.size % BLOCK)
    yield b"\0" * (2 * BLOCK)


class ChunkReader(io.RawIOBase):
    """A read-only file over an iterator of chunks, so a generated tar can be ingested as read."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[override]
        while not self._pending:
            try:
                self._pending = next(self._chunks)
            except StopIteration:
                return 0
        size = min(len(buffer), len(self._pending))
        buffer[:size] = self._pending[:size]
        self._pending = self._pending[size:]
        return size

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            return self.readall()
        while not self._pending:
            try:
                self._pending = next(self._chunks)
            except StopIteration:
                return b""
        piece, self._pending = self._pending[:size], self._pending[size:]
        return piece


def tar_reader(entries: Iterable[TarEntry]) -> BinaryIO:
    return ChunkReader(tar_chunks(entries))  # type: ignore[return-value]
