"""The daemon's containerd, reached over its gRPC API: content, images and leases (v1).

On the containerd image store an image is a record in containerd's images service whose target
is a manifest in its content store; writing the manifest and config there and creating the
record makes the image exist for the daemon with no unpack (the daemon unpacks on first run).

grpc is imported only when a ``Containerd`` is opened, so commands that never talk to containerd
do not pay for importing it; the messages are written and read by containerd_wire, without the
protobuf runtime.
"""

from __future__ import annotations

import os
import secrets
import stat
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, NamedTuple

from packcache.errors import PackcacheError
from packcache.transports import containerd_wire as wire

ENV_ADDRESS = "PACKCACHE_CONTAINERD_ADDRESS"
ENV_NAMESPACE = "PACKCACHE_CONTAINERD_NAMESPACE"
DEFAULT_NAMESPACE = "moby"
# A system containerd first: dockerd itself uses that socket when it exists, and only
# otherwise starts its own under its exec-root.
DEFAULT_SOCKETS = (
    "/run/containerd/containerd.sock",
    "/var/run/docker/containerd/containerd.sock",
)
NAMESPACE_HEADER = "containerd-namespace"
LEASE_HEADER = "containerd-lease"
# containerd's GC drops a lease past this time: a packcache killed mid-write leaves no content
# pinned for ever.
LEASE_EXPIRE_LABEL = "containerd.io/gc.expire"
LEASE_LIFETIME_S = 3600
# Small enough for containerd's message limit (16 MiB), large enough that per-message overhead
# does not matter.
WRITE_CHUNK = 1 << 20
CALL_TIMEOUT_S = 30.0
GRPC_ASYNCIO = "grpc.aio"  # the module grpc's asyncio API is in
# The v1 services' method paths, as gRPC names them: /<proto package>.<service>/<method>.
CONTENT = "/containerd.services.content.v1.Content/"
IMAGES = "/containerd.services.images.v1.Images/"
LEASES = "/containerd.services.leases.v1.Leases/"
NAMESPACES = "/containerd.services.namespaces.v1.Namespaces/"
WRITE_ACTION, COMMIT_ACTION = 1, 2  # content.v1.WriteAction
ABORT_ATTEMPTS = 8
# Short calls (a blob's info) made at once: each waits on containerd far more than it computes.
PARALLEL_CALLS = 6
SEQUENTIAL_CALLS = 8  # no more than this are made one after another: threads cost as much


class ContainerdError(PackcacheError):
    """containerd cannot be used: unreachable, refused, or it answered an error."""


class Endpoint(NamedTuple):
    """Where the daemon's containerd listens and which namespace holds the daemon's images."""

    address: str  # a unix socket path
    namespace: str
    source: str  # how it was found: "daemon info", "environment" or "default"


def find_endpoint(
    info: Mapping[str, Any],
    environ: Mapping[str, str],
    exists: Callable[[str], bool] = os.path.exists,
) -> Endpoint:
    """The daemon's containerd from `docker info` (API 1.46+), else settings, else defaults.

    Each of the address and the namespace is taken from the first source that has it.
    """
    reported = info.get("Containerd") or {}
    namespaces = reported.get("Namespaces") or {}
    address, namespace, source = reported.get("Address"), namespaces.get("Containers"), ""
    if address:
        source = "daemon info"
    elif environ.get(ENV_ADDRESS):
        address, source = environ[ENV_ADDRESS], "environment"
    else:
        found = [path for path in DEFAULT_SOCKETS if exists(path)]
        address, source = (found or DEFAULT_SOCKETS)[0], "default"
    namespace = namespace or environ.get(ENV_NAMESPACE) or DEFAULT_NAMESPACE
    return Endpoint(address=address.removeprefix("unix://"), namespace=namespace, source=source)


@dataclass(frozen=True)
class Descriptor:
    """An OCI descriptor as containerd stores it (media type, digest, size)."""

    media_type: str
    digest: str
    size: int
    annotations: Mapping[str, str] = field(default_factory=dict)


class ImageRecord(NamedTuple):
    name: str  # as the daemon names it, e.g. docker.io/library/app:1
    target: Descriptor
    labels: Mapping[str, str]


