"""Push blobs and manifests to a registry, as docker and the lifecycle do it.

For each blob: HEAD first (a registry that has it is sent nothing); else a cross-repository
mount from a repository of the same registry known to hold it; else an upload, monolithic
(POST, then PUT ?digest= with the whole blob) or chunked (PATCH with Content-Range per chunk,
then PUT ?digest=), the bytes streamed from a file, never held whole. The manifest goes last,
so a push that fails leaves no tag naming a partial image. Every Docker-Content-Digest answer
is checked against the digest that was meant.

A broken upload session cannot be resumed safely (the registry may have kept part of a broken
request), so a blob upload that fails with a reset, 5xx or 429 starts again from the HEAD, up
to the client's attempts, backing off as the pull side does.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, BinaryIO
from urllib.parse import urlencode, urljoin

from packcache.errors import PackcacheError
from packcache.progress import CountingReader
from packcache.transports.registry import RETRY_STATUSES, RegistryClient, network_reason

if TYPE_CHECKING:  # imported where a request is sent (see registry.py)
    import requests

PARALLEL_BLOBS = 4
CHUNK_BYTES = 64 << 20  # blobs larger than this go up in chunks of this size
SEND_BLOCK = 1 << 20  # bytes handed to the socket per read of an upload body


class _RetryableUpload(Exception):
    """A reset or an overloaded registry: start this blob's upload again."""


@dataclass(frozen=True)
class BlobToPush:
    """A blob the pushed manifest names, and where its bytes can come from."""

    digest: str
    size: int
    open: Callable[[], BinaryIO] | None = None  # None: it must be on the registry or mountable
    mount_from: tuple[str, ...] = ()  # repositories of the same registry that may hold it


@dataclass
class PushCounts:
    """What a push did, blob by blob (digests), for reports and tests."""

    present: list[str] = field(default_factory=list)  # the registry had it (HEAD)
    mounted: list[str] = field(default_factory=list)  # mounted from another repository
    uploaded: list[str] = field(default_factory=list)  # sent
    chunked: list[str] = field(default_factory=list)  # those of `uploaded` sent in chunks
    bytes_uploaded: int = 0
    upload_restarts: int = 0


class _Slice:
    """`size` bytes of a file from its current position, read in large blocks (http.client
    asks for 8 KiB at a time, which costs a Python call per 8 KiB of a layer). The `last`
    slice reads on to the end of the file, so a verifying reader checks its digest before
    the request's body is complete: bad bytes abort the upload instead of finishing it."""

    def __init__(self, source: BinaryIO, size: int, last: bool) -> None:
        self._source = source
        self._left = size
        self._size = size
        self._last = last

    def __len__(self) -> int:
        return self._size

    def read(self, _n: int = -1) -> bytes:
        if self._left <= 0:
            return b""
        data = self._source.read(min(SEND_BLOCK, self._left))
        if not data:
            raise PackcacheError(f"a blob ended {self._left} bytes before its size")
        self._left -= len(data)
        if self._left == 0 and self._last and self._source.read(1):
            raise PackcacheError(f"a blob is longer than its size {self._size}")
        return data


