"""The daemon's containerd, reached over its gRPC API: content, images and leases (v1).

On the containerd image store an image is a record in containerd's images service whose target
is a manifest in its content store; writing the manifest and config there and creating the
record makes the image exist for the daemon with no unpack (the daemon unpacks on first run).

grpc and the generated stubs are imported only when a ``Containerd`` is opened, so commands that
never talk to containerd do not pay for importing them.
"""

from __future__ import annotations

import os
import secrets
import stat
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from packcache.errors import PackcacheError

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
ABORT_ATTEMPTS = 8


class ContainerdError(PackcacheError):
    """containerd cannot be used: unreachable, refused, or it answered an error."""


@dataclass(frozen=True)
class Endpoint:
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


@dataclass(frozen=True)
class ImageRecord:
    name: str  # as the daemon names it, e.g. docker.io/library/app:1
    target: Descriptor
    labels: Mapping[str, str]


def _api() -> ModuleType:
    """The generated stubs, with a clear error where `make` has not generated them."""
    try:
        from packcache.transports import containerd_api
        from packcache.transports.containerd_api import (  # noqa: F401
            content_pb2,
            content_pb2_grpc,
            descriptor_pb2,
            images_pb2,
            images_pb2_grpc,
            leases_pb2,
            leases_pb2_grpc,
            namespaces_pb2,
            namespaces_pb2_grpc,
        )
    except ImportError as exc:
        raise ContainerdError(
            f"the containerd API stubs are missing ({exc}): run `make` "
            "(python tests/generate_containerd_api.py)"
        ) from exc
    return containerd_api


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


