"""How a load into one Docker daemon is made, per kind of image store: what the daemon holds,
how the rest is sent (a `docker load` archive, or written into the daemon's containerd), and
the check that it kept the image whole.

The kind (graphdriver or containerd image store, containerd reachable or not) is read here and
nowhere else: everything else asks the planner `planner_for` chose.
"""

from __future__ import annotations

import logging
import os
import secrets
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import NamedTuple

from packcache.archive.load_writer import LoadLayer, legacy_archive, oci_archive
from packcache.errors import NotFoundError, PackcacheError
from packcache.image import manifest as oci
from packcache.image.inspected import InspectedImage
from packcache.image.layer import MEDIA_TYPES, Layer, chain_ids
from packcache.operations import containerd_load
from packcache.refs import normalize
from packcache.store.store import Store
from packcache.streams import read_ahead
from packcache.transports.containerd import Containerd
from packcache.transports.daemon import Daemon

log = logging.getLogger(__name__)


class SendPolicy(NamedTuple):
    """Which layers a load may leave out of the archive because the daemon holds them."""

    reuse_held: bool = True  # every layer the daemon holds (packcache's method)
    # Else only the base image's layers, the first `base_layers`, where this kind of store
    # lets pack leave them out (pack's method, the baseline of --no-cache).
    base_layers: int = 0


REUSE = SendPolicy()
EVERYTHING = SendPolicy(reuse_held=False)


def pack_method(base_layers: int) -> SendPolicy:
    """What pack sends on top of a base image (build or run image) the daemon holds."""
    return SendPolicy(reuse_held=False, base_layers=base_layers)


class Held(NamedTuple):
    """A layer the daemon holds: what the archive names it by instead of its bytes."""

    digest: str | None  # the blob digest in the daemon's content store (None: a placeholder)
    size: int
    media_type: str


class LoadArchive(NamedTuple):
    """A `docker load` archive being written, and the image the daemon should then hold."""

    image_id: str
    manifest: bytes | None  # the manifest it carries, on a containerd store
    chunks: Iterator[bytes]
    content_size: int  # bytes of config, manifest and every layer blob, held or sent
    size: int | None = None  # of the archive itself, where one is sent


def _counted(chunks: Iterable[bytes], counter: list[int]) -> Iterator[bytes]:
    for chunk in chunks:
        counter[0] += len(chunk)
        yield chunk


def _shows(info: InspectedImage, loaded: LoadArchive, diff_ids: list[str]) -> bool:
    """Is the image the daemon inspects a name as the one just loaded, with every layer?"""
    return info.id == loaded.image_id and list(info.diff_ids) == diff_ids