def _check_socket(address: str) -> None:
    """Say plainly what is wrong with the socket before grpc turns it into UNAVAILABLE."""
    try:
        mode = os.stat(address).st_mode
    except FileNotFoundError:
        raise ContainerdError(
            f"no containerd socket at {address}: is containerd running? "
            f"(set {ENV_ADDRESS} to use another)"
        ) from None
    except PermissionError:
        mode = 0  # an unreadable directory on the way: the access check below says so
    if mode and not stat.S_ISSOCK(mode):
        raise ContainerdError(f"{address} is not a socket (set {ENV_ADDRESS} to containerd's)")
    if not os.access(address, os.R_OK | os.W_OK):
        raise ContainerdError(
            f"permission denied on containerd's socket {address}: "
            "run as root or with the socket's group"
        )


def _import_grpc() -> ModuleType:
    """grpc, imported without the asyncio API it imports last for old code's sake (a third
    of its import; a connection here makes blocking calls only): a placeholder stands for it
    meanwhile and is removed after, so that an `import grpc.aio` later gets the real one."""
    placeholder = ModuleType(GRPC_ASYNCIO)
    if "grpc" not in sys.modules:  # else imported, or being imported: `import` waits for it
        sys.modules.setdefault(GRPC_ASYNCIO, placeholder)
    try:
        import grpc
    finally:
        if sys.modules.get(GRPC_ASYNCIO) is placeholder:
            del sys.modules[GRPC_ASYNCIO]
    if getattr(grpc, "aio", None) is placeholder:
        del grpc.aio
    return grpc