class Containerd:
    """A connection to one containerd, working in one namespace."""

    def __init__(self, endpoint: Endpoint) -> None:
        import grpc

        self._grpc = grpc
        self.endpoint = endpoint
        api = _api()
        _check_socket(endpoint.address)
        self._channel = grpc.insecure_channel(f"unix://{endpoint.address}")
        self._content = api.content_pb2_grpc.ContentStub(self._channel)
        self._images = api.images_pb2_grpc.ImagesStub(self._channel)
        self._leases = api.leases_pb2_grpc.LeasesStub(self._channel)
        self._namespaces = api.namespaces_pb2_grpc.NamespacesStub(self._channel)
        self._pb = api
        # Listed, not fetched: containerd answers a Get of any name, existing or not.
        try:
            listed = self._namespaces.List(
                api.namespaces_pb2.ListNamespacesRequest(),
                timeout=CALL_TIMEOUT_S,
                metadata=self._metadata(),
            )
        except grpc.RpcError as exc:
            self.close()
            raise self._explain("listing namespaces", exc) from None
        # containerd creates a namespace on the first write into it, so a daemon with no image
        # yet has none: trusted where the daemon named it, a likely mistake where we guessed.
        known = {namespace.name for namespace in listed.namespaces}
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

    def _unary(self, what: str, method: Any, request: Any, lease: str | None = None) -> Any:
        try:
            return method(request, timeout=CALL_TIMEOUT_S, metadata=self._metadata(lease))
        except self._grpc.RpcError as exc:
            raise self._explain(what, exc) from None

    # -- leases ------------------------------------------------------------------------------

    @contextmanager
    def lease(self) -> Iterator[str]:
        """A lease protecting what is written under it from containerd's GC, deleted after."""
        expire = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + LEASE_LIFETIME_S))
        lease_id = f"packcache-{secrets.token_hex(8)}"
        pb = self._pb.leases_pb2
        request = pb.CreateRequest(id=lease_id, labels={LEASE_EXPIRE_LABEL: expire})
        self._unary("creating a lease", self._leases.Create, request)
        delete = pb.DeleteRequest(id=lease_id)
        try:
            yield lease_id
        except BaseException:
            # The error inside is the one to report; a lease left behind expires by its label.
            with suppress(ContainerdError):
                self._unary("deleting a lease", self._leases.Delete, delete)
            raise
        self._unary("deleting a lease", self._leases.Delete, delete)

    def lease_blob(self, lease: str, digest: str) -> None:
        """Hold a blob by `lease` too: one only found (not written) could otherwise be
        collected before the manifest that references it is there."""
        self.lease_blobs(lease, [digest])

    def lease_ids(self) -> list[str]:
        response = self._unary(
            "listing leases", self._leases.List, self._pb.leases_pb2.ListRequest()
        )
        return [lease.id for lease in response.leases]

    # -- content -----------------------------------------------------------------------------

    def blob_size(self, digest: str) -> int | None:
        """The size of a blob in the content store, or None where it has none."""
        try:
            response = self._content.Info(
                self._pb.content_pb2.InfoRequest(digest=digest),
                timeout=CALL_TIMEOUT_S,
                metadata=self._metadata(),
            )
        except self._grpc.RpcError as exc:
            if exc.code() == self._grpc.StatusCode.NOT_FOUND:
                return None
            raise self._explain(f"the info of {digest}", exc) from None
        return response.info.size

    def blob_sizes(self, digests: Iterable[str]) -> dict[str, int | None]:
        """`blob_size` of each digest, asked all at once: one round trip's wait, not one per
        blob."""
        request = self._pb.content_pb2.InfoRequest
        calls = {
            digest: self._content.Info.future(
                request(digest=digest), timeout=CALL_TIMEOUT_S, metadata=self._metadata()
            )
            for digest in dict.fromkeys(digests)
        }
        sizes: dict[str, int | None] = {}
        for digest, call in calls.items():
            try:
                sizes[digest] = call.result().info.size
            except self._grpc.RpcError as exc:
                if exc.code() != self._grpc.StatusCode.NOT_FOUND:
                    raise self._explain(f"the info of {digest}", exc) from None
                sizes[digest] = None
        return sizes

    def lease_blobs(self, lease: str, digests: Iterable[str]) -> None:
        """`lease_blob` for each digest, asked all at once."""
        pb = self._pb.leases_pb2
        calls = {
            digest: self._leases.AddResource.future(
                pb.AddResourceRequest(id=lease, resource=pb.Resource(id=digest, type="content")),
                timeout=CALL_TIMEOUT_S,
                metadata=self._metadata(),
            )
            for digest in dict.fromkeys(digests)
        }
        for digest, call in calls.items():
            try:
                call.result()
            except self._grpc.RpcError as exc:
                raise self._explain(f"leasing {digest}", exc) from None

    def blob_labels(self, digest: str) -> dict[str, str]:
        response = self._unary(
            f"the info of {digest}",
            self._content.Info,
            self._pb.content_pb2.InfoRequest(digest=digest),
        )
        return dict(response.info.labels)

    def read_small_blob(self, digest: str, limit: int) -> bytes | None:
        """A small blob (a manifest or config) whole, or None where the content store has none
        or it is larger than `limit`. The caller verifies the bytes against `digest`."""
        size = self.blob_size(digest)
        if size is None or size > limit:
            return None
        parts: list[bytes] = []
        got = 0
        request = self._pb.content_pb2.ReadContentRequest(digest=digest, offset=0, size=size)
        try:
            for response in self._content.Read(
                request, timeout=CALL_TIMEOUT_S, metadata=self._metadata()
            ):
                got += len(response.data)
                if got > size:
                    raise ContainerdError(f"containerd sent more than {size} bytes of {digest}")
                parts.append(response.data)
        except self._grpc.RpcError as exc:
            if exc.code() == self._grpc.StatusCode.NOT_FOUND:
                return None
            raise self._explain(f"reading {digest}", exc) from None
        return b"".join(parts)

    def ingest_refs(self) -> list[str]:
        """Refs of unfinished writes in the content store."""
        pb = self._pb.content_pb2
        response = self._unary(
            "listing writes", self._content.ListStatuses, pb.ListStatusesRequest()
        )
        return [status.ref for status in response.statuses]

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
        ``size``; a refused or broken write is aborted, so nothing of it stays.
        """
        if self.blob_size(digest) is not None:
            return False
        ref = f"packcache-{digest}-{secrets.token_hex(4)}"
        # grpc reads the requests in its own thread: the reader's own error is kept here to be
        # raised as it is once the stream has ended.
        reader_failed: list[BaseException] = []
        requests = self._write_requests(ref, digest, size, chunks, labels or {}, reader_failed)
        try:
            for _ in self._content.Write(requests, metadata=self._metadata(lease)):
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
    ) -> Iterator[Any]:
        pb = self._pb.content_pb2
        offset = 0
        try:
            for chunk in chunks:
                for start in range(0, len(chunk), WRITE_CHUNK):
                    piece = chunk[start : start + WRITE_CHUNK]
                    # Every write carries its offset: containerd truncates the ingest on 0.
                    yield pb.WriteContentRequest(
                        action=pb.WRITE,
                        ref=ref,
                        total=size,
                        expected=digest,
                        offset=offset,
                        data=piece,
                    )
                    offset += len(piece)
        except Exception as exc:
            # Ending the stream (rather than raising into grpc, which cancels the call) lets
            # the server finish with the ingest before the call returns.
            reader_failed.append(exc)
            return
        yield pb.WriteContentRequest(
            action=pb.COMMIT, ref=ref, total=size, expected=digest, offset=offset, labels=labels
        )

    def _abort(self, ref: str) -> None:
        """Drop an unfinished write; where containerd cannot, the lease's end releases it."""
        # A cancelled Write may still hold the ingest's lock for a moment on the server side,
        # so a refused Abort is tried again briefly. Errors are dropped: the error that made
        # us abort is the one to report.
        for attempt in range(ABORT_ATTEMPTS):
            with suppress(self._grpc.RpcError):
                self._content.Abort(
                    self._pb.content_pb2.AbortRequest(ref=ref),
                    timeout=CALL_TIMEOUT_S,
                    metadata=self._metadata(),
                )
            with suppress(self._grpc.RpcError, ContainerdError):
                if ref not in self.ingest_refs():
                    return
            time.sleep(0.05 * (attempt + 1))

    def delete_blob(self, digest: str) -> bool:
        """Remove a blob from the content store; False where it was not there."""
        try:
            self._content.Delete(
                self._pb.content_pb2.DeleteContentRequest(digest=digest),
                timeout=CALL_TIMEOUT_S,
                metadata=self._metadata(),
            )
        except self._grpc.RpcError as exc:
            if exc.code() == self._grpc.StatusCode.NOT_FOUND:
                return False
            raise self._explain(f"deleting {digest}", exc) from None
        return True

    # -- images ------------------------------------------------------------------------------

    def get_image(self, name: str) -> ImageRecord | None:
        try:
            response = self._images.Get(
                self._pb.images_pb2.GetImageRequest(name=name),
                timeout=CALL_TIMEOUT_S,
                metadata=self._metadata(),
            )
        except self._grpc.RpcError as exc:
            if exc.code() == self._grpc.StatusCode.NOT_FOUND:
                return None
            raise self._explain(f"the image {name}", exc) from None
        image = response.image
        target = image.target
        return ImageRecord(
            name=image.name,
            target=Descriptor(
                media_type=target.media_type,
                digest=target.digest,
                size=target.size,
                annotations=dict(target.annotations),
            ),
            labels=dict(image.labels),
        )

    def image_names(self, target_digest: str) -> list[str]:
        """Names of the image records whose target is this digest."""
        request = self._pb.images_pb2.ListImagesRequest(filters=[f"target.digest=={target_digest}"])
        response = self._unary(f"listing images of {target_digest}", self._images.List, request)
        return [image.name for image in response.images]

    def put_image(
        self, name: str, target: Descriptor, labels: Mapping[str, str] | None = None
    ) -> None:
        """Create the image record, or point an existing one at ``target`` (never unpacks)."""
        pb = self._pb.images_pb2
        image = pb.Image(
            name=name,
            labels=dict(labels or {}),
            target=self._pb.descriptor_pb2.Descriptor(
                media_type=target.media_type,
                digest=target.digest,
                size=target.size,
                annotations=dict(target.annotations),
            ),
        )
        try:
            self._images.Create(
                pb.CreateImageRequest(image=image),
                timeout=CALL_TIMEOUT_S,
                metadata=self._metadata(),
            )
            return
        except self._grpc.RpcError as exc:
            if exc.code() != self._grpc.StatusCode.ALREADY_EXISTS:
                raise self._explain(f"creating the image {name}", exc) from None
        from google.protobuf import field_mask_pb2

        # Both fields are replaced: labels of the old target must not stick to the new one.
        mask = field_mask_pb2.FieldMask(paths=["target", "labels"])
        self._unary(
            f"updating the image {name}",
            self._images.Update,
            pb.UpdateImageRequest(image=image, update_mask=mask),
        )

    def delete_image(self, name: str, *, collect: bool = False) -> bool:
        """Remove the image record; False where there was none.

        Its content is left to containerd's GC, which ``collect`` runs before returning.
        """
        try:
            self._images.Delete(
                self._pb.images_pb2.DeleteImageRequest(name=name, sync=collect),
                timeout=CALL_TIMEOUT_S,
                metadata=self._metadata(),
            )
        except self._grpc.RpcError as exc:
            if exc.code() == self._grpc.StatusCode.NOT_FOUND:
                return False
            raise self._explain(f"deleting the image {name}", exc) from None
        return True


def gc_ref_labels(config_digest: str, layer_digests: Iterable[str]) -> dict[str, str]:
    """A manifest's content labels naming its config and layers, so GC keeps them with it."""
    labels = {"containerd.io/gc.ref.content.config": config_digest}
    for index, digest in enumerate(layer_digests):
        labels[f"containerd.io/gc.ref.content.l.{index}"] = digest
    return labels