class LoadPlanner(ABC):
    """Loads into one daemon, sending from `store` what the daemon does not hold."""

    references_blobs = False  # held layers are named by the blob digests the daemon has
    method = "docker load"  # how the image reaches the daemon, as reports name it

    def __init__(self, store: Store, daemon: Daemon) -> None:
        self.store = store
        self.daemon = daemon

    def extends(self, image: InspectedImage) -> None:
        """The image to load is made on top of `image`, which the caller inspected in this
        daemon: what that inspect proves is not asked again, and the layers added on top are
        looked for only in images the cache recorded (an image another tool made on top of the
        same one is not looked for: those layers are sent)."""
        del image  # a containerd store's blobs are named by manifests: an inspect names none

    def held(self, diff_ids: list[str], policy: SendPolicy = REUSE) -> list[Held | None]:
        """Per layer, how the daemon holds it for this load, or None when it must be sent."""
        if policy.reuse_held:
            return self._held(diff_ids)
        return [
            self._base_layer(diff_id) if index < policy.base_layers else None
            for index, diff_id in enumerate(diff_ids)
        ]

    def plan(
        self,
        diff_ids: list[str],
        policy: SendPolicy = REUSE,
        supplied: Mapping[str, Layer] | None = None,
    ) -> list[LoadLayer]:
        """What to send for each layer: nothing where the daemon holds it, else the cached blob
        (or, for a layer the cache lacks, the one `supplied`)."""
        plan = []
        for diff_id, held in zip(diff_ids, self.held(diff_ids, policy), strict=True):
            if held is not None:
                plan.append(
                    LoadLayer(diff_id, None, held.digest or diff_id, held.size, held.media_type)
                )
                continue
            layer: Layer | None = self.store.layer(diff_id)
            if layer is None and supplied is not None:
                layer = supplied.get(diff_id)
            if layer is None:
                raise PackcacheError(
                    f"layer {diff_id} is neither in the Docker daemon nor in the cache; "
                    "import an image that has it first"
                )
            plan.append(LoadLayer(diff_id, layer, layer.digest, layer.size, layer.media_type))
        self.store.prefetch(item.layer.digest for item in plan if item.layer is not None)
        return plan

    @abstractmethod
    def archive(self, config: bytes, plan: list[LoadLayer], tags: list[str]) -> LoadArchive:
        """The archive that loads `config` with the layers as `plan` says, named `tags`."""

    def load(
        self, config: bytes, plan: list[LoadLayer], tags: list[str]
    ) -> tuple[LoadArchive, int]:
        """Put the image into the daemon: the archive it was, and the bytes sent."""
        archive = self.archive(config, plan, tags)
        counter = [0]
        self.daemon.load(_counted(read_ahead(archive.chunks), counter), size=archive.size)
        return archive, counter[0]

    def verify(self, tag: str, loaded: LoadArchive, diff_ids: list[str]) -> bool:
        """Does the daemon now hold the complete image under `tag`?"""
        try:
            info = self.daemon.inspect_image(tag)
        except PackcacheError:
            return False
        return _shows(info, loaded, diff_ids)

    @contextmanager
    def replaced_images_kept(self, tags: list[str]) -> Iterator[None]:
        """Keeps what these tags name now until the load is done, where the store needs it."""
        yield

    @abstractmethod
    def _held(self, diff_ids: list[str]) -> list[Held | None]:
        """Per layer, how the daemon holds it now, or None."""

    @abstractmethod
    def _base_layer(self, diff_id: str) -> Held | None:
        """How pack's method names a layer of the base image, or None: it sends it."""


class GraphdriverPlanner(LoadPlanner):
    """A graphdriver keeps layers by chain ID: a layer whose chain it holds is sent as a
    zero-byte placeholder in a docker-archive, which its loader does not read."""

    _PLACEHOLDER = Held(None, 0, MEDIA_TYPES["none"])

    def __init__(self, store: Store, daemon: Daemon) -> None:
        super().__init__(store, daemon)
        self._extended: set[str] = set()  # the chains of the image the load is made on

    def extends(self, image: InspectedImage) -> None:
        # A graphdriver holds an image only with its whole chain of layers.
        self._extended.update(chain_ids(list(image.diff_ids)))

    def _held(self, diff_ids: list[str]) -> list[Held | None]:
        chains = chain_ids(diff_ids)
        present = set(self._extended)
        if not present.issuperset(chains):
            present |= self._daemon_chains(inspect_new=not self._extended)
        return [self._PLACEHOLDER if chain in present else None for chain in chains]

    def _daemon_chains(self, inspect_new: bool) -> set[str]:
        """The chains of the daemon's images: read from the index for an image whose ID (a
        config digest here) is a config the cache holds; the others, with `inspect_new`,
        inspected (at once)."""
        image_ids = self.daemon.image_ids()
        known = self.store.config_diff_ids(image_ids)
        new = [image_id for image_id in image_ids if image_id not in known]
        if inspect_new:
            self.daemon.prefetch(new)
            known.update((image_id, self.daemon.image_diff_ids(image_id) or []) for image_id in new)
        return {chain for layers in known.values() for chain in chain_ids(layers)}

    def _base_layer(self, diff_id: str) -> Held | None:
        return self._PLACEHOLDER  # imgutil's local image writes blank entries for its base

    def archive(self, config: bytes, plan: list[LoadLayer], tags: list[str]) -> LoadArchive:
        archive = legacy_archive(config, plan, tags)
        return LoadArchive(
            image_id=oci.digest_of(config),
            manifest=None,
            chunks=archive.chunks,
            content_size=len(config) + sum(item.size for item in plan),
            size=archive.size,
        )


