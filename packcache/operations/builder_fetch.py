"""The images a builder is made from (build image, buildpackage images, a lifecycle image, run
images), fetched as `pack builder create --pull-policy` fetches them, but through the cache.

pack (pkg/image/fetcher.go) pulls each into the daemon (`always`: every time; `if-not-present`:
when the daemon lacks it; `never`: never) and then saves them out of it. Here a pull goes
registry -> cache (registry_pull: only blobs the cache lacks, each verified), and the daemon is
never sent these images themselves: the builder's load sends it only the layers it lacks. A
registry that has no such image (or denies it, as Docker Hub does for a repository that does not
exist) falls back to the daemon's copy under `always`, as pack's does.
`if-not-present` also takes an image the cache recorded under that name with every layer.

The images are fetched several at once (`prefetch`): a builder names many small buildpackages,
each a manifest, a config and a layer or two, which one at a time would wait on the registry
in turn. pack's method (--no-cache) pulls them one by one, as pack does.

Remote reads (a publish, which pack does with remote images whatever the policy, and a dry run,
which changes nothing) read manifests and configs only, never a layer.

On a containerd store packcache writes into, the layers pulled are written into the content
store as they download (`mirror`), so the builder's load writes only its own new layers.
Elsewhere (`stream`) prefetch leaves them downloading: the builder's `docker load` sends each
as it arrives (`supplied`, streamed_pull.py), and `settle` commits them after the load.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from packcache.errors import NotFoundError, PackcacheError, UsageError
from packcache.image.inspected import InspectedImage
from packcache.jsondoc import check_image_config, strict_loads
from packcache.operations.run_image_fetch import PullPolicy
from packcache.store.store import Lease, Store
from packcache.transports.daemon import Daemon
from packcache.transports.registry import (
    AccessDeniedError,
    ImageName,
    Manifest,
    Platform,
    RegistryClients,
)

if TYPE_CHECKING:
    from packcache.image.layer import Layer
    from packcache.operations.early_load import EarlyLoad
    from packcache.operations.load_planners import LoadPlanner
    from packcache.operations.pulling import BlobMirror
    from packcache.operations.streamed_pull import StreamedPull
    from packcache.transports.registry_pull import RemoteImage

# What pulls from registries (registry_pull, pulling, streamed_pull, early_load) and what saves
# from the daemon (importing) is imported where used: a builder made of what the daemon and
# the cache hold (--pull-policy never, a re-create) reads with neither.

DAEMON, CACHE, REGISTRY = "daemon", "cache", "registry"
PARALLEL_IMAGES = 4  # images fetched at once (each fetches up to 4 blobs at once)


@dataclass
class FetchedImage:
    """One image the builder reads, and where it was read from."""

    ref: str
    image: InspectedImage
    source: str  # daemon, cache or registry
    name: ImageName | None = None  # when read from a registry
    manifest: Manifest | None = None  # when read from a registry: its layers' blobs
    fell_back: bool = False  # `always`, but its registry lacked it: the daemon's copy used


@dataclass
class PulledImage:
    """For the report: an image read from a registry, and what that cost."""

    ref: str
    manifest_digest: str
    layers_downloaded: int
    bytes_downloaded: int


@dataclass
class BuilderFetcher:
    """Fetches the builder's images for one create-builder (see the module doc)."""

    store: Store
    daemon: Daemon | None  # None for a publish, which reads registries only
    policy: PullPolicy
    platform: Platform
    registries: RegistryClients
    lease: Lease
    remote_only: bool = False  # read manifests and configs, never layers (publish, dry run)
    pack_method: bool = False  # pack's way (--no-cache): docker pull, the cache left alone
    # Where the layers pulled also go as they arrive: the daemon's containerd, for the load.
    mirror: BlobMirror | None = None
    # The layers prefetch pulls are left downloading, for a load to send as they arrive
    # (streamed_pull): `supplied` gives them, `settle` waits for them, `close` drops them.
    stream: bool = False
    pulled: list[PulledImage] = field(default_factory=list)
    fetched: list[FetchedImage] = field(default_factory=list)  # every image() answer
    _prefetched: dict[str, FetchedImage] = field(default_factory=dict, repr=False)
    _streaming: tuple[StreamedPull, list[str]] | None = field(default=None, repr=False)
    _run_labels: dict[str, Future[FetchedImage]] = field(default_factory=dict, repr=False)
    _early: EarlyLoad | None = field(default=None, repr=False)

    def _configs(self, digest: str) -> bytes | None:
        """A config the cache recorded under `digest` (read_image checks it), if any."""
        from packcache.operations.pulling import cached_config

        return cached_config(self.store)(digest)

    def _has(self, ref: str) -> bool:
        return self.daemon is not None and self.daemon.has_image(ref)

    @property
    def _daemon(self) -> Daemon:
        if self.daemon is None:
            raise PackcacheError("a publish reads its images from registries only")
        return self.daemon

    def image(self, ref: str, what: str) -> FetchedImage:
        """The image `ref` as the policy allows; a clear NotFoundError when it cannot."""
        fetched = self._prefetched.pop(ref, None) or self._image(ref, what)
        self.fetched.append(fetched)
        return fetched

    def cached(self, ref: str) -> FetchedImage | None:
        """The image the cache recorded under this name with every layer (leased), if any."""
        return self._cached(ref)

    def prefetch(self, refs: Iterable[str], what: str, run_images: Iterable[str] = ()) -> None:
        """Fetch these images at once, for image() to answer from: manifests and configs read
        several at a time, the layers of every image to pull in one pull (one pool of
        downloads, one commit; left downloading for a load, `stream`, from the moment each
        image is read). A failure is left for image() to meet again, in the builder's order,
        with its own message. The `run_images` whose labels run_image_labels reads from their
        registries are read meanwhile too."""
        wanted = [ref for ref in dict.fromkeys(refs) if ref not in self._prefetched]
        if len(wanted) < 2 or self.pack_method or self.policy is PullPolicy.NEVER:
            return
        remote_labels = self.policy is PullPolicy.ALWAYS and not self.remote_only
        labels = [ref for ref in dict.fromkeys(run_images) if remote_labels]
        first = self._image if self.remote_only else self._unless_pulled
        for ref in [*wanted, *labels]:
            # Each registry's client made once, here, not by several threads at once.
            with suppress(UsageError):
                self.registries.for_name(ImageName.parse(ref))
        from packcache.transports.registry_pull import RemoteImage

        streaming = self.stream and self.mirror is None
        to_pull: dict[str, RemoteImage] = {}
        with ThreadPoolExecutor(max_workers=PARALLEL_IMAGES) as pool:
            # The run images first: each is two round trips in turn (manifest, then config,
            # never cached), which queued behind the images made the read end a trip later.
            self._run_labels.update({ref: pool.submit(self._read_remote, ref, "run image")
                                     for ref in labels})  # fmt: skip
            futures = {ref: pool.submit(first, ref, what) for ref in wanted}
            # In the order asked (which image's report lists a shared layer), each image's
            # layers start downloading once it is read, while the next ones are read.
            for ref, future in futures.items():
                failure = future.exception()
                if failure is not None and not isinstance(failure, PackcacheError):
                    raise failure
                found = None if failure is not None else future.result()
                if isinstance(found, RemoteImage) and streaming:
                    self._prefetched[ref] = self._stream_image(ref, found)
                elif isinstance(found, RemoteImage):
                    to_pull[ref] = found
                elif found is not None:
                    self._prefetched[ref] = found
        if to_pull:
            # On a failure each is pulled again by image(), whose error names it.
            with suppress(PackcacheError):
                self._prefetched.update(self._pull_images(to_pull, mirrored=True))

    def _stream_image(self, ref: str, remote: RemoteImage) -> FetchedImage:
        """This image as its manifest and config tell, its layers left downloading."""
        from packcache.operations.streamed_pull import StreamedPull

        if self._streaming is None:
            self._streaming = (StreamedPull(self.store, [], self.lease), [])
        pull, refs = self._streaming
        pull.add(remote)
        refs.append(ref)
        config_digest = remote.manifest.config["digest"]
        image = InspectedImage.from_config(json.loads(remote.config), config_digest)
        return FetchedImage(ref, image, REGISTRY, remote.name, remote.manifest)

    def start_load(self, base: list[str]) -> None:
        """Begin the load of the image being made, which starts with the layers `base`, now:
        the layers still downloading are sent as they arrive, where the daemon's store allows
        (early_load). `started_load` ends it, with the image's config."""
        from packcache.operations.early_load import start_early_load

        if self._streaming is not None and self.daemon is not None and self._early is None:
            self._early = start_early_load(self.store, self.daemon, self._streaming[0], base)

    @property
    def started_load(self) -> LoadPlanner | None:
        """The load start_load began, as a planner for load_config; None if none."""
        return self._early

    def supplied(self) -> dict[str, Layer]:
        """The layers still downloading, for a load to send as they arrive (or, where one
        cannot be named before it arrives, none: every download waited for)."""
        if self._streaming is None:
            return {}
        layers = self._streaming[0].layers()
        if any(layer.size_known is False for layer in layers.values()):
            self.settle()
            return {}
        return dict(layers)

    def settle(self) -> None:
        """Wait for the layers prefetch left downloading: committed, the images recorded."""
        if self._streaming is None:
            return
        if self._early is not None and self._early.sending:
            # Its layers are read from the files the commit moves: a load of its own follows.
            self._early.abandon()
            self._early = None
        (pull, refs), self._streaming = self._streaming, None
        for ref, pulled in zip(refs, pull.settle(), strict=True):
            self.pulled.append(
                PulledImage(
                    ref, pulled.manifest_digest, len(pulled.downloaded), pulled.bytes_downloaded
                )
            )

    def close(self) -> None:
        """Drop the downloads a settle did not take (the cache is left as it was)."""
        if self._streaming is not None:
            self._streaming[0].abort()  # first: an early load waiting for arrivals ends
            self._streaming = None
        if self._early is not None:
            self._early.abandon()

    def _unless_pulled(self, ref: str, what: str) -> FetchedImage | RemoteImage:
        """The image as the policy takes it without a pull, else its manifest and config read
        for one (a registry's refusal raised as the pull would raise it)."""
        policy = self.policy
        if policy is PullPolicy.IF_NOT_PRESENT:
            if self._has(ref):
                return self._from_daemon(ref, what)
            cached = self._cached(ref)
            if cached is not None:
                return cached
        from packcache.transports.registry_pull import read_image

        name = ImageName.parse(ref)
        return read_image(self.registries.for_name(name), name, self.platform, self._configs)

    def _image(self, ref: str, what: str) -> FetchedImage:
        policy = self.policy
        if self.remote_only and policy is not PullPolicy.NEVER:
            return self._remote(ref, what)
        if policy is PullPolicy.NEVER or (policy is PullPolicy.IF_NOT_PRESENT and self._has(ref)):
            return self._from_daemon(ref, what)
        if policy is PullPolicy.IF_NOT_PRESENT:
            cached = self._cached(ref)
            if cached is not None:
                return cached
        if self.pack_method:
            self._docker_pull(ref, what)
            return self._from_daemon(ref, what)
        try:
            return self._pull(ref)
        except (NotFoundError, AccessDeniedError) as exc:
            # pack falls back to the daemon's copy when docker's pull finds nothing; docker
            # counts a DENIED answer (Docker Hub's for what does not exist) as not found.
            if policy is PullPolicy.ALWAYS and self._has(ref):
                fetched = self._from_daemon(ref, what)
                fetched.fell_back = True
                return fetched
            raise NotFoundError(
                f"{what} {ref} is neither in the Docker daemon nor in its registry ({exc})"
            ) from exc

    def layers(self, ref: str, what: str) -> list[str]:
        """The image `ref` with every layer in the cache (a lifecycle image, whose layer is
        read): pulled as the policy allows, else imported from the daemon. Its diffIDs."""
        policy = self.policy
        cached = None if policy is PullPolicy.ALWAYS else self._cached(ref)
        if cached is not None:
            return list(cached.image.diff_ids)
        if policy is not PullPolicy.NEVER:
            try:
                return list(self._pull(ref, mirrored=False).image.diff_ids)
            except (NotFoundError, AccessDeniedError) as exc:
                if not self._has(ref):
                    raise NotFoundError(f"{what} {ref} is not in its registry ({exc})") from exc
        from packcache.operations.importing import import_images

        fetched = self._from_daemon(ref, what)
        import_images(self.store, self._daemon, [ref], lease=self.lease)
        return list(fetched.image.diff_ids)

    def run_image_labels(self, ref: str) -> dict[str, str] | None:
        """A run image's labels, to check its stack (pack only warns when it cannot see one):
        from the daemon or, as the policy allows, its registry's config (no layer read)."""
        from_daemon = self.policy is not PullPolicy.ALWAYS or self.remote_only
        if self.policy is PullPolicy.NEVER or (from_daemon and self._has(ref)):
            if not self._has(ref):
                return None
            return dict(self._daemon.inspect_image(ref).labels)
        try:
            read = self._run_labels.pop(ref, None)
            remote = self._remote(ref, "run image") if read is None else self._pulled(read.result())
            return dict(remote.image.labels)
        except PackcacheError:
            if self._has(ref):
                return dict(self._daemon.inspect_image(ref).labels)
            return None

    # -- the sources ------------------------------------------------------------------------

    def _from_daemon(self, ref: str, what: str) -> FetchedImage:
        try:
            return FetchedImage(ref, self._daemon.inspect_image(ref), DAEMON)
        except NotFoundError:
            raise NotFoundError(
                f"{what} {ref} is not in the Docker daemon (--pull-policy {self.policy.value})",
                hint=f"`docker pull {ref}` puts it there, or --pull-policy if-not-present "
                "lets create-builder pull it",
            ) from None

    def _docker_pull(self, ref: str, what: str) -> None:
        try:
            self._daemon.pull(ref)
        except PackcacheError as exc:
            if self.policy is PullPolicy.ALWAYS and self._has(ref):
                return
            raise NotFoundError(f"{what} {ref}: docker pull failed: {exc}") from exc

    def _cached(self, ref: str) -> FetchedImage | None:
        """The image the cache recorded under this name, when it holds every layer."""
        for key in dict.fromkeys([_normalized(ref), ref]):
            try:
                config_digest = self.store.resolve_image(key)
            except (NotFoundError, UsageError):
                continue
            config = self.store.image_config(config_digest)
            image = InspectedImage.from_config(json.loads(config), config_digest)
            if self.lease.hold(image.diff_ids) == set(image.diff_ids):
                return FetchedImage(ref, image, CACHE)
        return None

    def _pull(self, ref: str, mirrored: bool = True) -> FetchedImage:
        """`ref` pulled into the cache (and, `mirrored`, into the mirror: an image whose layers
        the builder has; a lifecycle image's are re-tarred)."""
        from packcache.transports.registry_pull import read_image

        name = ImageName.parse(ref)
        remote = read_image(self.registries.for_name(name), name, self.platform, self._configs)
        return self._pull_images({ref: remote}, mirrored)[ref]

    def _pull_images(
        self, images: dict[str, RemoteImage], mirrored: bool
    ) -> dict[str, FetchedImage]:
        """Pull these images (their manifests and configs read) together, each recorded in
        the cache."""
        from packcache.operations.pulling import pull_remote_images

        reports = pull_remote_images(
            self.store, list(images.values()), lease=self.lease,
            mirror=self.mirror if mirrored else None,
        )  # fmt: skip
        fetched = {}
        for (ref, remote), pulled in zip(images.items(), reports, strict=True):
            self.pulled.append(
                PulledImage(
                    ref, pulled.manifest_digest, len(pulled.downloaded), pulled.bytes_downloaded
                )
            )
            config = json.loads(remote.config)
            image = InspectedImage.from_config(config, pulled.config_digest)
            fetched[ref] = FetchedImage(ref, image, REGISTRY, remote.name, remote.manifest)
        return fetched

    def _remote(self, ref: str, what: str) -> FetchedImage:
        """Manifest and config from the registry (never a layer), checked; reported."""
        return self._pulled(self._read_remote(ref, what))

    def _pulled(self, fetched: FetchedImage) -> FetchedImage:
        """A remote read reported (no layer downloaded)."""
        assert fetched.manifest is not None
        self.pulled.append(PulledImage(fetched.ref, fetched.manifest.digest, 0, 0))
        return fetched

    def _read_remote(self, ref: str, what: str) -> FetchedImage:
        """Manifest and config from the registry (never a layer), checked."""
        name = ImageName.parse(ref)
        client = self.registries.for_name(name)
        try:
            manifest = client.manifest(name.repository, name.reference, self.platform)
        except NotFoundError as exc:
            raise NotFoundError(f"{what} {ref} is not in its registry ({exc})") from exc
        where = f"{name.host}/{name.repository}@{manifest.digest}"
        config = client.read_document_blob(name.repository, manifest.config)
        document = check_image_config(strict_loads(config, f"the config of {where}"), where)
        if len(document["rootfs"]["diff_ids"]) != len(manifest.layers):
            raise PackcacheError(f"{where}: the manifest and the config list different layers")
        image = InspectedImage.from_config(document, manifest.config["digest"])
        return FetchedImage(ref, image, REGISTRY, name, manifest)


def _normalized(ref: str) -> str:
    try:
        return str(ImageName.parse(ref))
    except UsageError:
        return ref
