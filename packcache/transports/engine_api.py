"""The Docker Engine API over HTTP/1.1, with the standard library only: a unix socket or a TCP
address, connections kept alive and reused, JSON answers read with a size bound.

What the daemon sends is treated as hostile: a JSON answer larger than its bound is refused, a
streamed answer is handed on as a file to be read as it arrives, never held whole.
"""

from __future__ import annotations

import codecs
import http.client
import json
import socket
import threading
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, NamedTuple

# An answer packcache reads whole (an inspect, the image list) larger than this is not one.
MAX_JSON = 64 << 20
# The daemon's own error text is short; anything longer is cut, not held.
MAX_ERROR = 64 << 10
# Every answer carries the API version the daemon speaks (moby's version middleware).
API_VERSION_HEADER = "Api-Version"

Params = Mapping[str, str | int | bool | Iterable[str]]


class EngineApiError(Exception):
    """The daemon answered with an error status; `message` is its own words."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


class AnswerTooLarge(Exception):
    """The daemon's answer exceeded the bound set for it."""


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self.path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


class Address(NamedTuple):
    """Where the daemon listens: a unix socket path, or host and port (TLS for https)."""

    scheme: str  # unix, http or https
    path: str = ""
    host: str = ""
    port: int = 0


def parse_host(host: str) -> Address:
    """`unix:///path`, `tcp://host:port` (plain HTTP, as the docker SDK takes it without TLS
    settings), `http://` or `https://`; ValueError for anything else."""
    parts = urllib.parse.urlsplit(host)  # raises ValueError on a malformed URL
    scheme = parts.scheme.lower()
    if scheme == "unix":
        path = host.split(":", 1)[1].removeprefix("//")  # unix:///abs, unix://rel, unix:/abs
        if not path:
            raise ValueError("no socket path")
        return Address("unix", path=path)
    if scheme in ("tcp", "http", "https"):
        if not parts.hostname:
            raise ValueError("no host name")
        default = 443 if scheme == "https" else 2375
        kind = "https" if scheme == "https" else "http"
        return Address(kind, host=parts.hostname, port=parts.port or default)
    raise ValueError(f"unsupported scheme {parts.scheme or '(none)'!r}: use unix:// or tcp://")


class Response:
    """An answer whose body is read as it arrives; `close` gives the connection back."""

    def __init__(self, api: EngineApi, conn: http.client.HTTPConnection, raw: Any) -> None:
        self._api, self._conn, self.raw = api, conn, raw
        self.status: int = raw.status
        self.headers = raw.headers

    def read_bounded(self, limit: int) -> bytes:
        data = self.raw.read(limit + 1)
        if len(data) > limit:
            self.close(reuse=False)
            raise AnswerTooLarge(f"more than {limit} bytes")
        self.close()
        return data

    def error(self) -> EngineApiError:
        """The daemon's error answer as an exception (its JSON message, cut short)."""
        body = self.raw.read(MAX_ERROR)
        self.close(reuse=False)
        try:
            message = json.loads(body).get("message")
        except (ValueError, AttributeError):
            message = None
        text = message if isinstance(message, str) else body.decode("utf-8", "replace").strip()
        return EngineApiError(self.status, text or http.client.responses.get(self.status, ""))

    def close(self, *, reuse: bool = True) -> None:
        """Done with the answer: the connection is reused when the body was read to its end."""
        if self._conn is None:
            return
        conn, self._conn = self._conn, None
        if reuse and self.raw.length == 0:
            self.raw.read()  # an empty body (a HEAD's, a 201's): nothing left on the wire
        if reuse and self.raw.isclosed() and not self.raw.will_close:
            self._api._give_back(conn)
        else:
            self.raw.close()
            conn.close()