class ContainerdPlanner(LoadPlanner):
    """A containerd image store keeps blobs: held layers are named in the OCI manifest by the
    digests its content store has and left out of the archive (placeholders there make broken
    images). Which blobs it has is known from the manifests the cache recorded for it."""

    references_blobs = True

    def _held(self, diff_ids: list[str]) -> list[Held | None]:
        # Only images whose manifests name these layers are looked up: the image list of a
        # containerd store is slow to get and grows with every image.
        candidates = self.store.manifests_with_layers(diff_ids)
        descriptors = self.store.held_descriptors(d for d in candidates if self.daemon.has_image(d))
        return [
            None if (found := descriptors.get(diff_id)) is None else Held(*found)
            for diff_id in diff_ids
        ]

    def _base_layer(self, diff_id: str) -> Held | None:
        return None  # pack sends every layer to a containerd store (pack#2272)

    def archive(self, config: bytes, plan: list[LoadLayer], tags: list[str]) -> LoadArchive:
        layers = [oci.Descriptor(item.media_type, item.digest, item.size) for item in plan]
        manifest = oci.image_manifest(config, layers)
        archive = oci_archive(config, manifest, plan, tags)
        return LoadArchive(
            image_id=oci.digest_of(manifest),
            manifest=manifest,
            chunks=archive.chunks,
            content_size=len(config) + len(manifest) + sum(item.size for item in plan),
            size=archive.size,
        )

    def verify(self, tag: str, loaded: LoadArchive, diff_ids: list[str]) -> bool:
        if not super().verify(tag, loaded, diff_ids):
            return False
        return self.daemon.content_available(tag, loaded.image_id, loaded.content_size)

    @contextmanager
    def replaced_images_kept(self, tags: list[str]) -> Iterator[None]:
        """Hold the images these tags name under a temporary name until the load is done: a
        containerd store moves the tags when it imports and unpacks afterwards, and can
        garbage-collect the snapshots the new image is unpacked on meanwhile."""
        kept: list[str] = []
        try:
            for tag in tags:
                try:
                    old = self.daemon.inspect_image(tag).id
                except NotFoundError:
                    continue
                name = f"packcache-keep/{os.getpid()}-{len(kept)}:{secrets.token_hex(4)}"
                self.daemon.tag(old, name)
                kept.append(name)
            yield
        finally:  # every name made is removed, whether the load (or a later tagging) failed
            for name in kept:
                try:
                    self.daemon.untag(name)
                except PackcacheError as exc:
                    log.warning("could not remove the temporary tag %s: %s", name, exc)