class BlobPusher:
    """Pushes to one repository of the registry `client` talks to (made with PUSH_ACTIONS)."""

    def __init__(
        self,
        client: RegistryClient,
        repository: str,
        *,
        chunk_bytes: int = CHUNK_BYTES,
        parallel: int = PARALLEL_BLOBS,
    ) -> None:
        self.client = client
        self.repository = repository
        self.chunk_bytes = chunk_bytes
        self.parallel = max(1, parallel)
        self.counts = PushCounts()
        self._lock = threading.Lock()

    @property
    def what(self) -> str:
        return f"{self.client.host}/{self.repository}"

    # -- blobs -----------------------------------------------------------------------------

    def push_blobs(self, blobs: Iterable[BlobToPush]) -> PushCounts:
        """push_blob for each distinct blob, several at once; the first failure is raised
        once every started upload has ended."""
        unique = list({blob.digest: blob for blob in blobs}.values())
        with ThreadPoolExecutor(max_workers=self.parallel) as pool:
            futures = [pool.submit(self.push_blob, blob) for blob in unique]
            errors = [f.exception() for f in futures if f.exception() is not None]
        if errors:
            raise errors[0]  # type: ignore[misc]
        return self.counts

    def push_blob(self, blob: BlobToPush) -> str:
        """Make the registry hold `blob`: "present", "mounted" or "uploaded"."""
        for attempt in range(self.client.options.attempts):
            if attempt:
                with self._lock:
                    self.counts.upload_restarts += 1
                time.sleep(self.client.options.backoff_seconds * 2 ** (attempt - 1))
            try:
                outcome = self._push_once(blob)
            except _RetryableUpload as exc:
                last: Exception = exc
                continue
            with self._lock:
                getattr(self.counts, outcome).append(blob.digest)
            return outcome
        raise PackcacheError(
            f"uploading blob {blob.digest} to {self.what} kept failing "
            f"({self.client.options.attempts} attempts): {last}"
        )

    def _push_once(self, blob: BlobToPush) -> str:
        if self.client.blob_size(self.repository, blob.digest) is not None:
            return "present"
        for source in blob.mount_from:
            location = self._start_upload(blob.digest, source)
            if location is None:
                return "mounted"
            # 202: the registry did not mount (it lacks the blob there, or will not): the
            # session it opened takes the upload instead, if there are bytes to send.
            if blob.open is not None:
                return self._upload(blob, location)
        if blob.open is None:
            raise PackcacheError(
                f"blob {blob.digest} is not on {self.what}, could not be mounted "
                f"from {', '.join(blob.mount_from) or 'another repository'} and is not in the "
                "cache: it cannot be pushed"
            )
        return self._upload(blob, self._start_upload(blob.digest, None))

    def _start_upload(self, digest: str, mount_from: str | None) -> str | None:
        """POST an upload (a mount, with `mount_from`): None if mounted, else its location."""
        query = "?" + urlencode({"mount": digest, "from": mount_from}) if mount_from else ""
        response = self._send(
            "POST", f"blobs/uploads/{query}", {"Content-Length": "0"}, mount_from=mount_from
        )
        if response.status_code == 201 and mount_from:
            self._check_digest(response, digest, f"blob {digest} mounted from {mount_from}")
            return None
        if response.status_code != 202 or "Location" not in response.headers:
            raise self.client._fail(response, f"an upload to {self.what}")
        response.close()
        return self._location(response)

    def _upload(self, blob: BlobToPush, location: str) -> str:
        assert blob.open is not None
        chunked = blob.size > self.chunk_bytes
        task = self.client.progress.task(blob.digest.removeprefix("sha256:")[:12], blob.size)
        with CountingReader(blob.open(), task) as source:
            if chunked:
                location = self._send_chunks(source, blob, location)
                body: Callable[[], object] | None = None
                headers = {"Content-Length": "0"}
            else:
                body = lambda: _Slice(source, blob.size, last=True)  # noqa: E731
                headers = {
                    "Content-Type": "application/octet-stream",
                    "Content-Length": str(blob.size),
                }
            response = self._send(
                "PUT", "", headers, url=_with_digest(location, blob.digest), body=body
            )
        if response.status_code != 201:
            raise self.client._fail(response, f"the upload of blob {blob.digest} to {self.what}")
        self._check_digest(response, blob.digest, f"blob {blob.digest}")
        with self._lock:
            self.counts.bytes_uploaded += blob.size
            if chunked:
                self.counts.chunked.append(blob.digest)
        return "uploaded"

    def _send_chunks(self, source: BinaryIO, blob: BlobToPush, location: str) -> str:
        """PATCH the blob in chunks of chunk_bytes; the location to PUT to at the end."""
        offset = 0
        while offset < blob.size:
            size = min(self.chunk_bytes, blob.size - offset)
            headers = {
                "Content-Type": "application/octet-stream",
                "Content-Length": str(size),
                "Content-Range": f"{offset}-{offset + size - 1}",
            }
            last = offset + size == blob.size
            response = self._send(
                "PATCH", "", headers, url=location,
                body=lambda s=size, e=last: _Slice(source, s, e),
            )  # fmt: skip
            if response.status_code != 202:
                raise self.client._fail(response, f"a chunk of blob {blob.digest} to {self.what}")
            received = response.headers.get("Range", "")
            response.close()
            if received != f"0-{offset + size - 1}":
                raise PackcacheError(
                    f"{self.client.host} took bytes {received or '(none)'} of blob "
                    f"{blob.digest}, not 0-{offset + size - 1}"
                )
            location = self._location(response)
            offset += size
        return location

    # -- manifests -------------------------------------------------------------------------

    def put_manifest(self, reference: str, body: bytes, media_type: str) -> str:
        """PUT a manifest under a tag (or its digest); its digest, as the registry confirmed."""
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        headers = {"Content-Type": media_type, "Content-Length": str(len(body))}
        what = f"manifest {self.what}:{reference}"
        for attempt in range(self.client.options.attempts):
            if attempt:
                time.sleep(self.client.options.backoff_seconds * 2 ** (attempt - 1))
            try:
                response = self._send("PUT", f"manifests/{reference}", headers, body=lambda: body)
            except _RetryableUpload as exc:
                last: Exception = exc
                continue
            if response.status_code not in (200, 201):
                raise self.client._fail(response, f"the upload of {what}")
            self._check_digest(response, digest, what)
            return digest
        raise PackcacheError(
            f"uploading {what} kept failing ({self.client.options.attempts} attempts): {last}"
        )

    # -- plumbing --------------------------------------------------------------------------

    def _send(
        self,
        method: str,
        path: str,
        headers: dict[str, str],
        *,
        url: str | None = None,
        body: Callable[[], object] | None = None,
        mount_from: str | None = None,
    ) -> requests.Response:
        """One request; resets and 5xx/429 become _RetryableUpload (see the module doc)."""
        import requests

        try:
            response = self.client.request(
                method, self.repository, path, headers,
                url=url, body=body if body is not None else (lambda: b""),
                mount_from=mount_from,
            )  # fmt: skip
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
            if isinstance(exc, requests.exceptions.SSLError):
                raise PackcacheError(
                    f"TLS to registry {self.client.host} failed: {network_reason(exc)}"
                ) from exc
            raise _RetryableUpload(
                f"{method} to {self.client.host}: {network_reason(exc)}"
            ) from exc
        if response.status_code in RETRY_STATUSES:
            response.close()
            raise _RetryableUpload(f"{method} to {self.client.host}: HTTP {response.status_code}")
        return response

    def _location(self, response: requests.Response) -> str:
        """The upload location a registry answered, made absolute (it may be relative)."""
        return urljoin(response.url, response.headers["Location"])

    def _check_digest(self, response: requests.Response, digest: str, what: str) -> None:
        answered = response.headers.get("Docker-Content-Digest")
        response.close()
        if answered is not None and answered != digest:
            raise PackcacheError(
                f"registry {self.client.host} stored {what} as {answered}, not {digest}"
            )


def _with_digest(location: str, digest: str) -> str:
    sep = "&" if "?" in location else "?"
    return f"{location}{sep}{urlencode({'digest': digest})}"
