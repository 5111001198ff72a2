"""A builder the daemon holds already: when the image a create-builder would load is there
(the same config, so the same labels and layers), nothing is loaded; its name is set on it,
as `docker load` would have moved the name, and the report says it was present.

A graphdriver names an image by its config's digest; a containerd store by its manifest's,
so there the candidates are the manifests the cache recorded for that config (the ones
packcache loaded or pulled), each checked to be whole in the daemon.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future

from packcache.errors import NotFoundError, PackcacheError
from packcache.image import manifest as oci
from packcache.image.config import config_diff_ids
from packcache.image.inspected import InspectedImage
from packcache.operations.load_planners import image_ids_for, prepare
from packcache.operations.loading import LoadReport
from packcache.refs import familiar, normalize
from packcache.store.store import ImageRecord, Store
from packcache.transports.daemon import Daemon

PRESENT = "present"  # a report's load_method: the daemon held the image, only named


def tag_if_present(
    store: Store, daemon: Daemon, config: bytes, tags: list[str]
) -> LoadReport | None:
    """Name the image `config` describes `tags` where the daemon holds it whole; its report
    (nothing sent), or None where it must be loaded."""
    start = time.perf_counter()
    tags = [familiar(normalize(tag)) for tag in tags]  # as a load names them
    diff_ids = config_diff_ids(config)
    candidates = image_ids_for(store, daemon, config)
    # The names and the candidates asked at once, a manifest's candidate with its content's
    # availability (one round trip, where the API gives it with the inspect).
    held = [image_id for image_id, manifest in candidates.items() if manifest is not None]
    daemon.prefetch([*tags, *candidates], with_manifests=held)
    for image_id, manifest in candidates.items():
        if not _whole(daemon, image_id, manifest, config, diff_ids):
            continue
        moved = [tag for tag in tags if getattr(_inspected(daemon, tag), "id", None) != image_id]
        try:
            for tag in moved:
                daemon.tag(image_id, tag)
        except NotFoundError:
            return None  # removed meanwhile: loaded as any other
        store.record_image(
            ImageRecord(
                config=config, engine=daemon.info.id, image_id=image_id,
                manifest_digest=image_id if manifest else None, manifest=manifest, refs=tags,
            )
        )  # fmt: skip
        return LoadReport(
            image_id=image_id,
            tags=tags,
            layers_sent=0,
            layers_reused=len(diff_ids),
            bytes_sent=0,
            full_reload=False,
            seconds=time.perf_counter() - start,
            load_method=PRESENT,
            manifest_size=len(manifest) if manifest else 0,
        )
    return None


def connect_unless_recreated(daemon: Daemon, name: str) -> Callable[[InspectedImage], None]:
    """Start connecting to the daemon's containerd (load_planners.prepare) as soon as a load
    of the builder `name` looks needed: at once where the daemon has no image of that name
    (asked in a thread of its own while the caller reads the base builder), else once the
    base builder is known (given to the function returned), unless the image named is made on
    it: a re-create, which will most likely find it held whole and load nothing. The image
    named is asked with its manifests, as `tag_if_present` asks, and remembered where the
    daemon was not changed meanwhile: asked once, not again there."""
    asked: Future[tuple[str, dict | None]] = Future()
    changes = daemon.changes

    def ask() -> None:
        try:
            tag = familiar(normalize(name))  # as `tag_if_present` names it
            named = daemon.inspect_detached(tag, manifests=True)  # a load may come first
        except BaseException as exc:  # raised where the answer is waited for
            asked.set_exception(exc)
            return
        asked.set_result((tag, named))
        if named is None:
            prepare(daemon)

    threading.Thread(target=ask, name="builder-named", daemon=True).start()

    def base_known(base: InspectedImage) -> None:
        try:
            tag, inspected = asked.result()
        except PackcacheError:  # a name the daemon refuses: the load reports it
            named = None
        else:
            if daemon.changes == changes:
                named = daemon.remember(tag, inspected, manifests=True)
            else:
                named = None if inspected is None else InspectedImage.from_inspect(inspected)
        if named is None or named.diff_ids[: len(base.diff_ids)] != base.diff_ids:
            prepare(daemon)  # the load will need it (prepare starts it once only)

    return base_known


def _inspected(daemon: Daemon, ref: str) -> InspectedImage | None:
    try:
        return daemon.inspect_image(ref)
    except NotFoundError:
        return None


def _whole(
    daemon: Daemon, image_id: str, manifest: bytes | None, config: bytes, diff_ids: list[str]
) -> bool:
    """Does the daemon hold this image, every layer of it?"""
    info = _inspected(daemon, image_id)
    if info is None or info.id != image_id or list(info.diff_ids) != diff_ids:
        return False
    if manifest is None:  # a graphdriver holds an image only with its whole chain of layers
        return True
    size = len(config) + len(manifest) + sum(d.size for d in oci.manifest_layers(manifest))
    return daemon.content_available(image_id, image_id, size)