class EngineApi:
    """One daemon's Engine API. Calls from several threads each get their own connection."""

    def __init__(self, host: str, timeout: float) -> None:
        self.address = parse_host(host)
        self.timeout = timeout
        self.version = ""  # the API version paths are prefixed with once known
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    def _connection(self) -> http.client.HTTPConnection:
        with self._lock:
            if self._idle:
                conn = self._idle.pop()
                conn.timeout = self.timeout
                if conn.sock is not None:
                    conn.sock.settimeout(self.timeout)
                return conn
        address = self.address
        if address.scheme == "unix":
            return _UnixConnection(address.path, self.timeout)
        if address.scheme == "https":
            return http.client.HTTPSConnection(address.host, address.port, timeout=self.timeout)
        return http.client.HTTPConnection(address.host, address.port, timeout=self.timeout)

    def _give_back(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            self._idle.append(conn)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def url(self, path: str, *args: str, params: Params | None = None) -> str:
        """`path` with `args` quoted into its {} places, under the API version, and `params`."""
        quoted = path.format(*(urllib.parse.quote(arg, safe="/:") for arg in args))
        url = f"/v{self.version}{quoted}" if self.version else quoted
        if params:
            pairs: list[tuple[str, str]] = []
            for key, value in params.items():
                if isinstance(value, bool):
                    pairs.append((key, "1" if value else "0"))
                elif isinstance(value, str | int):
                    pairs.append((key, str(value)))
                else:
                    pairs.extend((key, item) for item in value)
            url += "?" + urllib.parse.urlencode(pairs)
        return url

    def request(
        self,
        method: str,
        url: str,
        *,
        body: bytes | Iterator[bytes] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Response:
        """Send a request, its body streamed in chunks where it is an iterator; the answer's
        body is left to be read. A GET or HEAD on a kept-alive connection the daemon closed
        meanwhile is sent again once, on a fresh one (never a request that changes something:
        the daemon may have done it)."""
        sent_headers = {"Accept-Encoding": "identity", **(headers or {})}
        given_length = any(name.lower() == "content-length" for name in sent_headers)
        chunked = body is not None and not isinstance(body, bytes) and not given_length
        retry = method in ("GET", "HEAD")
        while True:
            conn = self._connection()
            reused = conn.sock is not None
            try:
                conn.request(method, url, body=body, headers=sent_headers, encode_chunked=chunked)
                return Response(self, conn, conn.getresponse())
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                conn.close()
                if not (retry and reused):
                    raise
                retry = False
            except BaseException:
                conn.close()
                raise

    def call(
        self,
        method: str,
        url: str,
        *,
        json_body: Any = None,
        limit: int | None = None,
    ) -> tuple[Any, Mapping[str, str]]:
        """A request whose answer is read whole (up to `limit` bytes) and parsed as JSON
        (None for an empty body), with the answer's headers; EngineApiError on an error
        status. `limit` defaults to MAX_JSON."""
        body = None if json_body is None else json.dumps(json_body).encode()
        headers = {"Content-Type": "application/json"} if body is not None else {}
        response = self.request(method, url, body=body, headers=headers)
        if response.status >= 400:
            raise response.error()
        data = response.read_bounded(MAX_JSON if limit is None else limit)
        return (json.loads(data) if data.strip() else None), response.headers


def json_stream(response: Response, limit: int | None = None) -> Iterator[Any]:
    """The JSON objects of a streamed answer (a load's or a pull's progress), one by one,
    whether separated by newlines or not; no more than `limit` (MAX_JSON) bytes in all."""
    limit = MAX_JSON if limit is None else limit
    decoder, text = json.JSONDecoder(), codecs.getincrementaldecoder("utf-8")("replace")
    buffer, total = "", 0
    try:
        while chunk := response.raw.read1(1 << 16):
            total += len(chunk)
            if total > limit:
                raise AnswerTooLarge(f"more than {limit} bytes")
            buffer += text.decode(chunk)
            while buffer := buffer.lstrip():
                try:
                    value, end = decoder.raw_decode(buffer)
                except ValueError:
                    break  # the rest of this object is still to come
                yield value
                buffer = buffer[end:]
    finally:
        response.close(reuse=False)
    if buffer.strip():
        raise ValueError(f"an unfinished JSON answer: {buffer[:200]!r}")