class ContainerdApiPlanner(ContainerdPlanner):
    """A containerd store whose containerd packcache can reach: a layer is held where the
    content store has any blob form of it the cache knows (or its uncompressed tar), and the
    image is written there and named, never unpacked (see containerd_load.py)."""

    method = "containerd"

    def __init__(self, store: Store, daemon: Daemon, containerd: Containerd) -> None:
        super().__init__(store, daemon)
        self.containerd = containerd
        # How the daemon inspected each tag as the last load announced it: what verify reads.
        self._seen: dict[str, InspectedImage | None] = {}

    def _held(self, diff_ids: list[str]) -> list[Held | None]:
        recorded = self.store.held_descriptors(self.store.manifests_with_layers(diff_ids))
        forms = [self._blob_forms(diff_id, recorded.get(diff_id)) for diff_id in diff_ids]
        # A blob a pull of this operation put there is planned as a write (which finds it
        # there): named as the cache names it, as it is without the mirror.
        mirrored = containerd_load.mirrored_blobs(self.containerd)
        return [
            None
            if found is None or found.digest in mirrored
            else Held(found.digest, found.size, found.media_type)
            for found in containerd_load.held_blobs(self.containerd, forms)
        ]

    def _blob_forms(
        self, diff_id: str, recorded: tuple[str, int, str] | None
    ) -> list[tuple[str, int | None, str]]:
        """The blobs the content store may hold the layer as, the manifest's first."""
        forms: dict[str, tuple[str, int | None, str]] = {}
        if recorded is not None:
            forms[recorded[0]] = recorded
        for digest, media_type, size in self.store.digests_of(diff_id):
            if media_type:  # a form whose type is unknown cannot be named in a manifest
                forms.setdefault(digest, (digest, size, media_type))
        forms.setdefault(diff_id, (diff_id, None, MEDIA_TYPES["none"]))
        return list(forms.values())

    def load(
        self, config: bytes, plan: list[LoadLayer], tags: list[str]
    ) -> tuple[LoadArchive, int]:
        layers = [oci.Descriptor(item.media_type, item.digest, item.size) for item in plan]
        manifest = oci.image_manifest(config, layers)
        loaded = LoadArchive(
            image_id=oci.digest_of(manifest),
            manifest=manifest,
            chunks=iter(()),
            content_size=len(config) + len(manifest) + sum(item.size for item in plan),
        )
        self.daemon.images_changed()
        with self.containerd.lease() as lease:
            target, written = containerd_load.write_image(
                self.containerd, config, manifest, plan, lease, self.daemon.progress,
                cached=self.store.layer,
            )  # fmt: skip
            for tag in tags:
                containerd_load.name_image(self.containerd, normalize(tag), target)
        self._seen = containerd_load.announce(self.daemon, loaded.image_id, tags)
        return loaded, written

    def verify(self, tag: str, loaded: LoadArchive, diff_ids: list[str]) -> bool:
        # Every blob was found or written under the lease: the daemon's view is what is left.
        if tag not in self._seen:
            return LoadPlanner.verify(self, tag, loaded, diff_ids)
        info = self._seen.pop(tag)
        return info is not None and _shows(info, loaded, diff_ids)

    @contextmanager
    def replaced_images_kept(self, tags: list[str]) -> Iterator[None]:
        yield  # nothing is unpacked, and a replaced image keeps a (dangling) name


def planner_for(store: Store, daemon: Daemon, policy: SendPolicy = REUSE) -> LoadPlanner:
    """The planner for the kind of image store this daemon has. Pack's method is `docker
    load`, whatever the store."""
    if not daemon.info.containerd_store:
        return GraphdriverPlanner(store, daemon)
    if policy.reuse_held:
        containerd = containerd_load.daemon_containerd(daemon)
        if containerd is not None:
            return ContainerdApiPlanner(store, daemon, containerd)
    return ContainerdPlanner(store, daemon)


def prepare(daemon: Daemon, policy: SendPolicy = REUSE) -> None:
    """Start, in the background, what `planner_for` will need and is slow to get: the
    connection to the daemon's containerd, where a load would write there; a graphdriver's
    image list (the chains of the images the cache recorded)."""
    if not policy.reuse_held:
        return
    if daemon.info.containerd_store:
        containerd_load.connect_soon(daemon)
    else:
        daemon.list_images_soon()


def image_ids_for(store: Store, daemon: Daemon, config: bytes) -> dict[str, bytes | None]:
    """The IDs the image `config` describes may have in this daemon -> the manifest each ID is
    the digest of (None: none, a graphdriver's). A graphdriver names an image by its config's
    digest; a containerd store by its manifest's: those the cache recorded for that config."""
    if not daemon.info.containerd_store:
        return {oci.digest_of(config): None}
    return {
        oci.digest_of(manifest): manifest
        for manifest in store.image_manifests(oci.digest_of(config))
    }


def keeps_manifests(daemon: Daemon) -> bool:
    """Does this daemon keep an image as a manifest and its blobs (a containerd image store),
    not as a config over a chain of layers (a graphdriver)?"""
    return daemon.info.containerd_store


@contextmanager
def content_mirror(daemon: Daemon) -> Iterator[containerd_load.ContentMirror | None]:
    """Where a later load would write into the daemon's containerd: a mirror that writes the
    layer blobs a pull downloads there at once (see containerd_load.ContentMirror), held until
    this context ends; else None (a graphdriver, or `docker load` on a containerd store)."""
    containerd = containerd_load.daemon_containerd(daemon) if daemon.info.containerd_store else None
    if containerd is None:
        yield None
        return
    with containerd.lease() as lease:
        mirror = containerd_load.ContentMirror(containerd, lease)
        try:
            yield mirror
        finally:
            mirror.close()
