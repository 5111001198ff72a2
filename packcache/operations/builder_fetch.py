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
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from packcache.errors import NotFoundError, PackcacheError, UsageError
from packcache.image.inspected import InspectedImage
from packcache.jsondoc import check_image_config, strict_loads
from packcache.operations.importing import import_images
from packcache.operations.pulling import pull_image
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
    pulled: list[PulledImage] = field(default_factory=list)
    fetched: list[FetchedImage] = field(default_factory=list)  # every image() answer
    _prefetched: dict[str, FetchedImage] = field(default_factory=dict, repr=False)

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

    def prefetch(self, refs: Iterable[str], what: str) -> None:
        """Fetch these images at once, for image() to answer from. A failure is left for
        image() to meet again, in the builder's order, with its own message."""
        wanted = [ref for ref in dict.fromkeys(refs) if ref not in self._prefetched]
        if len(wanted) < 2 or self.pack_method or self.policy is PullPolicy.NEVER:
            return
        with ThreadPoolExecutor(max_workers=PARALLEL_IMAGES) as pool:
            futures = {ref: pool.submit(self._image, ref, what) for ref in wanted}
        for ref, future in futures.items():
            if future.exception() is None:
                self._prefetched[ref] = future.result()
            elif not isinstance(future.exception(), PackcacheError):
                raise future.exception()  # type: ignore[misc]

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
                return list(self._pull(ref).image.diff_ids)
            except (NotFoundError, AccessDeniedError) as exc:
                if not self._has(ref):
                    raise NotFoundError(f"{what} {ref} is not in its registry ({exc})") from exc
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
            return dict(self._remote(ref, "run image").image.labels)
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

    def _pull(self, ref: str) -> FetchedImage:
        name = ImageName.parse(ref)
        pulled = pull_image(
            self.store, self.registries.for_name(name), name, lease=self.lease,
            platform=self.platform,
        )  # fmt: skip
        self.pulled.append(
            PulledImage(
                ref, pulled.manifest_digest, len(pulled.downloaded), pulled.bytes_downloaded
            )
        )
        config = self.store.image_config(pulled.config_digest)
        body = self.store.manifest(pulled.manifest_digest)
        assert body is not None  # pull_image recorded it
        document = json.loads(body)
        manifest = Manifest(pulled.manifest_digest, document.get("mediaType", ""), body, document)
        image = InspectedImage.from_config(json.loads(config), pulled.config_digest)
        return FetchedImage(ref, image, REGISTRY, name, manifest)

    def _remote(self, ref: str, what: str) -> FetchedImage:
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
        self.pulled.append(PulledImage(ref, manifest.digest, 0, 0))
        image = InspectedImage.from_config(document, manifest.config["digest"])
        return FetchedImage(ref, image, REGISTRY, name, manifest)


def _normalized(ref: str) -> str:
    try:
        return str(ImageName.parse(ref))
    except UsageError:
        return ref