class Containerd:
    """A connection to one containerd, working in one namespace."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        _check_socket(endpoint.address)  # before grpc's import: a fallback costs none of it
        grpc = self._grpc = _import_grpc()
        self._channel = grpc.insecure_channel(f"unix://{endpoint.address}")
        self._methods: dict[str, Any] = {}
        # Listed, not fetched: containerd answers a Get of any name, existing or not.
        try:
            listed = self._unary("listing namespaces", NAMESPACES + "List", b"")
        except ContainerdError:
            self.close()
            raise
        # containerd creates a namespace on the first write into it, so a daemon with no image
        # yet has none: trusted where the daemon named it, a likely mistake where we guessed.
        known = {wire.get_text(namespace, 1) for namespace in wire.get_messages(listed, 1)}
        if endpoint.namespace not in known and endpoint.source != "daemon info":
            self.close()
            raise ContainerdError(
                f"containerd at {endpoint.address} has no namespace {endpoint.namespace!r}: "
                f"the daemon has stored nothing there (set {ENV_NAMESPACE} to the daemon's)"
            )

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Containerd:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _metadata(self, lease: str | None = None) -> tuple[tuple[str, str], ...]:
        pairs = ((NAMESPACE_HEADER, self.endpoint.namespace),)
        return (*pairs, (LEASE_HEADER, lease)) if lease else pairs

    def _method(self, path: str, kind: str = "unary_unary") -> Any:
        """The channel's callable for a method, taking and giving the messages as bytes."""
        if path not in self._methods:
            self._methods[path] = getattr(self._channel, kind)(path)
        return self._methods[path]

    def _explain(self, what: str, exc: Any) -> ContainerdError:
        code, details = exc.code(), exc.details() or ""
        where = f"containerd at {self.endpoint.address}"
        if code == self._grpc.StatusCode.UNAVAILABLE:
            if "ermission denied" in details:
                return ContainerdError(
                    f"permission denied on containerd's socket {self.endpoint.address}: "
                    "run as root or with the socket's group"
                )
            return ContainerdError(f"cannot reach {where}: is it running? ({details})")
        if code == self._grpc.StatusCode.DEADLINE_EXCEEDED:
            return ContainerdError(f"{where} does not answer (timed out on {what})")
        return ContainerdError(f"{where} refused {what}: {details}")

    def _decoded(self, what: str, answer: bytes) -> wire.Fields:
        try:
            return wire.decode(answer)
        except wire.WireError as exc:
            raise ContainerdError(
                f"containerd at {self.endpoint.address} answered {what} with a malformed "
                f"message: {exc}"
            ) from None

    def _unary(self, what: str, path: str, request: bytes, lease: str | None = None) -> wire.Fields:
        try:
            answer = self._method(path)(
                request, timeout=CALL_TIMEOUT_S, metadata=self._metadata(lease)
            )
        except self._grpc.RpcError as exc:
            raise self._explain(what, exc) from None
        return self._decoded(what, answer)

    def _unary_if_found(self, what: str, path: str, request: bytes) -> wire.Fields | None:
        """`_unary`, or None where containerd answers that what was asked for is not there."""
        try:
            answer = self._method(path)(request, timeout=CALL_TIMEOUT_S, metadata=self._metadata())
        except self._grpc.RpcError as exc:
            if exc.code() == self._grpc.StatusCode.NOT_FOUND:
                return None
            raise self._explain(what, exc) from None
        return self._decoded(what, answer)

    def _unary_all(self, what: str, path: str, requests: Mapping[str, bytes]) -> dict[str, Any]:
        """One call per request, each answer decoded, or None where containerd answered
        NOT_FOUND. Several at once from threads of our own, each a blocking call: grpc's
        asynchronous calls would start its polling thread, and a process that forks later
        (preexec_fn) can hang in the child on it."""
        if len(requests) <= SEQUENTIAL_CALLS:
            return {
                key: self._unary_if_found(f"{what} {key}", path, request)
                for key, request in requests.items()
            }
        with ThreadPoolExecutor(min(PARALLEL_CALLS, len(requests))) as pool:
            futures = {
                key: pool.submit(self._unary_if_found, f"{what} {key}", path, request)
                for key, request in requests.items()
            }
            return {key: future.result() for key, future in futures.items()}

    # -- leases ------------------------------------------------------------------------------

    @contextmanager
    def lease(self) -> Iterator[str]:
        """A lease protecting what is written under it from containerd's GC, deleted after."""
        expire = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + LEASE_LIFETIME_S))
        lease_id = f"packcache-{secrets.token_hex(8)}"
        create = wire.text(1, lease_id) + wire.string_map(3, {LEASE_EXPIRE_LABEL: expire})
        self._unary("creating a lease", LEASES + "Create", create)
        delete = wire.text(1, lease_id)
        try:
            yield lease_id
        except BaseException:
            # The error inside is the one to report; a lease left behind expires by its label.
            with suppress(ContainerdError):
                self._unary("deleting a lease", LEASES + "Delete", delete)
            raise
        self._unary("deleting a lease", LEASES + "Delete", delete)

    def lease_ids(self) -> list[str]:
        listed = self._unary("listing leases", LEASES + "List", b"")
        return [wire.get_text(lease, 1) for lease in wire.get_messages(listed, 1)]

    # -- content -----------------------------------------------------------------------------

    def blob_size(self, digest: str) -> int | None:
        """The size of a blob in the content store, or None where it has none."""
        return self.blob_sizes([digest])[digest]

    def blob_sizes(self, digests: Iterable[str]) -> dict[str, int | None]:
        """`blob_size` of each digest."""
        requests = {digest: wire.text(1, digest) for digest in digests}
        answers = self._unary_all("the info of", CONTENT + "Info", requests)
        return {
            digest: None if answer is None else wire.get_int(wire.get_message(answer, 1), 2)
            for digest, answer in answers.items()
        }

    def blob_labels(self, digest: str) -> dict[str, str]:
        answer = self._unary(f"the info of {digest}", CONTENT + "Info", wire.text(1, digest))
        return wire.get_map(wire.get_message(answer, 1), 5)

    def read_small_blob(self, digest: str, limit: int) -> bytes | None:
        """A small blob (a manifest or config) whole, or None where the content store has none
        or it is larger than `limit`. The caller verifies the bytes against `digest`."""
        size = self.blob_size(digest)
        if size is None or size > limit:
            return None
        parts: list[bytes] = []
        got = 0
        request = wire.text(1, digest) + wire.integer(3, size)
        read = self._method(CONTENT + "Read", "unary_stream")
        try:
            for answer in read(request, timeout=CALL_TIMEOUT_S, metadata=self._metadata()):
                data = wire.get_bytes(self._decoded(f"reading {digest}", answer), 2)
                got += len(data)
                if got > size:
                    raise ContainerdError(f"containerd sent more than {size} bytes of {digest}")
                parts.append(data)
        except self._grpc.RpcError as exc:
            if exc.code() == self._grpc.StatusCode.NOT_FOUND:
                return None
            raise self._explain(f"reading {digest}", exc) from None
        return b"".join(parts)

    def ingest_refs(self) -> list[str]:
        """Refs of unfinished writes in the content store."""
        listed = self._unary("listing writes", CONTENT + "ListStatuses", b"")
        return [wire.get_text(status, 3) for status in wire.get_messages(listed, 1)]

    def write_blob(
        self,
        digest: str,
        size: int,
        chunks: Iterable[bytes],
        lease: str,
        labels: Mapping[str, str] | None = None,
    ) -> bool:
        """Stream a blob into the content store; False where it was there already.

        containerd hashes what it receives and commits only bytes matching ``digest`` and
        ``size``; a refused or broken write is aborted, so nothing of it stays. A blob the
        store holds is refused at the first message (ALREADY_EXISTS), so one that fits in a
        message is written without asking first.
        """
        if size > WRITE_CHUNK and self.blob_size(digest) is not None:
            return False
        ref = f"packcache-{digest}-{secrets.token_hex(4)}"
        # grpc reads the requests in its own thread: the reader's own error is kept here to be
        # raised as it is once the stream has ended.
        reader_failed: list[BaseException] = []
        requests = self._write_requests(ref, digest, size, chunks, labels or {}, reader_failed)
        write = self._method(CONTENT + "Write", "stream_stream")
        try:
            for _ in write(requests, metadata=self._metadata(lease)):
                pass
        except self._grpc.RpcError as exc:
            if exc.code() == self._grpc.StatusCode.ALREADY_EXISTS:
                return False  # another writer committed it first
            self._abort(ref)
            if reader_failed:
                raise reader_failed[0] from None
            raise self._explain(f"writing {digest}", exc) from None
        except BaseException:
            self._abort(ref)
            raise
        if reader_failed:
            # The stream was ended without a commit, so the server has closed the ingest by now
            # and the abort cannot race it.
            self._abort(ref)
            raise reader_failed[0]
        return True

    def _write_requests(
        self,
        ref: str,
        digest: str,
        size: int,
        chunks: Iterable[bytes],
        labels: Mapping[str, str],
        reader_failed: list[BaseException],
    ) -> Iterator[bytes]:
        # WriteContentRequest: action 1, ref 2, total 3, expected 4, offset 5, data 6, labels 7.
        head = wire.text(2, ref) + wire.integer(3, size) + wire.text(4, digest)
        offset = 0
        try:
            for chunk in chunks:
                for start in range(0, len(chunk), WRITE_CHUNK):
                    piece = chunk[start : start + WRITE_CHUNK]
                    # Every write carries its offset: containerd truncates the ingest on 0.
                    yield (
                        wire.integer(1, WRITE_ACTION)
                        + head
                        + wire.integer(5, offset)
                        + wire.data(6, piece)
                    )
                    offset += len(piece)
        except Exception as exc:
            # Ending the stream (rather than raising into grpc, which cancels the call) lets
            # the server finish with the ingest before the call returns.
            reader_failed.append(exc)
            return
        yield (
            wire.integer(1, COMMIT_ACTION)
            + head
            + wire.integer(5, offset)
            + wire.string_map(7, labels)
        )

    def _abort(self, ref: str) -> None:
        """Drop an unfinished write; where containerd cannot, the lease's end releases it."""
        # A cancelled Write may still hold the ingest's lock for a moment on the server side,
        # so a refused Abort is tried again briefly. Errors are dropped: the error that made
        # us abort is the one to report.
        for attempt in range(ABORT_ATTEMPTS):
            with suppress(ContainerdError):
                self._unary(f"aborting {ref}", CONTENT + "Abort", wire.text(1, ref))
            with suppress(ContainerdError):
                if ref not in self.ingest_refs():
                    return
            time.sleep(0.05 * (attempt + 1))

    def delete_blob(self, digest: str) -> bool:
        """Remove a blob from the content store; False where it was not there."""
        request = wire.text(1, digest)
        deleted = self._unary_if_found(f"deleting {digest}", CONTENT + "Delete", request)
        return deleted is not None

    # -- images ------------------------------------------------------------------------------

    def get_image(self, name: str) -> ImageRecord | None:
        answer = self._unary_if_found(f"the image {name}", IMAGES + "Get", wire.text(1, name))
        if answer is None:
            return None
        image = wire.get_message(answer, 1)
        target = wire.get_message(image, 3)
        return ImageRecord(
            name=wire.get_text(image, 1),
            target=Descriptor(
                media_type=wire.get_text(target, 1),
                digest=wire.get_text(target, 2),
                size=wire.get_int(target, 3),
                annotations=wire.get_map(target, 5),
            ),
            labels=wire.get_map(image, 2),
        )

    def image_names(self, target_digest: str) -> list[str]:
        """Names of the image records whose target is this digest."""
        return self.names_by_target([target_digest])[target_digest]

    def names_by_target(self, target_digests: Iterable[str]) -> dict[str, list[str]]:
        """Per digest, the names of the image records whose target it is, in one call
        (containerd matches a record that passes any of the filters)."""
        names: dict[str, list[str]] = {digest: [] for digest in target_digests}
        request = wire.texts(1, [f"target.digest=={digest}" for digest in names])
        what = f"listing images of {', '.join(names)}"
        for image in wire.get_messages(self._unary(what, IMAGES + "List", request), 1):
            target = wire.get_text(wire.get_message(image, 3), 2)
            if target in names:
                names[target].append(wire.get_text(image, 1))
        return names

    def put_image(
        self,
        name: str,
        target: Descriptor,
        labels: Mapping[str, str] | None = None,
        *,
        exists: bool = False,
    ) -> None:
        """Create the image record, or point an existing one at ``target`` (never unpacks).
        `exists`: the record is known to be there, so it is updated first."""
        image = _image_message(name, target, labels or {})
        if exists and self._update_image(name, image):
            return
        try:
            self._method(IMAGES + "Create")(
                image, timeout=CALL_TIMEOUT_S, metadata=self._metadata()
            )
            return
        except self._grpc.RpcError as exc:
            if exc.code() != self._grpc.StatusCode.ALREADY_EXISTS:
                raise self._explain(f"creating the image {name}", exc) from None
        self._unary(f"updating the image {name}", IMAGES + "Update", image + _REPLACED)

    def _update_image(self, name: str, image: bytes) -> bool:
        """Point the record at the image's target; False where there is no such record."""
        request = image + _REPLACED
        return (
            self._unary_if_found(f"updating the image {name}", IMAGES + "Update", request)
            is not None
        )

    def delete_image(self, name: str, *, collect: bool = False) -> bool:
        """Remove the image record; False where there was none.

        Its content is left to containerd's GC, which ``collect`` runs before returning.
        """
        request = wire.text(1, name) + wire.integer(2, collect)
        deleted = self._unary_if_found(f"deleting the image {name}", IMAGES + "Delete", request)
        return deleted is not None


# An image update's FieldMask: both fields are replaced, so labels of the old target do not
# stick to the new one.
_REPLACED = wire.data(2, wire.texts(1, ["target", "labels"]))


def _image_message(name: str, target: Descriptor, labels: Mapping[str, str]) -> bytes:
    """An images.v1 Image (name 1, labels 2, target 3), as the field of a request."""
    descriptor = (
        wire.text(1, target.media_type)
        + wire.text(2, target.digest)
        + wire.integer(3, target.size)
        + wire.string_map(5, target.annotations)
    )
    return wire.data(1, wire.text(1, name) + wire.string_map(2, labels) + wire.data(3, descriptor))


def gc_ref_labels(config_digest: str, layer_digests: Iterable[str]) -> dict[str, str]:
    """A manifest's content labels naming its config and layers, so GC keeps them with it."""
    labels = {"containerd.io/gc.ref.content.config": config_digest}
    for index, digest in enumerate(layer_digests):
        labels[f"containerd.io/gc.ref.content.l.{index}"] = digest
    return labels
